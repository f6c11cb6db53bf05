"""The one exception type for bad input: the CLI turns it into a message on stderr and exit code 2."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user, located as precisely as possible (file, line, field)."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        self.message = message
        self.path = path
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)


class BudgetReached(RuntimeError):
    """The run stopped before a step whose spending would pass the budget; resumable with a higher budget."""
