"""`edgefm run ARTIFACT`: a task of the artifact's family, with flags made from the families' task declarations.

The flags are added when the command parses or prints its help, not when the CLI is imported: the
declarations live with the families, and `edgefm --help` stays free of them (and of numpy).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import click
from click.core import ParameterSource

from edgefm.cli.console import console, log

RESERVED = {"artifact", "out", "overwrite", "task"}  # the command's own parameters
_TYPES = {str: click.STRING, int: click.INT, float: click.FLOAT, Path: click.Path(path_type=Path)}


@dataclass
class TaskFlag:
    """One flag and the (family title, task, option) that declare it: tasks of several families share one
    (--image), which must then have one kind and be repeatable in all of them or none."""

    declared: list = field(default_factory=list)

    def add(self, title: str, task, option) -> None:
        first = self.declared[0][2] if self.declared else option
        if (option.kind, option.multiple) != (first.kind, first.multiple):
            raise TypeError(f"{option.flag}: {title} {task.name} declares it as {option.kind.__name__}"
                            f"{' (repeatable)' if option.multiple else ''}, {self.declared[0][0]} "
                            f"{self.declared[0][1].name} as {first.kind.__name__}; one flag takes one kind")
        self.declared.append((title, task, option))

    def _same(self, attribute: str):
        """The attribute when every declaration agrees on it, else None (the library checks each task's)."""
        values = {repr(getattr(option, attribute)) for _, _, option in self.declared}
        return getattr(self.declared[0][2], attribute) if len(values) == 1 else None

    def help(self) -> str:
        """Each distinct help text after the family titles and tasks it belongs to."""
        by_help: dict[str, dict[str, list[str]]] = {}
        for title, task, option in self.declared:
            default = f" (default: {option.default!r})" if option.default not in (None, False) else ""
            by_help.setdefault(option.help + default, {}).setdefault(title, []).append(task.name)
        parts = []
        for text, titles in by_help.items():
            by_tasks: dict[tuple, list[str]] = {}
            for title, names in titles.items():
                by_tasks.setdefault(tuple(dict.fromkeys(names)), []).append(title)
            owners = ", ".join(f"{' / '.join(t)} {'/'.join(names)}" for names, t in by_tasks.items())
            parts.append(f"{owners}: {text}")
        return " ".join(parts)

    def click_option(self) -> click.Option:
        option = self.declared[0][2]
        settings = dict(help=self.help(), default=None, metavar=option.metavar or None)
        if option.kind is bool:
            settings.update(is_flag=True, metavar=None)
        elif option.parse is None and self._same("choices"):
            settings.update(type=click.Choice([str(c) for c in option.choices]))
        elif option.parse is None and option.kind in (int, float) and (self._same("minimum") is not None
                                                                      or self._same("maximum") is not None):
            ranged = click.IntRange if option.kind is int else click.FloatRange
            settings.update(type=ranged(self._same("minimum"), self._same("maximum")))
        else:
            settings.update(type=_TYPES[option.kind])
        if option.multiple:
            settings.update(multiple=True)
        return click.Option([option.flag, option.name], **settings)


def task_flags() -> dict[str, TaskFlag]:
    """{option name: TaskFlag} over every registered family's tasks."""
    from edgefm.jobs.run import family_tasks

    found: dict[str, TaskFlag] = {}
    for family, task in family_tasks():
        for option in task.all_options:
            if option.name in RESERVED:
                raise TypeError(f"{family.title} {task.name}: {option.flag} is edgefm run's own; rename the option")
            found.setdefault(option.name, TaskFlag()).add(family.title, task, option)
    return found


class TaskFlagsCommand(click.Command):
    """A command whose task flags (and --task choices) come from the families, added on first use."""

    _added = False

    def get_params(self, ctx):
        if not self._added:
            self._added = True
            from edgefm.jobs.run import family_tasks

            names = list(dict.fromkeys(task.name for _, task in family_tasks()))
            chosen = click.Option(["--task"], type=click.Choice(names), metavar="NAME",
                                  help="The task to run, when the flags given fit several (see the list below).")
            self.params[1:1] = [chosen, *(flag.click_option() for flag in task_flags().values())]
        return super().get_params(ctx)

    def format_epilog(self, ctx, formatter):
        from edgefm.jobs.run import family_tasks

        shared: dict = {}  # families sharing a task (the same declaration) on one line
        for family, task in family_tasks():
            shared.setdefault(id(task), (task, []))[1].append(family.title)
        with formatter.section("Tasks (and the flags that select them)"):
            formatter.write_dl([(f"{' / '.join(titles)}: {task.describe()}", task.help)
                                for task, titles in shared.values()])


@click.command(cls=TaskFlagsCommand)
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path),
              help="What the task writes: an image, a .npy / .json file, or a folder of frame overlays.")
@click.option("--overwrite", is_flag=True, help="Replace an existing -o file (or the frame overlays in -o).")
@click.pass_context
def run(ctx, artifact, out, overwrite, task, **values):
    """Run a task of ARTIFACT's family (the list below): the flags given pick it, or --task NAME."""
    from edgefm.jobs.run import run_task

    given = {name: value for name, value in values.items()
             if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT}
    with _progress_bar() as progress:
        result = run_task(artifact, given, out, task=task, overwrite=overwrite, log=log, progress=progress)
    for line in result.lines:
        click.echo(line)


@contextlib.contextmanager
def _progress_bar():
    """A progress(done, total) callback whose bar appears only once a task reports steps, and goes at the end."""
    shown = {}

    def progress(done: int, total: int) -> None:
        if not shown:
            from rich.progress import Progress

            shown["bar"] = Progress(console=console(), transient=True)
            shown["bar"].start()
            shown["task"] = shown["bar"].add_task("running")
        shown["bar"].update(shown["task"], completed=done, total=total)

    try:
        yield progress
    finally:
        if shown:
            shown["bar"].stop()


COMMANDS = (run,)
