"""`diziner annotate` on a whole corpus against the bare openai client, and its memory at two corpus sizes.

Speed. A loopback OpenAI-compatible server runs in its own process (`tests.servers.openai_compat`, answering at once
with the capitalised words of each document). Two commands send it the same requests at the same concurrency:

  a) annotate: the whole `diziner annotate` command, start to exit, as a user runs it (call cache and ledger on,
     a fresh cache directory each time so that every request is really sent);
  b) openai:   a process that sends the very request bodies (a)'s first run sent, taken from the server's request
     log, with `openai.AsyncOpenAI().chat.completions.create(**body)` under an asyncio semaphore.

in the order a, b, b, a per repeat (drift on a shared machine cancels out); the best run of each counts. It prints
every time, the best of each and their ratio (a / b), and the CPU seconds of each process.

Memory. `diziner annotate` on synthetic corpora of each --memory size (as many documents as that), its peak RSS
taken from the kernel's accounting of the child process (os.wait4).

    python benchmarks/bench_annotate.py                      # 6,000 documents, concurrency 32, 2 repeats; memory
    python benchmarks/bench_annotate.py --docs 2000 --memory ""  # speed only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NAMES = ("Obama", "Merkel", "Berlin", "Paris", "Kohl", "Moscow", "Labour", "Senate", "Sarkozy", "London")
MODEL = "loopback-model"


def write_corpus(path: Path, n: int, seed: int = 0) -> None:
    """`n` short, distinct JSONL documents (three capitalised words each)."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            a, b, c = (rng.choice(NAMES) for _ in range(3))
            fh.write(json.dumps({"id": f"doc-{i}", "text": f"{a} met {b} in {c} on day {i} ."}) + "\n")


def run_child(argv: list[str], env: dict[str, str]) -> tuple[float, float, float, int, str]:
    """(wall seconds, CPU seconds, peak RSS in MiB, exit code, stderr) of one child process."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read() if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.stderr:
        proc.stderr.close()
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, proc.returncode, err


def annotate_argv(run_dir: Path, docs: Path, out: Path, cache: Path, concurrency: int) -> list[str]:
    return [str(Path(sys.executable).with_name("diziner")), "annotate", "--run", str(run_dir), "--docs", str(docs),
            "--out", str(out), "--cache-dir", str(cache), "--concurrency", str(concurrency)]


def send_bodies(bodies_file: str, base_url: str, concurrency: int) -> None:
    """The baseline process: every body of the file sent with the openai async client, `concurrency` at once."""
    import openai

    bodies = json.loads(Path(bodies_file).read_text(encoding="utf-8"))

    async def main() -> None:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="loopback")
        gate = asyncio.Semaphore(concurrency)

        async def one(body: dict) -> None:
            async with gate:
                await client.chat.completions.create(**body)

        await asyncio.gather(*(one(b) for b in bodies))
        await client.close()

    asyncio.run(main())


def speed(work: Path, server, n_docs: int, concurrency: int, repeats: int) -> None:
    from tests.test_annotate_stream import make_run

    run_dir = make_run(work / "run", {"name": f"openai:{MODEL}", "concurrency": concurrency})
    docs = work / "docs.jsonl"
    write_corpus(docs, n_docs)
    env = {**os.environ, "OPENAI_API_KEY": "loopback", "OPENAI_BASE_URL": server.base_url}
    bodies_file = work / "bodies.json"
    times: dict[str, list[tuple[float, float]]] = {"annotate": [], "openai": []}
    for repeat in range(repeats):
        for kind in ("annotate", "openai", "openai", "annotate"):
            server.clear_log()
            if kind == "annotate":
                cache = work / f"cache-{repeat}-{len(times[kind])}"
                out = work / "pred.jsonl"
                argv = annotate_argv(run_dir, docs, out, cache, concurrency)
            else:
                argv = [sys.executable, __file__, "--send", str(bodies_file), "--base-url", server.base_url,
                        "--concurrency", str(concurrency)]
            wall, cpu, _, code, err = run_child(argv, env)
            if code != 0:
                raise SystemExit(f"{kind} failed ({code}):\n{err}")
            chat = server.chat_requests()
            if kind == "annotate":
                shutil.rmtree(work / f"cache-{repeat}-{len(times[kind])}", ignore_errors=True)
                if not bodies_file.exists():
                    bodies_file.write_text(json.dumps([e.body for e in chat]), encoding="utf-8")
            times[kind].append((wall, cpu))
            print(f"{kind:9s} {wall:7.2f} s wall, {cpu:6.2f} s CPU, {len(chat)} requests", flush=True)
    best_a = min(w for w, _ in times["annotate"])
    best_b = min(w for w, _ in times["openai"])
    print(f"\n{n_docs} documents at concurrency {concurrency}: diziner annotate best {best_a:.2f} s, openai client "
          f"best {best_b:.2f} s, ratio {best_a / best_b:.2f}")


def memory(work: Path, sizes: list[int], concurrency: int) -> None:
    from tests.servers.openai_compat import OpenAICompatProcess
    from tests.test_annotate_stream import make_run

    run_dir = make_run(work / "run-mem", {"name": f"openai:{MODEL}", "concurrency": concurrency})
    # a server of its own that keeps no request log: a million request bodies would fill the machine's memory
    with OpenAICompatProcess("tests.servers:capitalised_entities", models=(MODEL,), keep_log=False) as server:
        env = {**os.environ, "OPENAI_API_KEY": "loopback", "OPENAI_BASE_URL": server.base_url}
        for n in sizes:
            docs = work / f"mem-{n}.jsonl"
            write_corpus(docs, n, seed=n)
            cache = work / f"cache-mem-{n}"
            wall, cpu, rss, code, err = run_child(annotate_argv(run_dir, docs, work / f"mem-{n}.out.jsonl", cache,
                                                                concurrency), env)
            if code != 0:
                raise SystemExit(f"annotate of {n} documents failed ({code}):\n{err}")
            shutil.rmtree(cache, ignore_errors=True)
            docs.unlink()
            print(f"memory: {n:>9,} documents: peak RSS {rss:7.1f} MiB ({wall:.1f} s wall, {cpu:.1f} s CPU)",
                  flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=6000, help="documents of the speed comparison (0: none)")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2, help="a, b, b, a rounds")
    p.add_argument("--memory", default="10000,100000", help="corpus sizes of the memory runs (empty: none)")
    p.add_argument("--send", help=argparse.SUPPRESS)  # the baseline child process
    p.add_argument("--base-url", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.send:
        send_bodies(args.send, args.base_url, args.concurrency)
        return
    from tests.servers.openai_compat import OpenAICompatProcess

    with tempfile.TemporaryDirectory(prefix="bench-annotate-") as tmp, \
            OpenAICompatProcess("tests.servers:capitalised_entities", models=(MODEL,)) as server:
        work = Path(tmp)
        print(f"loopback server {server.base_url} (pid {server.pid}); load average {os.getloadavg()[0]:.2f}")
        if args.docs:
            speed(work, server, args.docs, args.concurrency, args.repeats)
        server.stop()
        sizes = [int(s) for s in args.memory.split(",") if s.strip()]
        if sizes:
            memory(work, sizes, args.concurrency)


if __name__ == "__main__":
    main()
