"""Prices in USD per million tokens, and what a model's usage costs.

A run file may give any model a ``price: {input, cached_input, output}``; a few API models have a shipped price
(their providers' list prices when this table was written; a run file's price wins). Models without a price count
as free and are listed as unpriced.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["KNOWN_PRICES", "ModelPrice", "cost_usd", "fits_budget", "known_price"]


class ModelPrice(BaseModel):
    """USD per million tokens: input, input served from the provider's prompt cache, and output."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0, description="default: the input price")
    output: float = Field(ge=0)


KNOWN_PRICES: dict[str, ModelPrice] = {
    "gpt-5": ModelPrice(input=1.25, cached_input=0.125, output=10.0),
    "gpt-5-mini": ModelPrice(input=0.25, cached_input=0.025, output=2.0),
    "gpt-5-nano": ModelPrice(input=0.05, cached_input=0.005, output=0.4),
    "gpt-4.1-mini": ModelPrice(input=0.4, cached_input=0.1, output=1.6),
    "gpt-4o-mini": ModelPrice(input=0.15, cached_input=0.075, output=0.6),
}
"""OpenAI API list prices (USD per 1M tokens) for models called on OpenAI itself."""


def known_price(provider: str, model: str, base_url: str | None) -> ModelPrice | None:
    """The shipped price of an OpenAI API model called on OpenAI's own endpoint, else None."""
    on_openai = base_url is None or "api.openai.com" in base_url
    return KNOWN_PRICES.get(model) if provider == "openai" and on_openai else None


def fits_budget(spent: float, expected: float, budget: float) -> bool:
    """The budget rule of every command (docs/method.md#budget-and-dry-run): a step may start while the spending so
    far plus its expected cost stays within the budget, and not once something was spent and the budget is reached."""
    return not (spent + expected > budget or (spent > 0 and spent >= budget))


def cost_usd(price: ModelPrice | None, usage: Any) -> float:
    """What `usage` (input, cached input and output tokens) costs at `price`; 0 for an unpriced model."""
    if price is None:
        return 0.0
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    cached_rate = price.input if price.cached_input is None else price.cached_input
    return ((usage.input_tokens - cached) * price.input + cached * cached_rate + usage.output_tokens * price.output) / 1e6
