"""The unit tier's plugins: the registry sees only the toy families and the recording target."""
from __future__ import annotations

import pytest
from fakes import RecordingTarget, ToyFamily, ToyPipelineFamily, register, write_export


@pytest.fixture
def fake_target(monkeypatch):
    target = RecordingTarget()
    register(monkeypatch, families=[ToyFamily(), ToyPipelineFamily()], targets=[target])
    return target


@pytest.fixture
def toy_export(fake_target, tmp_path):
    return write_export(ToyFamily(), tmp_path / "exported") and tmp_path / "exported"
