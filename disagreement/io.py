"""Reading `diziner analyze` input and writing its JSON (issue 2, item 7).

Input: JSONL, one document a line: {"id", "text", "annotations": {"<annotator>": [{"start","end","type"}, ...]
or null}}. The reader builds the engine's flat arrays directly (no per-span objects kept) and validates in
bulk; only when something is wrong does it walk the offending line to name the exact problem.
"""

from __future__ import annotations

import json
from operator import itemgetter
from typing import Any, TextIO

import numpy as np

from disagreement.engine import AnnotationBatch, DisagreementResult, check_span
from state.errors import InputError

_SPAN_FIELDS = itemgetter("start", "end", "type")


def read_annotations(path: str) -> AnnotationBatch:
    """Parse and validate an annotations file into an `AnnotationBatch` (annotators sorted by name)."""
    try:
        fh = open(path, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read annotations file: {exc.strerror or exc}", path=path) from None
    with fh:
        try:
            return _read(fh, path)
        except UnicodeDecodeError as exc:
            raise InputError(f"file is not valid UTF-8 ({exc.reason} at byte {exc.start})", path=path) from None


def _read(fh: TextIO, path: str) -> AnnotationBatch:
    loads = json.loads
    doc_ids: list[str] = []
    texts: list[str] = []
    lines: list[int] = []
    seen: dict[str, int] = {}
    ann_index: dict[str, int] = {}
    ok_doc: list[int] = []
    ok_ann: list[int] = []
    grp_len: list[int] = []
    trips: list[tuple[Any, Any, Any]] = []
    for lineno, line in enumerate(fh, 1):
        if not line.strip():
            continue
        try:
            obj = loads(line)
        except ValueError as exc:
            raise InputError(f"not valid JSON: {exc}", path=path, line=lineno) from None
        if type(obj) is not dict:
            raise InputError("each line must be a JSON object", path=path, line=lineno)
        try:
            doc_id, text, annotations = obj["id"], obj["text"], obj["annotations"]
        except KeyError as exc:
            raise InputError(f"missing key {exc.args[0]!r}", path=path, line=lineno) from None
        if type(doc_id) is not str or not doc_id:
            raise InputError(f"'id' must be a non-empty string, got {doc_id!r}", path=path, line=lineno)
        if type(text) is not str:
            raise InputError(f"document {doc_id!r}: 'text' must be a string", path=path, line=lineno)
        if type(annotations) is not dict:
            raise InputError(f"document {doc_id!r}: 'annotations' must be an object", path=path, line=lineno)
        if doc_id in seen:
            raise InputError(f"duplicate document id {doc_id!r} (first on line {seen[doc_id]})", path=path, line=lineno)
        d = len(doc_ids)
        seen[doc_id] = lineno
        doc_ids.append(doc_id)
        texts.append(text)
        lines.append(lineno)
        for name, spans in annotations.items():
            k = ann_index.get(name)
            if k is None:
                k = ann_index[name] = len(ann_index)
            if spans is None:
                continue
            if type(spans) is not list:
                raise InputError(
                    f"document {doc_id!r}, annotator {name!r}: expected a list of spans or null", path=path, line=lineno
                )
            try:
                got = list(map(_SPAN_FIELDS, spans))
            except (KeyError, TypeError):
                _explain_span_error(path, lineno, doc_id, name, spans, text)
                raise AssertionError("unreachable")  # pragma: no cover
            ok_doc.append(d)
            ok_ann.append(k)
            grp_len.append(len(got))
            trips.extend(got)
    if not doc_ids:
        raise InputError("no documents", path=path)

    # annotators in name order
    names = sorted(ann_index)
    to_sorted = np.empty(len(names), dtype=np.int64)
    for new, name in enumerate(names):
        to_sorted[ann_index[name]] = new
    ok_doc_a = np.array(ok_doc, dtype=np.int64)
    ok_ann_a = to_sorted[np.array(ok_ann, dtype=np.int64)] if ok_ann else np.zeros(0, dtype=np.int64)
    succeeded = np.zeros((len(doc_ids), len(names)), dtype=bool)
    succeeded[ok_doc_a, ok_ann_a] = True
    lengths = np.array(grp_len, dtype=np.int64)
    span_doc = np.repeat(ok_doc_a, lengths)
    span_ann = np.repeat(ok_ann_a, lengths)

    starts, ends, types = (list(x) for x in zip(*trips)) if trips else ([], [], [])
    bad = None
    if not (set(map(type, starts)) <= {int} and set(map(type, ends)) <= {int}):
        bad = next(i for i, (s, e) in enumerate(zip(starts, ends)) if type(s) is not int or type(e) is not int)
    elif not set(map(type, types)) <= {str} or "" in set(types):
        bad = next(i for i, t in enumerate(types) if type(t) is not str or not t)
    start_a = np.array(starts, dtype=np.int64) if bad is None else None
    end_a = np.array(ends, dtype=np.int64) if bad is None else None
    if bad is None and start_a.size:
        text_len = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))[span_doc]
        wrong = (start_a < 0) | (end_a <= start_a) | (end_a > text_len)
        if wrong.any():
            bad = int(np.argmax(wrong))
    if bad is not None:
        d, k = int(span_doc[bad]), int(span_ann[bad])
        check_span(doc_ids[d], names[k], starts[bad], ends[bad], types[bad], len(texts[d]))
        raise InputError("invalid span", path=path, line=lines[d])  # pragma: no cover
    type_names = sorted(set(types))
    tid = {t: i for i, t in enumerate(type_names)}
    return AnnotationBatch(
        doc_ids=doc_ids,
        texts=texts,
        annotators=names,
        types=type_names,
        succeeded=succeeded,
        span_doc=span_doc,
        span_annotator=span_ann,
        span_start=start_a if start_a is not None else np.zeros(0, dtype=np.int64),
        span_end=end_a if end_a is not None else np.zeros(0, dtype=np.int64),
        span_type=np.fromiter(map(tid.__getitem__, types), dtype=np.int64, count=len(types)),
    )


def _explain_span_error(path: str, lineno: int, doc_id: str, name: str, spans: list, text: str) -> None:
    for i, span in enumerate(spans):
        where = f"document {doc_id!r}, annotator {name!r}, span {i}"
        if type(span) is not dict:
            raise InputError(f"{where}: expected an object with start, end, type", path=path, line=lineno)
        for key in ("start", "end", "type"):
            if key not in span:
                raise InputError(f"{where}: missing key {key!r}", path=path, line=lineno)
    raise InputError(f"document {doc_id!r}, annotator {name!r}: malformed spans", path=path, line=lineno)


def agreement_figures(result: DisagreementResult) -> dict[str, Any]:
    """The agreement figures of a round (weights, pairwise and mean agreement, elite, threshold), JSON-able and
    unrounded: the `diziner analyze --json` keys and the fields of `state.models.AgreementStats`."""
    models = result.models
    f1 = result.pairwise_f1.tolist()
    return {
        "models": list(models),
        "excluded": list(result.excluded),
        "weights": result.weight_of(),
        "pairwise_f1": {a: {b: f1[i][j] for j, b in enumerate(models) if j != i} for i, a in enumerate(models)},
        "mean_pairwise_f1": result.mean_pairwise_f1,
        "mean_agreement": {m: float(v) for m, v in zip(models, result.mean_agreement)},
        "elite": list(result.elite),
        "threshold": result.threshold,
        "dropped_spans": {m: int(n) for m, n in zip(models, result.dropped_spans)},
    }


def hotspot_kinds(result: DisagreementResult) -> dict[str, int]:
    """Hotspots per kind, keys sorted."""
    kinds: dict[str, int] = {}
    for h in result.hotspots:
        kinds[h.kind] = kinds.get(h.kind, 0) + 1
    return {k: kinds[k] for k in sorted(kinds)}


def result_to_json(result: DisagreementResult, token_scores: bool = False) -> dict[str, Any]:
    """The `diziner analyze --json` object (issue 2, item 7); floats unrounded."""
    batch = result.batch
    table = result.table
    by_doc: list[list[dict[str, int]]] = [[] for _ in batch.doc_ids]
    for h in result.hotspots:
        by_doc[h.doc].append({"start": h.start, "end": h.end, "token_start": h.token_start, "token_end": h.token_end})
    documents = []
    scored = result.scored.tolist()
    offsets = table.token_offset.tolist()
    for d, doc_id in enumerate(batch.doc_ids):
        entry: dict[str, Any] = {
            "id": doc_id,
            "consensus": [{"start": s, "end": e, "type": t} for s, e, t in result.consensus_spans[d]],
            "hotspots": by_doc[d],
        }
        if token_scores:
            if scored[d]:
                a, b = offsets[d], offsets[d + 1]
                entry["token_scores"] = {
                    "conflict": result.conflict[a:b].tolist(),
                    "type": result.type_confusion[a:b].tolist(),
                    "boundary": result.boundary[a:b].tolist(),
                    "combined": result.combined[a:b].tolist(),
                }
            else:
                entry["token_scores"] = None
        documents.append(entry)
    return {
        **agreement_figures(result),
        "hotspot_kinds": hotspot_kinds(result),
        "scored_documents": int(result.scored.sum()),
        "params": {
            "percentile": result.params.percentile,
            "coalition_cutoff": result.params.coalition_cutoff,
            "weight_floor": result.params.weight_floor,
        },
        "documents": documents,
    }


def write_json(obj: dict[str, Any], out: TextIO) -> None:
    out.write(json.dumps(obj, ensure_ascii=False))
    out.write("\n")
