"""`edgefm bench` and `--precision auto`: their logic, checked against the figures they record (not timings)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgefm.bench import hardware
from edgefm.bench import report as bench_report
from edgefm.bench.runner import run_bench
from edgefm.contract import registry
from edgefm.contract.errors import EdgefmError, GateError
from edgefm.contract.manifest import Manifest
from edgefm.jobs.auto import TIE, choose, compile_auto


@pytest.fixture(scope="module")
def report(compiled):
    artifacts = [compiled("dinov2", "fp32"), compiled("dinov2", "int8", "openvino"), compiled("clip", "int8")]
    return run_bench(artifacts, batches=[1, 2], warmup=1, iters=5, threads=1)


def test_bench_measures_every_component_and_batch(report):
    results = report["results"]
    assert [(r["family"], r["component"], r["batch"]) for r in results] == [
        ("dinov2", "image_encoder", 1), ("dinov2", "image_encoder", 2), ("dinov2", "image_encoder", 1),
        ("dinov2", "image_encoder", 2), ("clip", "image_encoder", 1), ("clip", "image_encoder", 2),
        ("clip", "text_encoder", 1), ("clip", "text_encoder", 2)]
    assert report["skipped"] == [] and report["errors"] == []
    for r in results:
        entry = Manifest.load(r["artifact"]).components[r["component"]]
        assert r["accuracy"]["value"] == entry.validation["value"] and r["precision"] == entry.precision
        assert r["size_mib"] * 2**20 == sum((Path(r["artifact"]) / f).stat().st_size for f in entry.files())
        assert r["load_s"] > 0 and r["peak_rss_mib"] > 0
        assert 0 < r["median_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["items_per_s"] == pytest.approx(r["batch"] * 1e3 / r["median_ms"])


def test_hardware_block_reports_this_machine(report):
    hardware = report["hardware"]
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = set(next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")).split())
        assert hardware["isa"]["AVX2"] == ("avx2" in flags)
        assert hardware["isa"]["VNNI"] == bool(flags & {"avx512_vnni", "avx_vnni"})
    assert hardware["threads_used"] == 1
    assert hardware["libraries"]["onnxruntime"] and hardware["libraries"]["openvino"]


def test_gemm_ceilings_measure_each_compute_type_this_cpu_has():
    ceilings = hardware.gemm_ceilings(1, size=256, repeats=2)
    assert set(ceilings["gflops"]) >= {"fp32", "int8"} and all(rate > 0 for rate in ceilings["gflops"].values())
    assert ("bf16" in ceilings["gflops"]) == hardware.has_bf16(hardware.instruction_sets())
    lines = hardware.summary_lines({**hardware.describe(1, []), "gemm_ceiling": ceilings})
    assert any(line.startswith("- GEMM ceiling") and "fp32" in line and "256x256x256" in line for line in lines)


def test_ratios_are_against_the_first_artifact_of_the_same_model(report):
    rows = bench_report.rows(report)
    first = {r["batch"]: r for r in rows if r["artifact"] == report["results"][0]["artifact"]}
    for row in rows:
        if row["family"] == "dinov2":
            assert row["speedup_vs_first"] == pytest.approx(first[row["batch"]]["median_ms"] / row["median_ms"])
            assert row["size_vs_first"] == pytest.approx(row["size_mib"] / first[1]["size_mib"])
        else:  # clip's first artifact is itself, never dinov2's image encoder
            assert row["speedup_vs_first"] == 1.0 and row["size_vs_first"] == 1.0


def test_fixed_batch_components_run_at_batch_1_only(compiled, tmp_path):
    fixed = tmp_path / "fixed-batch"
    shutil.copytree(compiled("dinov2", "fp32"), fixed)
    manifest = json.loads((fixed / "manifest.json").read_text())
    for spec in manifest["components"]["image_encoder"]["inputs"]:
        spec["shape"][0] = 1
    (fixed / "manifest.json").write_text(json.dumps(manifest))
    result = run_bench([compiled("dinov2", "int4"), fixed], batches=[2, 1], warmup=0, iters=2, threads=None)
    assert [(Path(r["artifact"]).name, r["batch"]) for r in result["results"]] == [
        ("dinov2-onnxruntime-int4", 2), ("dinov2-onnxruntime-int4", 1), ("fixed-batch", 1)]
    assert result["skipped"] == ["fixed-batch image_encoder batch 2: the graph has a fixed batch size"]
    rows = bench_report.rows(result)
    assert rows[2]["speedup_vs_first"] == pytest.approx(rows[1]["median_ms"] / rows[2]["median_ms"])


def test_bench_writes_json_markdown_and_plot(compiled, tmp_path):
    from click.testing import CliRunner

    from edgefm.cli import main

    result = CliRunner().invoke(main, ["bench", str(compiled("dinov2", "fp32")), str(compiled("dinov2", "int4")),
                                       "--batch", "1", "--iters", "3", "--warmup", "0", "--json", tmp_path / "b.json",
                                       "--markdown", tmp_path / "b.md", "--plot", tmp_path / "b.png"])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "b.json").read_text())
    assert len(data["results"]) == 2 and "speed-up" in result.output
    markdown = (tmp_path / "b.md").read_text()
    assert "Instruction sets:" in markdown and markdown.count("| image_encoder |") == 2
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_refuses_bad_settings(compiled):
    from click.testing import CliRunner

    from edgefm.cli import main

    assert "not a comma-separated list" in CliRunner().invoke(main, ["bench", str(compiled("dinov2", "fp32")),
                                                                     "--batch", "1,x"]).output
    with pytest.raises(EdgefmError, match="need --iters >= 1"):
        run_bench([compiled("dinov2", "fp32")], batches=[1], warmup=0, iters=0, threads=None)


@pytest.mark.parametrize("target", ["onnxruntime", "openvino"])
def test_threads_reach_the_runtime(compiled, target):
    import edgefm

    session = edgefm.load(compiled("dinov2", "fp32", target), threads=1)["image_encoder"]
    if target == "openvino":
        assert session._compiled.get_property("INFERENCE_NUM_THREADS") == 1
    else:
        assert session._session.get_session_options().intra_op_num_threads == 1


def _candidate(precision, latency, size, passed=True, target=None):
    from edgefm.contract.records import Candidate

    return Candidate(precision, passed, target, "gate", latency, size)


def test_choose_keeps_the_best_passing_candidate():
    candidates = [_candidate("fp32", 10.0, 100), _candidate("fp16", 11.0, 50), _candidate("int8", 4.0, 25),
                  _candidate("int4", 1.0, 10, passed=False)]
    chosen, reason = choose(candidates, "latency")
    assert chosen["precision"] == "int8" and "lowest batch-1 latency" in reason and "fp32 10.00" in reason
    assert choose(candidates, "size")[0]["precision"] == "int8"  # int4 is smaller but failed its gate
    # int8 slower than fp32 (a CPU without int8 dot products): fp32 wins on latency
    slow_int8 = [_candidate("fp32", 10.0, 100), _candidate("int8", 14.0, 25)]
    assert choose(slow_int8, "latency")[0]["precision"] == "fp32"
    # within the noise band the more precise candidate wins
    tie = [_candidate("fp32", 10.0 * (1 + TIE / 2), 100), _candidate("int8", 10.0, 25)]
    chosen, reason = choose(tie, "latency")
    assert chosen["precision"] == "fp32" and "most precise" in reason
    with pytest.raises(GateError, match="no candidate passes"):
        choose([_candidate("int4", 1.0, 10, passed=False)], "latency")


@pytest.mark.slow
def test_auto_compiles_measures_and_records_every_candidate(dinov2_exported, tmp_path):
    manifest = compile_auto(dinov2_exported, "openvino", tmp_path / "auto", objective="size", iters=5,
                            log=lambda m: None)
    selection = manifest.selection
    assert [c["precision"] for c in selection["candidates"]] == ["fp32", "fp16", "int8", "int4"]
    assert all(c["passed"] and c["latency_ms"] > 0 for c in selection["candidates"])
    sizes = {c["precision"]: c["size_mib"] for c in selection["candidates"]}
    assert sizes[selection["chosen"]] <= min(sizes.values()) * (1 + TIE)
    assert selection["chosen"] == manifest.components["image_encoder"].precision
    assert sorted(p.name for p in (tmp_path / "auto").iterdir()) == [
        "image_encoder.bin", "image_encoder.xml", "manifest.json", "preprocessor_config.json"]
    assert Manifest.load(tmp_path / "auto").selection == selection


@pytest.mark.slow
def test_auto_records_candidates_that_fail(dinov2_exported, tmp_path, monkeypatch):
    family, target = registry.family("dinov2"), registry.target("onnxruntime")
    gates = type(family).gates
    monkeypatch.setattr(type(family), "gates",  # int8 cannot reach its gate
                        lambda self, c, p: {**gates(self, c, p), "cosine": 1.5} if p == "int8" else gates(self, c, p))
    compile_one = type(target).compile

    def broken_int4(self, request, options):
        if request.precision.value == "int4":
            raise RuntimeError("simulated quantizer crash")
        return compile_one(self, request, options)

    monkeypatch.setattr(type(target), "compile", broken_int4)
    manifest = compile_auto(dinov2_exported, "onnxruntime", tmp_path / "auto", iters=3, log=lambda m: None)
    by_precision = {c["precision"]: c for c in manifest.selection["candidates"]}
    assert not by_precision["int8"]["passed"] and "below its gate" in by_precision["int8"]["reason"]
    assert not by_precision["int4"]["passed"] and "simulated quantizer crash" in by_precision["int4"]["reason"]
    assert manifest.selection["chosen"] in ("fp32", "fp16") and by_precision["fp32"]["passed"]


@pytest.mark.slow
def test_target_auto_tries_every_target_that_runs_here(dinov2_exported, tmp_path):
    manifest = compile_auto(dinov2_exported, "auto", tmp_path / "auto", iters=3, log=lambda m: None)
    selection = manifest.selection
    tried = [(c["target"], c["precision"]) for c in selection["candidates"]]
    for target in ("onnxruntime", "openvino"):
        assert [p for t, p in tried if t == target] == [p.value for p in registry.target(target).precisions]
    # targets whose artifacts cannot run here are recorded with the reason, never silently dropped
    assert "tensorrt" in selection["targets_skipped"] and selection["targets_skipped"]["tensorrt"]
    assert set(selection["targets_skipped"]) | {t for t, _ in tried} == set(registry.targets())
    passing = [c for c in selection["candidates"] if c["passed"]]
    chosen = next(c for c in passing if (c["target"], c["precision"]) == (selection["chosen_target"],
                                                                          selection["chosen"]))
    assert chosen["latency_ms"] <= min(c["latency_ms"] for c in passing) * (1 + TIE)
    entry = manifest.components["image_encoder"]
    assert (entry.target, entry.precision) == (selection["chosen_target"], selection["chosen"])
    assert selection["asked"] == "--target auto --precision auto"
    assert Manifest.load(tmp_path / "auto").selection == selection


def test_choose_names_the_target_of_each_candidate():
    candidates = [_candidate("fp32", 10.0, 100, target="onnxruntime"), _candidate("int8", 4.0, 25, target="openvino"),
                  _candidate("int8", 6.0, 25, target="onnxruntime")]
    chosen, reason = choose(candidates, "latency")
    assert chosen["target"] == "openvino" and reason.startswith("openvino int8:") and "onnxruntime int8 6.00" in reason
