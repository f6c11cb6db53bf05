"""A whole synthetic corpus through `diziner annotate`, killed with SIGKILL halfway and resumed, against an
uninterrupted run: the outputs must be byte-identical and the server must never see a finished document twice.

The corpus: --docs JSONL documents, --long-share of them long (--long-chars characters of sentences, cut into chunks
of --chunk-chars), the rest short. A loopback OpenAI-compatible server in its own process answers at once
(`tests.servers.openai_compat`). Three `diziner annotate` processes, each with a fresh call cache (so every request
is really sent): an uninterrupted reference; a run killed with SIGKILL once its ledger holds half the documents; its
`--resume`. It prints each process's wall time and peak RSS, the request counts, whether the outputs are identical,
and how many finished documents the server was asked again (must be 0).

    python benchmarks/bench_annotate_resume.py                        # 100,000 documents, 5% of 20,000+ characters
    python benchmarks/bench_annotate_resume.py --docs 10000            # smaller
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_annotate import MODEL, NAMES, annotate_argv  # noqa: E402

SENTENCE = "{a} met {b} in {c} on day {i} and spoke about the weather for a while ."


def write_corpus(path: Path, n: int, long_share: float, long_chars: int, seed: int = 0) -> int:
    """`n` JSONL documents, a `long_share` of them at least `long_chars` characters; returns how many are long."""
    rng = random.Random(seed)
    long_docs = 0
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            pick = lambda: rng.choice(NAMES)  # noqa: E731
            if rng.random() < long_share:
                parts, size = [], 0
                while size < long_chars:
                    s = SENTENCE.format(a=pick(), b=pick(), c=pick(), i=i)
                    parts.append(s)
                    size += len(s) + 1
                text = " ".join(parts)
                long_docs += 1
            else:
                text = f"{pick()} met {pick()} in {pick()} on day {i} ."
            fh.write(json.dumps({"id": f"doc-{i}", "text": text}) + "\n")
    return long_docs


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM), MiB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def ledger_ids(ledger: Path) -> set[str]:
    """The ids of the documents the ledger records as finished."""
    try:
        with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=1) as conn:
            return {r[0] for r in conn.execute("SELECT doc_id FROM documents")}
    except sqlite3.Error:
        return set()


def ledger_done(ledger: Path) -> int:
    return len(ledger_ids(ledger))


def run(argv: list[str], env: dict[str, str], kill_at: tuple[Path, int] | None = None) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MiB, exit code) of one annotate process; killed with SIGKILL at a ledger count."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, peak_rss_mib(proc.pid))
        if kill_at is not None and ledger_done(kill_at[0]) >= kill_at[1]:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.2)
    return time.perf_counter() - started, peak, proc.returncode


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=100_000)
    p.add_argument("--long-share", type=float, default=0.05)
    p.add_argument("--long-chars", type=int, default=20_000)
    p.add_argument("--chunk-chars", type=int, default=1_500)
    p.add_argument("--concurrency", type=int, default=32)
    args = p.parse_args()
    from tests.servers.openai_compat import OpenAICompatProcess
    from tests.test_annotate_stream import make_run

    with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp, \
            OpenAICompatProcess("tests.servers:capitalised_entities", models=(MODEL,)) as server:
        work = Path(tmp)
        docs = work / "corpus.jsonl"
        long_docs = write_corpus(docs, args.docs, args.long_share, args.long_chars)
        print(f"corpus: {args.docs:,} documents, {long_docs:,} of them {args.long_chars:,}+ characters "
              f"({docs.stat().st_size / 2**20:.1f} MiB); load average {os.getloadavg()[0]:.2f}", flush=True)
        run_dir = make_run(work / "run", {"name": f"openai:{MODEL}", "concurrency": args.concurrency})
        env = {**os.environ, "OPENAI_API_KEY": "loopback", "OPENAI_BASE_URL": server.base_url}

        def argv(out: Path, cache: Path, *extra: str) -> list[str]:
            return [*annotate_argv(run_dir, docs, out, cache, args.concurrency), "--chunk-chars",
                    str(args.chunk_chars), *extra]

        ref = work / "reference.jsonl"
        wall, rss, code = run(argv(ref, work / "cache-ref"), env)
        print(f"uninterrupted: {wall:.1f} s, peak RSS {rss:.1f} MiB, exit {code}", flush=True)
        server.clear_log()  # (fetching a log of long bodies costs more than the run: only the resume's is read)
        out = work / "killed.jsonl"
        ledger = Path(str(out) + ".ledger.sqlite")
        wall1, rss1, code1 = run(argv(out, work / "cache-run"), env, kill_at=(ledger, args.docs // 2))
        done_at_kill = ledger_done(ledger)
        print(f"killed: after {wall1:.1f} s with {done_at_kill:,} documents in the ledger (exit {code1}), peak RSS "
              f"{rss1:.1f} MiB", flush=True)
        finished = ledger_ids(ledger)
        shutil.rmtree(work / "cache-run", ignore_errors=True)  # the resume must not lean on the cache
        server.clear_log()
        wall2, rss2, code2 = run(argv(out, work / "cache-run", "--resume"), env)
        second = server.chat_requests()
        print(f"resumed: {wall2:.1f} s, peak RSS {rss2:.1f} MiB, exit {code2}, {len(second):,} requests", flush=True)
        identical = out.read_bytes() == ref.read_bytes()

        def document_id(request) -> str:
            text = request.body["messages"][0]["content"].split("<document>", 1)[-1]
            match = re.search(r"on day (\d+)", text)
            return f"doc-{match.group(1)}" if match else "?"

        again = Counter(document_id(r) for r in second if document_id(r) in finished)
        print(f"output byte-identical to the uninterrupted run: {identical}; requests of the resume for a document "
              f"finished before the kill: {sum(again.values()):,}; documents in the ledger at the end: "
              f"{ledger_done(ledger):,} of {args.docs:,}", flush=True)


if __name__ == "__main__":
    main()
