"""Families describe themselves: recipe, Artifact class and gates are asked of the family object."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from edgefm.calibration.recipe import CalibrationRecipe, CheckContext
from edgefm.contract import registry
from edgefm.contract.cache import CompileCache
from edgefm.contract.gates import GATES
from edgefm.runtimes.loader import Artifact


@pytest.mark.parametrize("name", sorted(registry.families()))
def test_every_family_gives_its_recipe_and_artifact_class(name):
    family = registry.family(name)
    assert isinstance(family.calibration(), CalibrationRecipe)
    assert family.calibration() is family.calibration()  # one stateless object: caches are passed in
    assert issubclass(family.artifact_class(), Artifact)
    declared = {*family.gate_metrics, *family.pipeline_gate_metrics, *family.gate_overrides,
                *family.pipeline_gate_overrides, *(m for ms in family.component_gate_metrics.values() for m in ms)}
    assert declared <= set(GATES)
    assert set(family.component_gate_metrics) <= set(family.component_names)


def test_exporting_a_family_imports_no_recipe_or_runtime_pipeline():
    code = ("import sys\nfrom edgefm.contract import registry\nregistry.families()\n"
            "print([m for m in sys.modules if m.startswith(('edgefm.calibration', 'edgefm.runtimes.pipelines'))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_check_context_is_frozen_and_brings_a_cache():
    ctx = CheckContext("c", object(), {}, None, None, None, {"cosine": 0.9})
    assert isinstance(ctx.cache, CompileCache)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.component = "d"


def test_compile_cache_computes_once():
    cache, calls = CompileCache(), []
    assert cache.get(("k", 1), lambda: calls.append(1) or "v") == "v"
    assert cache.get(("k", 1), lambda: calls.append(2) or "w") == "v"
    assert calls == [1] and ("k", 1) in cache and len(cache) == 1
