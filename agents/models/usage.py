"""Usage as money: per model, billed and answered from the cache, priced where a price is known."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from agents.models.prices import cost_usd
from agents.models.spec import ModelSpec
from state.graph_state import TokenUsage

__all__ = ["openai_usage", "usage_summary"]

ESTIMATE_CHARS_PER_TOKEN = 4.0  # usage estimate when a server reports none


def _figures(usage: TokenUsage, price: Any) -> dict[str, Any]:
    return {"input_tokens": usage.input_tokens, "cached_input_tokens": usage.cached_input_tokens,
            "output_tokens": usage.output_tokens, "calls": usage.calls, "estimated_calls": usage.estimated_calls,
            "cost_usd": round(cost_usd(price, usage), 6)}


def _from_cache(usage: TokenUsage, price: Any) -> dict[str, Any]:
    hits = TokenUsage(input_tokens=usage.cache_input_tokens, output_tokens=usage.cache_output_tokens)
    return {"input_tokens": hits.input_tokens, "cached_input_tokens": 0, "output_tokens": hits.output_tokens,
            "calls": usage.cache_hits, "cost_usd": round(cost_usd(price, hits), 6)}


def usage_summary(usages: Iterable[tuple[str, TokenUsage]], specs: Mapping[str, ModelSpec]) -> dict[str, Any]:
    """{input_tokens, cached_input_tokens, output_tokens, calls, cost_usd, by_model, from_cache, unpriced} over
    (model name, usage) pairs; a model without a price costs nothing and is listed as unpriced."""
    by_name: dict[str, TokenUsage] = {}
    for name, usage in usages:
        by_name[name] = by_name[name].add(usage) if name in by_name else usage
    total, total_cost, cache_total, cache_cost = TokenUsage(), 0.0, TokenUsage(), 0.0
    by_model: dict[str, Any] = {}
    for name in sorted(by_name):
        usage = by_name[name]
        price = specs[name].price if name in specs else None
        figures = _figures(usage, price)
        figures["from_cache"] = _from_cache(usage, price)
        figures["priced"] = price is not None
        by_model[name] = figures
        total = total.add(usage)
        total_cost += figures["cost_usd"]
        cache_cost += figures["from_cache"]["cost_usd"]
        cache_total = cache_total.add(usage)
    summary = _figures(total, None)
    summary["cost_usd"] = round(total_cost, 6)
    summary["by_model"] = by_model
    summary["from_cache"] = {**_from_cache(cache_total, None), "cost_usd": round(cache_cost, 6)}
    summary["unpriced"] = [n for n, f in by_model.items() if not f["priced"]]
    return summary


def estimated_usage(prompt_chars: int, answer: str) -> TokenUsage:
    """One request's usage estimated from text length, for a server that reports none (counted as estimated)."""
    return TokenUsage(input_tokens=round(prompt_chars / ESTIMATE_CHARS_PER_TOKEN),
                      output_tokens=round(len(answer) / ESTIMATE_CHARS_PER_TOKEN), calls=1, estimated_calls=1)


def openai_usage(used: dict[str, Any] | None, prompt_chars: int, answer: str) -> TokenUsage:
    """One request's usage from an OpenAI-style `usage` object; estimated from text length when the server gave
    none (and counted as estimated)."""
    if not used:
        return estimated_usage(prompt_chars, answer)
    details = used.get("prompt_tokens_details") or {}
    return TokenUsage(input_tokens=int(used.get("prompt_tokens") or 0),
                      cached_input_tokens=int(details.get("cached_tokens") or 0),
                      output_tokens=int(used.get("completion_tokens") or 0), calls=1)


def read_completion(answer: dict[str, Any], prompt_chars: int) -> tuple[str, bool, bool, TokenUsage]:
    """(answer text, cut at the output cap, stopped by a content filter, usage) of a chat-completion answer."""
    choice = answer["choices"][0]
    message = choice.get("message") or {}
    text = message.get("content") or ""
    if not text and message.get("tool_calls"):
        text = message["tool_calls"][0]["function"]["arguments"] or ""
    reason = choice.get("finish_reason")
    return text, reason == "length", reason == "content_filter", openai_usage(answer.get("usage"), prompt_chars, text)
