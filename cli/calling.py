"""The options every command that calls models shares: the call cache, the call deadline, the budget.

They steer how calls are made, not what the method computes, so a resumed run may change them.
"""

from __future__ import annotations

import argparse
from typing import Any

from state.errors import InputError

__all__ = ["add_call_options", "call_settings"]


def add_call_options(p: argparse.ArgumentParser) -> None:
    """--cache-dir, --no-cache, --timeout, --budget."""
    calls = p.add_argument_group("model calls")
    calls.add_argument("--cache-dir", metavar="DIR",
                       help="LLM-call cache directory (default: DIZINER_CACHE_DIR, else ~/.cache/diziner); a call "
                            "answered there is never sent again")
    calls.add_argument("--no-cache", action="store_true", help="neither read nor write the LLM-call cache")
    calls.add_argument("--timeout", type=float, metavar="SECONDS",
                       help="every model call's total deadline, first attempt to last retry (default: each model's "
                            "`timeout`, 600 s unless its run file says otherwise)")
    calls.add_argument("--budget", type=float, metavar="USD",
                       help="stop cleanly (exit 3, resumable) before the work would spend more than this on priced "
                            "models")


def call_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run-context fields the call options set (only those given); bad values are InputErrors."""
    out: dict[str, Any] = {}
    if getattr(args, "no_cache", False):
        out["call_cache"] = False
    if getattr(args, "cache_dir", None):
        out["cache_dir"] = args.cache_dir
    timeout = getattr(args, "timeout", None)
    if timeout is not None:
        if not timeout > 0:
            raise InputError(f"--timeout must be a positive number of seconds, got {timeout:g}")
        out["timeout"] = timeout
    budget = getattr(args, "budget", None)
    if budget is not None:
        if not budget >= 0:
            raise InputError(f"--budget must be zero or more US dollars, got {budget:g}")
        out["budget_usd"] = budget
    return out
