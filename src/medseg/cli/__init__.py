"""The ``medseg`` command line: each command a thin call into the Python API.

``app`` (typer) lives in :mod:`medseg.cli.app`; the commands are registered on it by the ``*_commands`` modules,
grouped by what they work on; :func:`main` turns user errors into one line and an exit code.
"""

from __future__ import annotations

import sys

import typer

from medseg.cli import data_commands, evaluate_commands, model_commands, pacs_commands, train_commands  # noqa: F401
from medseg.cli.app import app, console, parse_duration, state
from medseg.errors import MedsegError

__all__ = ["app", "main", "parse_duration"]

# `medseg --help` lists the commands in the order of the job, not in the order their modules were imported
COMMAND_ORDER = ["check", "split", "convert", "plan", "train", "predict", "export", "serve", "dicom_node", "dicom_pull",
                 "dicomweb",
                 "evaluate", "compare", "report", "demo"]
app.registered_commands.sort(key=lambda command: COMMAND_ORDER.index(command.callback.__name__))


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 1 (tracebacks with --debug)."""
    try:
        result = app(standalone_mode=False)  # returns the exit code of a typer.Exit raised by a command
        sys.exit(result if isinstance(result, int) else 0)
    except MedsegError as exc:
        if state["debug"]:
            raise
        console.print(f"error: {exc.message}", style="red", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        console.print("aborted")
        sys.exit(130)
    except Exception as exc:
        # Usage errors (typer's own, or click's in older typer) carry an exit code and a message.
        if hasattr(exc, "exit_code") and hasattr(exc, "format_message"):
            show = getattr(exc, "show", None)
            if callable(show):
                show()
            else:
                console.print(f"error: {exc.format_message()}", style="red", markup=False, highlight=False,
                              soft_wrap=True)
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
