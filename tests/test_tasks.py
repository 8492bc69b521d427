"""`edgefm run` made from task declarations: flags merged across families, "not given" vs defaults, the task
picked from the options given, and one-line refusals. Fake families, no model: fast."""
from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import click
import pytest
from click.testing import CliRunner

from edgefm.contract.errors import ArtifactError, EdgefmError
from edgefm.contract.tasks import Task, TaskOption, TaskOutput, TaskResult

RAN = []  # the request of every fake run


def _record(request):
    RAN.append(request)
    return TaskResult([f"ran with {sorted(request.values.items())}"], [])


NUMBER = TaskOption("number", "A number.", kind=float)
DOUBLE = Task("double", "Twice the number.", inputs=(NUMBER,),
              options=(TaskOption("times", "How often.", kind=int, default=2, minimum=1),
                       TaskOption("note", "A note.", default="none")),
              output=TaskOutput("file", "a text file", suffixes=(".txt",)), run=_record)
HALVE = Task("halve", "Half the number.", inputs=(NUMBER,), options=(),
             output=TaskOutput("file", "a table", suffixes=(".csv",)), run=_record)
SAY = Task("say", "A word, repeated.", inputs=(TaskOption("word", "A word."),),
           options=(TaskOption("times", "Repeats of the word.", kind=int, default=1, minimum=0),),
           output=TaskOutput("file", "the words", suffixes=(".txt",), required=False), run=_record)
PAINT = Task("paint", "A colour.", inputs=(TaskOption("color", "A colour.", choices=("red", "blue")),), options=(),
             output=TaskOutput("image", "a picture"), run=_record)


class _Family:
    def __init__(self, name, title, tasks):
        self.name, self.title, self._tasks = name, title, tasks

    def tasks(self):
        return self._tasks


FAMILIES = {"alpha": _Family("alpha", "Alpha", (DOUBLE, HALVE, SAY)), "beta": _Family("beta", "Beta", (PAINT,))}


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """Two fake families; an artifact is a folder named after its family (no manifest, no sessions)."""
    import edgefm
    from edgefm.contract import registry
    from edgefm.contract.manifest import Manifest

    def load(directory, verify=True):
        if not Path(directory).is_dir():
            raise ArtifactError(f"{directory} is not an edgefm artifact")
        return SimpleNamespace(family=Path(directory).name)

    monkeypatch.setattr(registry, "families", lambda: dict(FAMILIES))
    monkeypatch.setattr(registry, "family", lambda name: FAMILIES[name])
    monkeypatch.setattr(Manifest, "load", staticmethod(load))
    monkeypatch.setattr(edgefm, "load", lambda directory: f"opened {Path(directory).name}")
    RAN.clear()
    for name in FAMILIES:
        (tmp_path / name).mkdir()
    return tmp_path


def _command():
    """A fresh `edgefm run` whose flags are made from the fake families on first use."""
    from edgefm.cli.run import run

    command = copy.copy(run)
    command.params = [p for p in run.params if p.name in ("artifact", "out", "overwrite")]
    command._added = False
    return command


def _cli(*args):
    return CliRunner().invoke(_command(), [str(a) for a in args])


def _refused(result, message):
    assert isinstance(result.exception, EdgefmError), result.output
    assert message in str(result.exception), str(result.exception)
    assert not RAN


def test_flags_shared_by_tasks_are_merged(fake):
    command = _command()
    result = CliRunner().invoke(command, ["--help"])
    assert result.exit_code == 0, result.output
    flags = {p.name: p for p in command.params}
    assert {"number", "times", "note", "word", "color", "task"} <= set(flags)
    assert not isinstance(flags["times"].type, click.IntRange)  # minimums differ: each task checks its own
    assert isinstance(flags["color"].type, click.Choice) and flags["number"].type is click.FLOAT
    text = " ".join(result.output.split())
    assert "Alpha double: How often. (default: 2)" in text and "Alpha say: Repeats of the word." in text
    assert "Alpha double/halve: A number." in text and "Beta: paint (--color)" in text
    assert list(flags["task"].type.choices) == ["double", "halve", "say", "paint"]


def test_flags_of_one_name_need_one_kind(fake):
    from edgefm.cli.run import task_flags

    FAMILIES["gamma"] = _Family("gamma", "Gamma", (Task("count", "", (TaskOption("number", "Whole.", kind=int),), (),
                                                        SAY.output, _record),))
    try:
        with pytest.raises(TypeError, match="--number: Gamma count declares it as int"):
            task_flags()
    finally:
        del FAMILIES["gamma"]


def test_options_not_given_get_the_task_defaults(fake):
    result = _cli(fake / "alpha", "--number", "3", "-o", fake / "out.txt")
    assert result.exit_code == 0, result.output
    (request,) = RAN
    assert request.values == {"number": 3.0, "times": 2, "note": "none"}
    assert request.artifact == "opened alpha" and request.out == fake / "out.txt"
    assert "ran with" in result.output
    RAN.clear()
    assert _cli(fake / "alpha", "--number", "3", "--times", "5", "-o", fake / "out.txt").exit_code == 0
    assert RAN[0].values["times"] == 5


def test_the_task_is_chosen_by_its_inputs_then_by_the_output(fake):
    assert _cli(fake / "alpha", "--word", "hi").exit_code == 0  # say: -o is optional
    assert RAN[-1].values == {"word": "hi", "times": 1} and RAN[-1].out is None
    assert _cli(fake / "alpha", "--number", "3", "-o", fake / "t.csv").exit_code == 0
    assert RAN[-1].values == {"number": 3.0}  # halve: the only task writing .csv
    assert _cli(fake / "alpha", "--number", "3", "--note", "n", "-o", fake / "t.csv").exit_code != 0  # only double
    assert _cli(fake / "alpha", "--task", "halve", "--number", "3", "-o", fake / "h.csv").exit_code == 0
    assert RAN[-1].values == {"number": 3.0}


def test_ambiguous_missing_and_foreign_options_are_refused(fake):
    alpha = fake / "alpha"
    _refused(_cli(alpha, "--number", "3"), "--number fits several Alpha tasks")
    _refused(_cli(alpha, "--number", "3", "--word", "hi"), "give exactly one of --number or --word")
    _refused(_cli(alpha), "Alpha artifacts run double (--number), halve (--number), say (--word)")
    _refused(_cli(alpha, "--color", "red"), "--color is one of the Beta options (paint), for Beta artifacts")
    _refused(_cli(alpha, "--word", "hi", "--note", "x"), "--note does not apply to say (Alpha)")
    _refused(_cli(alpha, "--task", "paint", "--number", "3"), "--task paint: Alpha artifacts run")
    _refused(_cli(alpha, "--task", "double", "--times", "3", "-o", fake / "x.txt"), "double needs --number")
    _refused(_cli(alpha, "--number", "3", "--note", "n"), "double writes a text file: give its path with -o OUT")
    _refused(_cli(alpha, "--number", "3", "--times", "0", "-o", fake / "x.txt"), "--times 0: give a value of at least")
    _refused(_cli(alpha, "--number", "nan", "--note", "n", "-o", fake / "x.txt"), "give a finite number")
    _refused(_cli(alpha, "--task", "halve", "--number", "3", "-o", fake / "x.txt"), "cannot write .txt files")


def test_output_is_checked_before_the_artifact_is_opened(fake):
    # --color selects Beta's paint whatever the artifact: its -o is refused before the missing folder is read
    _refused(_cli(fake / "missing", "--color", "red", "-o", fake), "is a directory; give a .png file path")
    with pytest.raises(ArtifactError):
        from edgefm.jobs.run import run_task

        run_task(fake / "missing", {"color": "red"}, fake / "p.png")


def test_library_calls_check_values_without_click(fake):
    from edgefm.jobs.run import run_task

    run_task(fake / "alpha", {"number": 2, "times": None, "note": None}, fake / "a.txt")
    assert RAN[-1].values == {"number": 2.0, "times": 2, "note": "none"}
    with pytest.raises(EdgefmError, match="--times True: give a whole number"):
        run_task(fake / "alpha", {"number": 2, "times": True}, fake / "a.txt")
    with pytest.raises(EdgefmError, match="--color 'green': choose one of red, blue"):
        run_task(fake / "beta", {"color": "green"}, fake / "p.png")


def test_task_option_checks(tmp_path):
    def pair(text):
        parts = text.split(",")
        if len(parts) != 2:
            raise ValueError("give A,B")
        return parts

    point = TaskOption("point", "", multiple=True, parse=pair)
    assert point.check("1,2") == (["1", "2"],) and point.check(["1,2", [3, 4]]) == (["1", "2"], [3, 4])
    with pytest.raises(EdgefmError, match=r"--point '12': give A,B"):
        point.check(["12"])
    path = TaskOption("some_file", "", kind=Path, must_exist=True, file_only=True)
    assert path.flag == "--some-file"
    with pytest.raises(EdgefmError, match="no such file"):
        path.check(tmp_path / "nothing")
    with pytest.raises(EdgefmError, match="is a folder; give a file"):
        path.check(tmp_path)
    assert TaskOption("n", "", kind=int, maximum=3).check("3") == 3
    with pytest.raises(EdgefmError, match="give a value of at most 3"):
        TaskOption("n", "", kind=int, maximum=3).check(4)
    with pytest.raises(TypeError):
        TaskOption("n", "", kind=list)
