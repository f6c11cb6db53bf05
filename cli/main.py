"""`diziner` console script: a thin shell over the same functions the graph uses.

Each subcommand lives in its own module and is imported only when chosen, so that `analyze` and `evaluate`
never import LangGraph or LangChain. Exit codes: 0 success, 2 bad input (message on stderr), 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module under cli/, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "analyze": ("cli.analyze", "measure where and how annotators disagree (deterministic, no LLM)"),
    "evaluate": ("cli.evaluate", "strict span P/R/F1 of predictions against gold"),
    "refine": ("cli.refine", "run the pilot-annotation loop (annotators, disagreement, supervisor)"),
    "annotate": ("cli.annotate", "apply a refined guideline to a corpus"),
    "report": ("cli.report", "write one self-contained report.html for a run or bench directory"),
    "bench": ("cli.bench", "the paper's protocol on a benchmark: loop, test-sample scoring, table beside the paper"),
}


class _Parser(argparse.ArgumentParser):
    """argparse exits with 2 on usage errors already; keep its message short and on stderr."""


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, str | None]:
    """The `diziner` parser with the chosen subcommand's options (only that module is imported)."""
    parser = _Parser(prog="diziner", description="DiZiNER: disagreement-guided zero-shot NER")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if a in SUBCOMMANDS), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # only the chosen subcommand's module is imported
            importlib.import_module(module).add_arguments(p)
    return parser, chosen


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand; InputError -> exit 2 with the message, any other failure -> exit 1 with one line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, chosen = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    from agents.models.errors import ModelUnavailable
    from state.errors import InputError

    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except InputError as exc:
        print(f"diziner {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModelUnavailable as exc:  # not the user's input, and not a bug: the run can be resumed
        print(f"diziner {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"diziner {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # unexpected: one line, not a traceback, unless DIZINER_DEBUG is set
        import os
        import traceback

        if os.environ.get("DIZINER_DEBUG"):
            traceback.print_exc()
        print(f"diziner {args.command}: unexpected failure: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
