"""What every command shares: where logs, tables and errors go, and how a run below its gate exits."""
from __future__ import annotations

import errno
import sys
from pathlib import Path

import click

from edgefm import __version__


def console(stderr: bool = True, min_width: int = 120):
    """Logs and errors go to stderr, result tables to stdout; tables stay readable when piped."""
    import shutil

    from rich.console import Console

    return Console(stderr=stderr, width=max(shutil.get_terminal_size((160, 24)).columns, min_width))


def log(message: str) -> None:
    from rich.markup import escape

    console().print(f"[dim]•[/dim] {escape(message)}", highlight=False)


# The OS errors a user causes and can fix: one line with the fix, not a traceback.
USER_OS_ERRORS = {errno.EACCES: "choose a folder you may write to", errno.EPERM: "choose a folder you may write to",
                  errno.EROFS: "choose a folder you may write to", errno.ENOSPC: "free some space or write elsewhere",
                  errno.EDQUOT: "free some space or write elsewhere", errno.ENAMETOOLONG: "use a shorter name"}


def fail(message: str, code: int):
    from rich.markup import escape

    console().print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def report_bug():
    import traceback

    traceback.print_exc()
    console().print(f"[bold red]this is a bug in edgefm {__version__}, not in how you ran it:[/bold red] please "
                     "report it with the command and the traceback above", highlight=False)
    sys.exit(1)


def print_table(rows, latencies=None):
    from edgefm.cli.tables import results_table

    console(stderr=False).print(results_table(rows, latencies))


def exit_on_gate(*manifests, strict: bool = False):
    """Exit 1 when a component is below its gate, unless --allow-below-gate kept it (and not strict)."""
    def below(validation) -> bool:
        return bool(validation) and not validation.passed and (strict or not validation.allowed_below_gate)

    failed = [name for m in manifests for name, e in m.components.items() if below(e.validation)]
    failed += [f"{m.family} end to end" for m in manifests if below(m.pipeline_validation)]
    if failed:
        console().print(f"[bold red]below gate:[/bold red] {', '.join(failed)}")
        sys.exit(1)


def picture_path(ctx, param, value):
    if value is not None and Path(value).suffix.lower() not in (".png", ".svg", ".pdf"):
        raise click.BadParameter(f"{value}: give a .png, .svg or .pdf path")
    return value
