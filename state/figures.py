"""How figures read in messages to the user, the same in every command."""

from __future__ import annotations


def duration(seconds: float) -> str:
    """``42s``, ``3m07s``, ``2h05m``: a wait or an ETA, to the second below an hour."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
