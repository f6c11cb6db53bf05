"""Reading `diziner analyze` input and writing its JSON (docs/method.md, "Documents" and "Disagreement report").

Input: JSONL, one document a line: {"id", "text", "annotations": {"<annotator>": [{"start","end","type"}, ...]
or null}}, read line by line through `corpus.io.iter_jsonl`. The reader builds the engine's flat arrays directly
(no per-span objects kept) and validates in bulk; only when something is wrong does it walk the offending spans to
name the exact problem. Every error names the file and the line ("FILE:N: ...").
"""

from __future__ import annotations

import json
from operator import itemgetter
from typing import Any, TextIO

import numpy as np

from corpus.io import iter_jsonl
from disagreement.engine import AnnotationBatch, DisagreementResult, check_span
from disagreement.report import agreement_figures, hotspot_kinds
from state.errors import InputError

_SPAN_FIELDS = itemgetter("start", "end", "type")


def read_annotations(path: str) -> AnnotationBatch:
    """Parse and validate an annotations file into an `AnnotationBatch` (annotators sorted by name)."""
    doc_ids: list[str] = []
    texts: list[str] = []
    lines: list[int] = []
    seen: dict[str, int] = {}
    ann_index: dict[str, int] = {}
    ok_doc: list[int] = []
    ok_ann: list[int] = []
    grp_len: list[int] = []
    trips: list[tuple[Any, Any, Any]] = []
    for lineno, obj in iter_jsonl(path):
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
                raise AssertionError("unreachable") from None  # pragma: no cover
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

    starts, ends, types = (list(x) for x in zip(*trips, strict=True)) if trips else ([], [], [])
    bad = None
    # the bulk form of corpus.io.is_int for JSON values (ints, never bools), then of check_span's type check
    if not (set(map(type, starts)) <= {int} and set(map(type, ends)) <= {int}):
        bad = next(i for i, (s, e) in enumerate(zip(starts, ends, strict=True)) if type(s) is not int or type(e) is not int)
    elif not set(map(type, types)) <= {str} or "" in set(types):
        bad = next(i for i, t in enumerate(types) if type(t) is not str or not t)
    elif starts and (min(starts) < 0 or max(max(starts), max(ends)) > max(map(len, texts))):
        # an offset outside every text (2**70 among them) cannot become an int64: find the first bad span in Python
        bad = next(
            i for i, (s, e, d) in enumerate(zip(starts, ends, span_doc.tolist(), strict=True)) if not 0 <= s < e <= len(texts[d])
        )
    start_a = np.array(starts, dtype=np.int64) if bad is None else None
    end_a = np.array(ends, dtype=np.int64) if bad is None else None
    if bad is None and start_a.size:
        text_len = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))[span_doc]
        wrong = (start_a < 0) | (end_a <= start_a) | (end_a > text_len)
        if wrong.any():
            bad = int(np.argmax(wrong))
    if bad is not None:
        d, k = int(span_doc[bad]), int(span_ann[bad])
        try:
            check_span(doc_ids[d], names[k], starts[bad], ends[bad], types[bad], len(texts[d]))
        except InputError as exc:
            raise InputError(exc.message, path=path, line=lines[d]) from None
        raise AssertionError(f"span {bad} was found invalid but passes check_span")  # pragma: no cover
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


def result_to_json(result: DisagreementResult, token_scores: bool = False) -> dict[str, Any]:
    """The `diziner analyze --json` object; floats unrounded."""
    batch = result.batch
    by_doc: dict[str, list[dict[str, int]]] = {doc_id: [] for doc_id in batch.doc_ids}
    for h in hotspot_records(result):
        by_doc[h["document_id"]].append({k: h[k] for k in ("start", "end", "token_start", "token_end")})
    consensus = consensus_records(result)
    documents = []
    scored = result.scored.tolist()
    offsets = result.table.token_offset.tolist()
    for d, doc_id in enumerate(batch.doc_ids):
        entry: dict[str, Any] = {"id": doc_id, "consensus": consensus[doc_id], "hotspots": by_doc[doc_id]}
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
    """One JSON object on one line (UTF-8 kept as is)."""
    out.write(json.dumps(obj, ensure_ascii=False))
    out.write("\n")


def hotspot_records(result: DisagreementResult) -> list[dict[str, Any]]:
    """Every hotspot as {document_id, start, end, token_start, token_end, kind, text}, in the engine's order."""
    ids, texts = result.batch.doc_ids, result.batch.texts
    return [
        {
            "document_id": ids[h.doc],
            "start": h.start,
            "end": h.end,
            "token_start": h.token_start,
            "token_end": h.token_end,
            "kind": h.kind,
            "text": texts[h.doc][h.start : h.end],
        }
        for h in result.hotspots
    ]


def consensus_records(result: DisagreementResult) -> dict[str, list[dict[str, Any]]]:
    """Document id -> the weighted consensus spans as {start, end, type}."""
    return {
        doc_id: [{"start": s, "end": e, "type": t} for s, e, t in spans]
        for doc_id, spans in zip(result.batch.doc_ids, result.consensus_spans, strict=True)
    }
