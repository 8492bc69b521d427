"""The `edgefm matrix` report: tables, Pareto flags, escaping, plots, and the HTML page in a real headless browser."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from edgefm.bench.hardware import summary_lines
from edgefm.matrix.report import html, markdown, pareto, write_report

PNG = b"\x89PNG\r\n\x1a\n"
CHROMEDRIVER = "/usr/bin/chromedriver"


def _hw(cpu: str, cores: int, gpus: list | None = None) -> dict:
    return {"cpu": cpu, "logical_cores": cores, "cores_available": cores,
            "threads_used": f"runtime default (up to {cores})",
            "isa": {"avx2": True, "avx512f": cores > 2, "amx": False}, "gpus": gpus or [], "os": "Linux-6.1-x86_64",
            "python": "3.11.7", "libraries": {"edgefm": "0.1.0", "numpy": "2.1"}}


HW1 = _hw("Test CPU One", 2)
HW2 = _hw("Test CPU Two", 16, [{"name": "Test GPU", "compute_capability": "9.0", "driver": "550.1",
                                "memory_mib": 81559}])


def _row(model, target, precision, latency, metric, status="ok", device="local", worker="w1", gate=0.9, built=True):
    failed = status == "failed"
    return {"model": model, "family": model.split()[0], "variant": "tiny", "weights_sha256": "b510" * 16,
            "random_weights": True, "target": target, "precision": precision, "device": device,
            "worker": None if failed else worker, "key": f"{model}-{target}-{precision}-{device}".replace(" ", "-"),
            "artifact": None if failed else "builds/ab12", "size_mib": None if failed else 1.5,
            "status": status, "error": "compile: ValueError: no kernel for op X" if failed else None,
            "latency_ms": latency, "items_per_s": None if latency is None else 1000 / latency * 4,
            "peak_rss_mib": None if failed else 210.0,
            "task_metric": None if metric is None else {"metric": "top1_agreement", "value": metric, "gate": gate,
                                                        "passed": metric >= gate},
            "checks": [], "bench": [], "hardware": None if failed else (HW1 if worker == "w1" else HW2),
            "stages": {"export": {"built": built, "seconds": 4.1, "peak_rss_mib": 800.0, "worker": worker,
                                  "attempts": 1}}}


def _report(rows=None) -> dict:
    rows = rows if rows is not None else [
        _row("alpha tiny", "rt-a", "fp32", 5.0, 0.99),
        _row("alpha tiny", "rt-a", "int8", 2.0, 0.95, built=False),
        _row("alpha tiny", "rt-b", "int8", 6.0, 0.94),  # slower and worse than both rows above: dominated
        _row("alpha tiny", "rt-b", "fp32", None, None, status="failed"),
        _row("alpha tiny", "rt-a", "fp32", 1.0, 0.85, status="below gate", device="gpu", worker="w2"),
        _row("beta small", "rt-a", "fp32", 10.0, 0.80),  # alpha rows are faster and better, but another model
        _row("beta small", "rt-b", "fp32", 12.0, 0.80),  # same metric, slower: dominated
        _row("beta small", "rt-b", "int8", 3.0, None),  # no task metric: not on any front
    ]
    return {"title": "edgefm matrix", "spec": "matrix.toml", "started": "2026-11-30T12:00:00+00:00",
            "finished": "2026-11-30T12:09:00+00:00", "edgefm_version": "0.1.0",
            "counts": {"tasks_run": 9, "tasks_reused": 1, "failed": 1, "retried": 1},
            "workers": {"w1": {"node": "host-1", "device_kinds": ["local"], "hardware": HW1},
                        "w2": {"node": "host-2", "device_kinds": ["local", "gpu"], "hardware": HW2}},
            "rows": rows, "errors": ["alpha tiny rt-b fp32: compile: ValueError: no kernel for op X"]}


def _dominated(row, rows) -> bool:
    """The definition, spelled out independently of the module."""
    m = lambda r: r["task_metric"]["value"]  # noqa: E731
    return any(o["model"] == row["model"] and o["latency_ms"] <= row["latency_ms"] and m(o) >= m(row)
               and (o["latency_ms"], m(o)) != (row["latency_ms"], m(row)) for o in rows)


def test_pareto_flags_per_model():
    rows = _report()["rows"]
    flags = pareto(rows)
    assert flags == [True, True, False, None, True, True, False, None]
    scored = [r for r, f in zip(rows, flags) if f is not None]
    assert [not _dominated(r, scored) for r in scored] == [f for f in flags if f is not None]
    # The dominated alpha row is slower and worse than another alpha row; beta's front ignores alpha's better rows.
    assert rows[2]["latency_ms"] > rows[1]["latency_ms"]
    assert rows[2]["task_metric"]["value"] < rows[1]["task_metric"]["value"]
    assert rows[1]["latency_ms"] < rows[5]["latency_ms"] and flags[5]


def _results_rows(page: str) -> list[str]:
    body = re.search(r'<table id="matrix-rows">.*?<tbody>(.*?)</tbody>', page, re.S).group(1)
    return re.findall(r"<tr .*?</tr>", body, re.S)


def test_markdown_and_html_hold_every_row():
    report = _report()
    md, page = markdown(report), html(report)
    md_rows = [line for line in md.splitlines() if line.startswith("| alpha") or line.startswith("| beta")]
    html_rows = _results_rows(page)
    assert len(md_rows) == len(html_rows) == len(report["rows"])
    for row, md_row, html_row in zip(report["rows"], md_rows, html_rows):
        for value in (row["model"], row["target"], row["precision"], row["device"], row["status"]):
            assert value in md_row and value in html_row
    pareto_cells = [line.split(" | ")[10] for line in md_rows]
    assert pareto_cells == ["yes", "yes", "no", "-", "yes", "yes", "no", "-"]
    assert "compile: ValueError: no kernel for op X" in md_rows[3] and "no kernel for op X" in html_rows[3]
    assert "reused" in md_rows[1] and "built" in md_rows[0]
    assert "top1_agreement 0.8500 (gate 0.9, below)" in md_rows[4]
    for line in summary_lines(HW1) + summary_lines(HW2):  # the workers' blocks, and each row's
        assert line in md and line.removeprefix("- ").replace("'", "&#x27;") in page
    assert "Test CPU Two" in html_rows[4] and "Test CPU One" in html_rows[0]
    workers = re.search(r'<table id="workers">.*?<tbody>(.*?)</tbody>', page, re.S).group(1)
    assert workers.count("<tr>") == 2
    assert "![" in md and "(latency.png)" in md and "(pareto-alpha-tiny.png)" in md


def test_untrusted_text_is_escaped(tmp_path):
    evil = _row("<script>alert(1)</script> $x$", "rt|a", "fp32", 2.0, 0.95, worker='w"1')
    evil["error"] = "<b>bold</b>"
    report = _report([evil])
    page = html(report)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<b>" not in page
    md_row = next(line for line in markdown(report).splitlines() if "alert" in line)
    assert "<script>" not in md_row and "rt\\|a" in md_row
    assert len(re.split(r"(?<!\\)\|", md_row)) == 14 + 2  # the pipe in the target did not add a column
    written = write_report(report, tmp_path)  # `$x$` in a plot label must not crash matplotlib
    assert written["pareto <script>alert(1)</script> $x$"].read_bytes().startswith(PNG)


def test_only_failed_rows_write_tables_and_no_plots(tmp_path):
    report = _report([_row("alpha tiny", "rt-b", "fp32", None, None, status="failed")])
    written = write_report(report, tmp_path)
    assert set(written) == {"markdown", "html", "json"}
    assert not list(tmp_path.glob("*.png"))
    assert len(_results_rows(written["html"].read_text())) == 1 and "<img" not in written["html"].read_text()


def test_write_report_files(tmp_path):
    report = _report()
    written = write_report(report, tmp_path)
    assert {"latency", "items_per_s", "peak_rss", "size", "task_metric", "pareto alpha tiny", "pareto beta small",
            "markdown", "html", "json"} == set(written)
    for kind, path in written.items():
        assert path.parent == tmp_path
        if path.suffix == ".png":
            data = path.read_bytes()
            assert data.startswith(PNG) and len(data) > 5000, kind
    assert json.loads(written["json"].read_text()) == report
    assert not list(tmp_path.glob(".*")), "temporary files left behind"
    for src in re.findall(r'<img src="([^"]+)"', written["html"].read_text()):
        assert (tmp_path / src).is_file()


def test_cli_rerenders_next_to_the_json(tmp_path):
    source = tmp_path / "report.json"
    source.write_text(json.dumps(_report()))
    done = subprocess.run([sys.executable, "-m", "edgefm.matrix.report", str(source)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "report.html").is_file() and (tmp_path / "latency.png").is_file()
    bad = subprocess.run([sys.executable, "-m", "edgefm.matrix.report", str(tmp_path / "missing.json")],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1


def _browser():
    """A headless Chromium through Debian's chromedriver (Selenium Manager downloads nothing). Missing pieces skip
    the test, except in CI, where they fail it, so CI cannot pass without the browser check."""
    chromium = shutil.which("chromium")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    missing = ("selenium is not installed" if webdriver is None else
               "no chromium on PATH (apt-get install chromium)" if not chromium else
               f"no {CHROMEDRIVER} (apt-get install chromium-driver)" if not os.path.exists(CHROMEDRIVER) else None)
    if missing:
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)(f"browser check: {missing}")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def test_html_report_renders_in_a_headless_browser(tmp_path):
    from selenium.webdriver.common.by import By

    report = _report()
    report["rows"].append(_row("<script>window.pwned=1</script>", "rt-a", "fp32", 4.0, 0.9))
    written = write_report(report, tmp_path)
    driver = _browser()
    try:
        driver.get(written["html"].as_uri())
        rows = driver.find_elements(By.CSS_SELECTOR, "#matrix-rows tbody tr")
        assert len(rows) == len(report["rows"])
        for row, tr in zip(report["rows"], rows):
            cells = [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            assert cells[:4] == [row["model"], row["target"], row["precision"], row["device"]]
        assert driver.execute_script("return document.scripts.length + (window.pwned || 0)") == 0
        images = driver.execute_script(
            "return [...document.images].map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
        assert sorted(src for src, _, _ in images) == sorted(p.name for p in written.values() if p.suffix == ".png")
        assert all(complete and width > 0 for _, complete, width in images), images
        assert len(driver.find_elements(By.CSS_SELECTOR, "#workers tbody tr")) == len(report["workers"])
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, min(height + 100, 8000))
        assert driver.get_screenshot_as_file(str(tmp_path / "screenshot.png"))  # under pytest's /tmp dir
    finally:
        driver.quit()
