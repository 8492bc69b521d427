"""`edgefm` command line: the group, its error handling, and the commands of each group module.

Heavy modules are imported inside commands so `--help` stays fast."""
from __future__ import annotations

import click

from edgefm import __version__
from edgefm.cli import bench, build, info, run
from edgefm.cli.console import USER_OS_ERRORS, fail, report_bug


class _Group(click.Group):
    """Every error a user can fix is one line and exit code 2; a bug keeps its traceback and asks to be reported."""

    def invoke(self, ctx):
        from edgefm.contract.errors import EdgefmError

        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except EdgefmError as exc:
            fail(str(exc), 2)
        except OSError as exc:
            if exc.errno not in USER_OS_ERRORS:
                report_bug()
            fail(f"{exc.strerror}: {exc.filename or ''}".rstrip(": ") + f"; {USER_OS_ERRORS[exc.errno]}", 2)
        except KeyboardInterrupt:
            fail("interrupted; nothing half-written was left looking complete", 130)
        except Exception:
            report_bug()


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="edgefm")
def main():
    """Export vision foundation models to ONNX, compile them per target and precision, validate and run them."""


for command in (*info.COMMANDS, *build.COMMANDS, *run.COMMANDS, *bench.COMMANDS):
    main.add_command(command)
