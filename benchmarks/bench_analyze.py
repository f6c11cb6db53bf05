"""Speed of `diziner analyze --json` against its floor: a process that only reads and json.loads the input.

The target: on 20,000 documents x 8 annotators the whole `diziner analyze --json` process must take at most
8x the floor, and 20,000 documents at most 5x as long as 5,000. Prints figures; asserts nothing.

    .venv/bin/python benchmarks/bench_analyze.py [--docs 20000] [--small 5000] [--annotators 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

WORDS = ["the", "of", "and", "a", "in", "to", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from", "his", "her", "it", "an", "were", "are", "which", "this", "be", "or", "has", "had", "model", "data", "network", "learning", "system", "method", "paper", "results", "first", "new", "two", "used", "based", "time", "work", "state", "city", "university", "research", "algorithm", "language", "support", "vector", "machine", "neural", "deep", "speech", "image", "vision", "robot"]
NAMES = ["Paris", "London", "Berlin", "Google", "Microsoft", "Stanford", "Hinton", "LeCun", "Bengio", "Turing", "Python", "Java", "ImageNet", "NeurIPS"]
TYPES = ["algorithm", "conference", "country", "field", "location", "organisation", "person", "product", "task"]


def make_document(rng: random.Random, i: int, annotators: list[str]) -> dict:
    """About 25 engine tokens, 3 gold-ish entities, and each annotator's noisy reading of them."""
    words: list[str] = []
    entities: list[tuple[int, int, str]] = []
    pos = 0
    for _ in range(rng.randint(16, 22)):
        if rng.random() < 0.15:
            w = " ".join(rng.choice(NAMES) for _ in range(rng.randint(1, 2)))
            entities.append((pos, pos + len(w), rng.choice(TYPES)))
        else:
            w = rng.choice(WORDS)
        if rng.random() < 0.2:
            w += rng.choice(",.;")
        words.append(w)
        pos += len(w) + 1
    text = " ".join(words)
    annotations: dict[str, list | None] = {}
    for a in annotators:
        if rng.random() < 0.01:
            annotations[a] = None
            continue
        spans = []
        for s, e, t in entities:
            r = rng.random()
            if r < 0.1:
                continue  # missed
            if r < 0.2:
                t = rng.choice(TYPES)  # type confusion
            elif r < 0.25 and e - s > 3:
                e -= 1  # boundary
            spans.append({"start": s, "end": e, "type": t})
        if rng.random() < 0.1:
            s = rng.randrange(0, max(1, len(text) - 6))
            spans.append({"start": s, "end": s + 5, "type": rng.choice(TYPES)})  # a spurious one
        annotations[a] = spans
    return {"id": f"doc-{i}", "text": text, "annotations": annotations}


def generate(path: str, n_docs: int, n_annotators: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    annotators = [f"annotator-{k}" for k in range(n_annotators)]
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n_docs):
            fh.write(json.dumps(make_document(rng, i, annotators)) + "\n")


FLOOR = "import json,sys\nwith open(sys.argv[1], encoding='utf-8') as f:\n    for line in f:\n        json.loads(line)\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument("--small", type=int, default=5000)
    ap.add_argument("--annotators", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    py = sys.executable
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as tmp:
        big, small = os.path.join(tmp, "big.jsonl"), os.path.join(tmp, "small.jsonl")
        generate(big, args.docs, args.annotators)
        generate(small, args.small, args.annotators)
        floor_script = os.path.join(tmp, "floor.py")
        with open(floor_script, "w") as fh:
            fh.write(FLOOR)
        size_mb = os.path.getsize(big) / 1e6
        from corpus.tokens import tokenize  # noqa: E402  (only to count tokens for the printout)

        n_tokens = 0
        with open(big, encoding="utf-8") as fh:
            for line in fh:
                n_tokens += tokenize(json.loads(line)["text"])[0].size
        analyze = [py, "-m", "cli.main", "analyze", "--json"]
        t_floor = timed_in([py, floor_script, big], args.repeats, root)
        t_big = timed_in(analyze + [big], args.repeats, root)
        t_small = timed_in(analyze + [small], args.repeats, root)
    print(f"input: {args.docs} documents x {args.annotators} annotators, {n_tokens} tokens, {size_mb:.1f} MB")
    print(f"floor (python: read + json.loads every line): {t_floor:.3f} s")
    print(f"diziner analyze --json, {args.docs} docs: {t_big:.3f} s  -> ratio to floor {t_big / t_floor:.2f} (limit 8)")
    print(f"diziner analyze --json, {args.small} docs: {t_small:.3f} s")
    print(f"scaling {args.docs}/{args.small} docs: {t_big / t_small:.2f} (limit 5)")


def timed_in(cmd: list[str], repeats: int, cwd: str) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=cwd)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


if __name__ == "__main__":
    main()
