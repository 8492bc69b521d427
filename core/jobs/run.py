"""`edgefm run`: the task of an artifact's family that the given options select, run on it.

Families declare their tasks (`ModelFamily.tasks()`, edgefm.contract.tasks): what selects each, what it
takes and writes. This module only picks one, checks the values and -o against it, opens the artifact
and calls the task; it names no family.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgefm.contract.errors import EdgefmError
from edgefm.contract.tasks import Task, TaskOutput, TaskRequest, TaskResult


def run_task(artifact_dir: Path, values: dict, out: Path | None = None, task: str | None = None,
             overwrite: bool = False, log: Callable[[str], None] = print,
             progress: Callable[[int, int], None] | None = None) -> TaskResult:
    """Run the task `values` select (or the one named `task`) on the artifact; `values` maps option names to
    values, None meaning not given (the task's default applies). -o is checked before the artifact is opened."""
    import edgefm
    from edgefm.contract import registry
    from edgefm.contract.manifest import Manifest
    from edgefm.runtimes.pipelines.outputs import check_out

    artifact_dir, out = Path(artifact_dir), None if out is None else Path(out)
    given = given_values(values)
    _check_out_early(artifact_dir, given, out, task, overwrite)
    family = registry.family(Manifest.load(artifact_dir, verify=False).family)
    chosen = choose_task(family, given, out, task, artifact_dir)
    checked = chosen.values(given)
    if out is None and chosen.output.required:
        raise EdgefmError(f"{chosen.name} writes {chosen.output.help}: give its path with -o OUT")
    if out is not None:
        check_out(chosen.output, out, artifact_dir, sources(chosen, checked), overwrite)
    request = TaskRequest(artifact_dir, edgefm.load(artifact_dir), checked, out, overwrite, log, progress)
    return chosen.run(request)


def given_values(values: dict) -> dict:
    """The values that were given: None and an empty repeat mean "not given"."""
    return {k: v for k, v in values.items() if v is not None and not (isinstance(v, (tuple, list)) and not v)}


def family_tasks() -> list[tuple[Any, Task]]:
    """(family, task) for every task of every registered family, by family name."""
    from edgefm.contract import registry

    return [(family, task) for _, family in sorted(registry.families().items()) for task in family.tasks()]


def fitting(tasks: Sequence[Task], given: dict, out: Path | None = None) -> list[Task]:
    """The tasks given one of their inputs; among several, those that take everything given, then the one
    whose output -o looks like (a .npy or a .png path). More than one left means the request is ambiguous."""
    selected = list({id(t): t for t in tasks if any(o.name in given for o in t.inputs)}.values())  # one per task
    if len(selected) < 2:
        return selected
    complete = [t for t in selected if all(t.takes(name) for name in given)]
    if len(complete) < 2:
        return complete or selected
    shaped = [t for t in complete if out is not None and t.output.accepts(out)]
    return shaped if len(shaped) == 1 else complete


def choose_task(family: Any, given: dict, out: Path | None, name: str | None, artifact_dir: Path) -> Task:
    """The family's task for these values, or an error naming the tasks and what selects each."""
    tasks = family.tasks()
    _refuse_foreign(family, tasks, given, artifact_dir)
    if name is not None:
        found = [t for t in tasks if t.name == name]
        if not found:
            raise EdgefmError(f"--task {name}: {family.title} artifacts run {_described(tasks)}")
    else:
        found = fitting(tasks, given, out)
    if not found:
        raise EdgefmError(f"{family.title} artifacts run {_described(tasks)}: give the input of one")
    if len(found) > 1:
        raise EdgefmError(_ambiguous(family.title, found, given))
    chosen = found[0]
    extra = [option for option in _options(tasks) if option.name in given and not chosen.takes(option.name)]
    if extra:
        raise EdgefmError(f"{extra[0].flag} does not apply to {chosen.name} ({family.title}); {chosen.name} takes "
                          f"{', '.join(option.flag for option in chosen.all_options)}")
    return chosen


def sources(task: Task, values: dict) -> list[Path]:
    """The paths given to the task's path options: -o may not be one of them or sit inside one."""
    paths = {option.name for option in task.all_options if option.kind is Path}
    found = [v for name, value in values.items() if name in paths
             for v in (value if isinstance(value, (tuple, list)) else [value])]
    return [Path(v) for v in found if isinstance(v, (str, os.PathLike))]


def _check_out_early(artifact_dir: Path, given: dict, out: Path | None, name: str | None, overwrite: bool) -> None:
    """When the options alone say what -o must be (the tasks of every family they could select write the
    same kind of output), check -o before the artifact is even opened."""
    from edgefm.runtimes.pipelines.outputs import check_out

    every = [task for _, task in family_tasks()]
    found = [t for t in every if t.name == name] if name is not None else fitting(every, given, out)
    if out is not None and found and all(t.output == found[0].output for t in found):
        check_out(found[0].output, out, artifact_dir, sources(found[0], given), overwrite)


def _refuse_foreign(family: Any, tasks: Sequence[Task], given: dict, artifact_dir: Path) -> None:
    """An option none of the family's tasks takes: say whose it is and what this artifact runs."""
    for name in given:
        if any(t.takes(name) for t in tasks):
            continue
        owners = [(f, t) for f, t in family_tasks() if t.takes(name)]
        runs = f"its tasks: {_described(tasks)}" if tasks else "edgefm run has no task for it (use edgefm.load(DIR))"
        here = f"{artifact_dir} is a {family.title} artifact; {runs}"
        if not owners:
            raise EdgefmError(f"unknown option {name!r}; {here}")
        titles = " / ".join(dict.fromkeys(f.title for f, _ in owners))
        names = ", ".join(dict.fromkeys(t.name for _, t in owners))
        flag = next(o.flag for o in owners[0][1].all_options if o.name == name)
        raise EdgefmError(f"{flag} is one of the {titles} options ({names}), for {titles} artifacts; {here}")


def _ambiguous(title: str, found: list[Task], given: dict) -> str:
    inputs = list(dict.fromkeys(o.flag for t in found for o in t.inputs if o.name in given))
    if len(inputs) > 1:
        return (f"give exactly one of {' or '.join(inputs)}: they select different {title} tasks "
                f"({_described(found)})")
    outputs = "; ".join(f"{t.name} writes {t.output.help} (-o {_looks_like(t.output)})" for t in found)
    return (f"{inputs[0]} fits several {title} tasks ({outputs}); choose one with --task "
            f"{' or --task '.join(t.name for t in found)}")


def _looks_like(output: TaskOutput) -> str:
    if output.kind == "folder":
        return "a folder"
    return "*" + " / *".join(output.suffixes or (".png",))


def _described(tasks: Sequence[Task]) -> str:
    return ", ".join(t.describe() for t in tasks)


def _options(tasks: Sequence[Task]) -> list:
    return list({option.name: option for t in tasks for option in t.all_options}.values())
