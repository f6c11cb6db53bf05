"""Overhead of our model path against the bare openai client, on the same embedded server.

The issue's bar: a round against the embedded server spends at most 10% more time than the
same calls made directly with the openai client at the same concurrency. This script sends the
same annotation-like requests (short NER prompts, the annotators' own output schema) two ways:

  a) ours:   agents.structured.invoke_structured (the annotators' call: the model bound to its output mode, the
             deadline, retries and the tolerant reader; no call cache, so every request is sent)
  b) direct: openai.AsyncOpenAI(base_url=<same server>).chat.completions.create(
                 response_format={"type": "json_schema", ...})   + pydantic validation

both with asyncio concurrency = spec.concurrency, against one already started server, in the
order a, b, b, a per repeat to cancel drift (the machine may be shared). It prints figures and
asserts nothing. Both paths send the same request body, so at temperature 0 their outputs must
match: the script reports how many did, as a check that the comparison is like for like.

    python benchmarks/bench_embedded_overhead.py --model embedded:smollm2 --calls 12 --repeats 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.annotator import schema_for  # noqa: E402
from agents.models import SMALL_PROFILE, ModelHandle, chat_model, embedded, parse_model_spec  # noqa: E402
from agents.structured import invoke_structured  # noqa: E402

SENTENCES = (
    "Angela Merkel met Emmanuel Macron in Paris on Tuesday.",
    "Apple opened a new research office in Berlin.",
    "The United Nations held a climate summit in Geneva.",
    "Lionel Messi signed a contract with Inter Miami.",
    "Toyota recalled cars sold in Canada and Mexico.",
    "Marie Curie studied at the University of Paris.",
    "Amazon hired engineers in Seattle and Dublin.",
    "The Red Cross sent aid to Haiti after the storm.",
    "Elon Musk spoke about Tesla at a conference in Austin.",
    "The European Central Bank raised rates in Frankfurt.",
    "Serena Williams won her first title in New York.",
    "Microsoft and OpenAI announced a deal in Redmond.",
)
INSTRUCTIONS = (
    "You label named entities. Types: PER (person), ORG (organisation), LOC (location). "
    "Return every entity mention in the text, copied exactly, with its type, as JSON."
)


TYPES = ("PER", "ORG", "LOC")


def messages_for(spec: Any, sentence: str) -> list[dict[str, str]]:
    """One user turn, as every prompt of the product is."""
    return [{"role": "user", "content": f"{INSTRUCTIONS}\n\nText: {sentence}"}]


def response_format(Entities: type[BaseModel]) -> dict[str, Any]:  # noqa: N803 (a class)
    """The response_format LangChain sends for a Pydantic class (the openai SDK's strict form)."""
    try:
        from openai.lib._parsing._completions import type_to_response_format_param

        return dict(type_to_response_format_param(Entities))
    except ImportError:  # the SDK moved it: rebuild the same strict schema
        from openai.lib._pydantic import to_strict_json_schema

        schema = to_strict_json_schema(Entities)
        return {"type": "json_schema", "json_schema": {"name": "Entities", "schema": schema, "strict": True}}


Call = Callable[[list[dict[str, str]]], Awaitable[str]]


async def run_round(call: Call, prompts: list[list[dict[str, str]]], concurrency: int) -> tuple[float, list[float], list[str]]:
    """All prompts with at most `concurrency` in flight: wall time, per-call times, outputs."""
    gate = asyncio.Semaphore(concurrency)
    latencies = [0.0] * len(prompts)
    outputs = [""] * len(prompts)

    async def one(i: int) -> None:
        async with gate:
            start = time.perf_counter()
            outputs[i] = await call(prompts[i])
            latencies[i] = time.perf_counter() - start

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(len(prompts))))
    return time.perf_counter() - start, latencies, outputs


async def main_async(args: argparse.Namespace) -> None:
    import httpx
    import openai

    spec = parse_model_spec(args.model, max_tokens=args.max_tokens)
    if spec.provider != "embedded":
        raise SystemExit("this benchmark measures the embedded server: pass --model embedded:<alias>")
    concurrency = args.concurrency or spec.concurrency

    started = time.perf_counter()
    llm = await asyncio.to_thread(chat_model, spec)  # starts the server (not timed below)
    base_url = embedded.running_servers()[spec.model]
    startup = time.perf_counter() - started

    Entities = schema_for(spec, TYPES)  # noqa: N806 (a class): what the annotator agents send
    handle = ModelHandle(chat_model, spec)
    direct = openai.AsyncOpenAI(
        base_url=base_url,
        api_key="unused",
        timeout=spec.timeout,
        max_retries=spec.max_retries,
        http_client=httpx.AsyncClient(trust_env=False, timeout=spec.timeout),
    )
    fmt = response_format(Entities)

    async def call_ours(msgs: list[dict[str, str]]) -> str:
        answer = await invoke_structured(handle, spec, Entities, msgs[0]["content"])
        return answer.parsed.model_dump_json() if answer.parsed is not None else f"failed: {answer.reason}"

    async def call_direct(msgs: list[dict[str, str]]) -> str:
        completion = await direct.chat.completions.create(
            model=spec.model,
            messages=msgs,
            temperature=spec.temperature,
            frequency_penalty=llm.frequency_penalty,  # the same sampling as our path (embedded default 0.5)
            max_completion_tokens=spec.max_tokens,
            response_format=fmt,
        )
        try:
            return Entities.model_validate_json(completion.choices[0].message.content or "").model_dump_json()
        except ValueError as exc:
            return f"failed: {exc}"

    sentences = [SENTENCES[i % len(SENTENCES)] for i in range(args.calls)]
    prompts = [messages_for(spec, s) for s in sentences]
    paths: dict[str, Call] = {"a": call_ours, "b": call_direct}

    # Warm-up, untimed: first-request costs (imports, connection, grammar code paths) on both sides.
    await call_ours(prompts[0])
    await call_direct(prompts[0])

    print(f"model {spec.name}  calls {args.calls}  repeats {args.repeats}  concurrency {concurrency}  "
          f"max_tokens {spec.max_tokens}  server {base_url}  (started in {startup:.1f} s)")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("a = agents.structured.invoke_structured (the annotators' call path, no cache)")
    print("b = openai.AsyncOpenAI(...).chat.completions.create(response_format=json_schema) + validation")
    walls: dict[str, list[float]] = {"a": [], "b": []}
    per_call: dict[str, list[float]] = {"a": [], "b": []}
    outputs: dict[str, list[str]] = {}
    for repeat in range(1, args.repeats + 1):
        for label in ("a", "b", "b", "a"):
            wall, lat, out = await run_round(paths[label], prompts, concurrency)
            walls[label].append(wall)
            per_call[label].extend(lat)
            if label in outputs and outputs[label] != out:
                print(f"  note: path {label} gave different outputs between rounds (nondeterminism)")
            outputs[label] = out
            print(f"  repeat {repeat} {label}: wall {wall:7.2f} s   median call {statistics.median(lat):6.3f} s")

    same = sum(x == y for x, y in zip(outputs["a"], outputs["b"]))
    total_a, total_b = sum(walls["a"]), sum(walls["b"])
    ratio = total_a / total_b
    print(f"load average at end:   {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"total wall  a (ours)   {total_a:8.2f} s   over {len(walls['a'])} rounds of {args.calls} calls")
    print(f"total wall  b (direct) {total_b:8.2f} s   over {len(walls['b'])} rounds of {args.calls} calls")
    print(f"ratio a/b {ratio:.3f}   overhead {100 * (ratio - 1):+.1f}% (target: at most +10%)")
    print(f"median wall per round  a {statistics.median(walls['a']):.2f} s   b {statistics.median(walls['b']):.2f} s")
    print(f"median per call        a {statistics.median(per_call['a']):.3f} s   b {statistics.median(per_call['b']):.3f} s   "
          f"(difference {1000 * (statistics.median(per_call['a']) - statistics.median(per_call['b'])):+.1f} ms)")
    print(f"identical outputs a vs b: {same}/{len(prompts)}")
    print("sample output:", json.loads(outputs["a"][0]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded:smollm2", help="an embedded model spec (default: %(default)s)")
    parser.add_argument("--calls", type=int, default=12, help="requests per round (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="a,b,b,a blocks (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=SMALL_PROFILE.annotator_max_tokens, help="output cap per call (default: the embedded annotators', %(default)s)")
    parser.add_argument("--concurrency", type=int, default=None, help="override the spec's concurrency (default: the spec's)")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.repeats < 1:
        parser.error("--calls and --repeats must be at least 1")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
