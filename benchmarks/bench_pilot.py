"""Speed of the pilot-set sampler (docs/method.md#pilot-sets): TF-IDF features and 5 rounds of selection.

Two pools: a synthetic one of 100,000 short texts (Zipfian words, 8-20 tokens each) and the real crossner_politics
train + dev sentences. Prints figures; asserts nothing.

    .venv/bin/python benchmarks/bench_pilot.py [--docs 100000] [--pilot-size 25] [--rounds 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from corpus.pilot import PilotSampler  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "ner"


def synthetic_pool(n: int, vocab: int = 30_000, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1)
    p /= p.sum()
    lengths = rng.integers(8, 21, size=n)
    ids = rng.choice(vocab, size=int(lengths.sum()), p=p)
    words = np.array([f"w{i}" for i in range(vocab)], dtype=object)
    out, a = [], 0
    for length in lengths.tolist():
        out.append(" ".join(words[ids[a : a + length]]))
        a += length
    return out


def conll_sentences(path: Path) -> list[str]:
    """`token<TAB>tag` lines, blank line between sentences; tokens joined by spaces."""
    sentences, current = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            current.append(line.split("\t")[0])
        elif current:
            sentences.append(" ".join(current))
            current = []
    if current:
        sentences.append(" ".join(current))
    return sentences


def bench(name: str, texts: list[str], pilot_size: int, rounds: int, seed: int) -> None:
    tokens = sum(len(t.split()) for t in texts)
    t0 = time.perf_counter()
    sampler = PilotSampler(texts, pilot_size=pilot_size, seed=seed)
    t_features = time.perf_counter() - t0
    shape = None if sampler.features is None else sampler.features.shape
    print(f"{name}: {len(texts):,} texts, {tokens:,} whitespace tokens, features {shape}")
    print(f"  TF-IDF (PilotSampler construction)  {t_features:8.3f} s")
    history: list[list[int]] = []
    times = []
    for r in range(rounds):
        t0 = time.perf_counter()
        history.append(sampler.select(r, history))
        times.append(time.perf_counter() - t0)
        print(f"  round {r}: select                   {times[-1]:8.3f} s   first ids {history[-1][:5]}")
    distinct = len({i for s in history for i in s})
    print(f"  total                               {t_features + sum(times):8.3f} s   "
          f"({distinct} distinct documents over {rounds} rounds)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--pilot-size", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.perf_counter()
    pool = synthetic_pool(args.docs, seed=args.seed)
    print(f"(synthetic pool generated in {time.perf_counter() - t0:.2f} s; not part of the figures)")
    bench("synthetic", pool, args.pilot_size, args.rounds, args.seed)

    root = DATA / "crossner_politics"
    if (root / "train.txt").exists():
        real = conll_sentences(root / "train.txt") + conll_sentences(root / "dev.txt")
        bench("crossner_politics train+dev", real, args.pilot_size, args.rounds, args.seed)
    else:
        print(f"crossner_politics not found under {root}; skipped")


if __name__ == "__main__":
    main()
