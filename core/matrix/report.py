"""`edgefm matrix` output: report.json, report.md, one static report.html and PNG plots, from the report dict.

Everything in the report comes from spec files and artifact manifests, so it is untrusted: HTML escapes it, markdown
escapes what would break a pipe table or render as HTML, and plot labels escape matplotlib's `$` math markup.
"""
from __future__ import annotations

import html as _html
import json
import re
import sys
from functools import partial
from pathlib import Path

from edgefm.bench.hardware import summary_lines
from edgefm.contract.records import SHORT_METRIC
from edgefm.contract.staging import write_file_atomically

COLUMNS = ["model", "target", "precision", "device", "status", "latency ms", "items/s", "peak RSS MiB", "size MiB",
           "task metric", "Pareto", "built/reused", "worker", "hardware"]
# (plot kind, row field, axis label) of the per-row bar charts.
BARS = [("latency", "latency_ms", "latency ms (all components, smallest batch)"),
        ("items_per_s", "items_per_s", "items/s (largest batch)"),
        ("peak_rss", "peak_rss_mib", "peak RSS MiB"), ("size", "size_mib", "size MiB"),
        ("task_metric", None, "task metric value")]
STATUS_CLASS = {"ok": "ok", "below gate": "below", "failed": "failed"}
CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 6px;vertical-align:top}
th{background:#f0f0f0;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.ok td.status{color:#1a7f37}tr.below td.status{color:#9a6700}tr.failed td.status{color:#cf222e}
tr.failed{background:#fff5f5}details ul{margin:.3em 0;padding-left:1.2em}img{max-width:100%}
figure{display:inline-block;margin:0 1em 1em 0}"""


def _metric(row: dict) -> float | None:
    return row["task_metric"]["value"] if row.get("task_metric") else None


def _value(row: dict, field: str | None) -> float | None:
    return _metric(row) if field is None else row.get(field)


def pareto(rows: list[dict]) -> list[bool | None]:
    """Per row: on its model's front of (latency lower, task metric higher) — not dominated by another row of the
    same model — or None when the row lacks either figure."""
    def scored(row):
        return row["status"] != "failed" and row.get("latency_ms") is not None and _metric(row) is not None

    def dominates(a, b):
        return (a["model"] == b["model"] and a["latency_ms"] <= b["latency_ms"] and _metric(a) >= _metric(b)
                and (a["latency_ms"] < b["latency_ms"] or _metric(a) > _metric(b)))

    candidates = [r for r in rows if scored(r)]
    return [not any(dominates(other, row) for other in candidates) if scored(row) else None for row in rows]


def _hardware(report: dict, row: dict) -> dict | None:
    worker = report.get("workers", {}).get(row.get("worker")) or {}
    return row.get("hardware") or worker.get("hardware")


def _hardware_short(block: dict | None) -> str:
    if not block:
        return "-"
    isa = " ".join(name for name, present in block.get("isa", {}).items() if present) or "no wide ISA"
    gpus = ", ".join(g["name"] for g in block.get("gpus") or [])
    return f"{block['cpu']}, {block['cores_available']} cores, {isa}" + (f", GPU {gpus}" if gpus else "")


def _hardware_lines(block: dict | None) -> list[str]:
    return [line.removeprefix("- ") for line in summary_lines(block)] if block else []


def _num(value, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _task_metric(metric: dict | None) -> str:
    if not metric:
        return "-"
    gate = "no gate" if metric.get("gate") is None else f"gate {metric['gate']:g}"
    return (f"{SHORT_METRIC.get(metric['metric'], metric['metric'])} {metric['value']:.4f} "
            f"({gate}, {'pass' if metric['passed'] else 'below'})")


def table(report: dict) -> list[dict[str, str]]:
    """The results table as plain text cells, one dict per row keyed by COLUMNS (plus `status_class`)."""
    cells = []
    for row, front in zip(report["rows"], pareto(report["rows"])):
        built = any(stage.get("built") for stage in (row.get("stages") or {}).values())
        status = row["status"] + (f": {row['error']}" if row.get("error") else "")
        cells.append({"model": row["model"], "target": row["target"], "precision": row["precision"],
                      "device": row["device"], "status": status, "latency ms": _num(row.get("latency_ms"), 2),
                      "items/s": _num(row.get("items_per_s"), 1), "peak RSS MiB": _num(row.get("peak_rss_mib"), 0),
                      "size MiB": _num(row.get("size_mib"), 2), "task metric": _task_metric(row.get("task_metric")),
                      "Pareto": "-" if front is None else ("yes" if front else "no"),
                      "built/reused": "built" if built else "reused", "worker": row.get("worker") or "-",
                      "hardware": _hardware_short(_hardware(report, row)),
                      "status_class": STATUS_CLASS.get(row["status"], "other")})
    return cells


def _facts(report: dict) -> list[str]:
    counts = ", ".join(f"{name.replace('_', ' ')} {count}" for name, count in report.get("counts", {}).items())
    return [f"spec: {report.get('spec', '-')}", f"started: {report.get('started', '-')}",
            f"finished: {report.get('finished', '-')}", f"edgefm: {report.get('edgefm_version', '-')}",
            f"rows: {len(report['rows'])}", f"counts: {counts or '-'}"]


def _label(row: dict) -> str:
    return f"{row['model']} {row['target']}/{row['precision']} @ {row['device']}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "model"


def plots(report: dict) -> list[tuple[str, str, str, partial]]:
    """(kind, file name, caption, draw(path)) of each plot the report has data for; failed rows are left out."""
    measured = [r for r in report["rows"] if r["status"] != "failed"]
    found = []
    for kind, field, axis in BARS:
        rows = [r for r in measured if _value(r, field) is not None]
        if rows:
            found.append((kind, f"{kind}.png", axis, partial(_bars, rows, field, axis)))
    models = dict.fromkeys(r["model"] for r in measured)
    names = set()
    for model in models:
        rows = [r for r in measured if r["model"] == model and r.get("latency_ms") is not None
                and _metric(r) is not None]
        name = f"pareto-{_slug(model)}"
        while name + ".png" in names:  # two model names with one slug
            name += "-"
        names.add(name + ".png")
        if rows:
            found.append((f"pareto {model}", name + ".png", f"{model}: latency vs task metric (Pareto front)",
                          partial(_pareto_plot, model, rows)))
    return found


def _text(text: str) -> str:
    return text.replace("$", r"\$")  # a `$` pair would turn untrusted text into math markup (or a parse error)


def _bars(rows: list[dict], field: str | None, axis: str, path: Path) -> None:
    from matplotlib.figure import Figure  # Figure draws without pyplot's global state or a display

    fig = Figure(figsize=(8, 1.2 + 0.35 * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    values = [_value(r, field) for r in rows]
    bars = ax.barh(range(len(rows)), values, color="#4c72b0")
    ax.bar_label(bars, labels=[f"{v:,.4g}" for v in values], padding=3, fontsize=8)
    if field is None:  # the gates, as ticks on the bars
        gates = [(i, r["task_metric"]["gate"]) for i, r in enumerate(rows) if r["task_metric"].get("gate") is not None]
        if gates:
            ax.scatter([g for _, g in gates], [i for i, _ in gates], marker="|", s=300, color="#cf222e", label="gate")
            ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(range(len(rows)), [_text(_label(r)) for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(axis)
    ax.margins(x=0.15)
    fig.savefig(path, format="png", dpi=100)


def _pareto_plot(model: str, rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.add_subplot()
    flags = pareto(rows)
    front = sorted((r for r, on in zip(rows, flags) if on), key=lambda r: r["latency_ms"])
    rest = [r for r, on in zip(rows, flags) if not on]
    ax.plot([r["latency_ms"] for r in front], [_metric(r) for r in front], "-o", color="#cf222e", label="Pareto front")
    if rest:
        ax.scatter([r["latency_ms"] for r in rest], [_metric(r) for r in rest], color="#8c8c8c", label="dominated")
    several = len({r["task_metric"]["metric"] for r in rows}) > 1  # then each point says which metric it shows
    stacked: dict = {}  # points at one metric value are labelled one above the other, not on top of each other
    for r in sorted(rows, key=lambda r: r["latency_ms"]):
        level = stacked.setdefault(round(_metric(r), 6), 0)
        stacked[round(_metric(r), 6)] += 1
        metric = SHORT_METRIC.get(r["task_metric"]["metric"], r["task_metric"]["metric"])
        ax.annotate(_text(f"{r['target']}/{r['precision']}/{r['device']}" + (f" ({metric})" if several else "")),
                    (r["latency_ms"], _metric(r)), textcoords="offset points", xytext=(4, 4 + 11 * level), fontsize=8)
    ax.set_xlabel("latency ms (lower is better)")
    ax.set_ylabel("task metric vs the fp32 export (higher is better)")
    ax.set_title(_text(model))
    ax.legend(fontsize=8)
    ax.margins(0.15)
    fig.savefig(path, format="png", dpi=100)


def _md(text) -> str:
    """A markdown table cell: no pipes or newlines to break the table, no raw HTML."""
    return (str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
            .replace("<", "&lt;").replace(">", "&gt;"))


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(_md(cell) for cell in row) + " |" for row in rows]


def markdown(report: dict) -> str:
    lines = [f"# {_md(report.get('title', 'edgefm matrix'))}", ""] + [f"- {_md(fact)}" for fact in _facts(report)]
    lines += ["", "## Results", ""] + _md_table(COLUMNS, [[cells[c] for c in COLUMNS] for cells in table(report)])
    found = plots(report)
    if found:
        lines += ["", "## Plots", ""] + [f"![{_md(caption)}]({name})" for _, name, caption, _ in found]
    workers = report.get("workers", {})
    lines += ["", "## Workers", ""] + _md_table(["worker", "node", "device kinds", "hardware"], [
        [wid, w.get("node", "-"), ", ".join(w.get("device_kinds", [])), _hardware_short(w.get("hardware"))]
        for wid, w in workers.items()])
    for wid, w in workers.items():
        lines += ["", f"### {_md(wid)}", ""] + [f"- {_md(line)}" for line in _hardware_lines(w.get("hardware"))]
    lines += ["", "## Errors", ""] + ([f"- {_md(e)}" for e in report.get("errors", [])] or ["none"])
    return "\n".join(lines) + "\n"


def _details(summary: str, lines: list[str]) -> str:
    if not lines:
        return _html.escape(summary)
    items = "".join(f"<li>{_html.escape(line)}</li>" for line in lines)
    return f"<details><summary>{_html.escape(summary)}</summary><ul>{items}</ul></details>"


def html(report: dict) -> str:
    esc = _html.escape
    title = esc(report.get("title", "edgefm matrix"))
    css_class = {"latency ms": "num", "items/s": "num", "peak RSS MiB": "num", "size MiB": "num", "status": "status"}
    body = []
    for row, cells in zip(report["rows"], table(report)):
        tds = "".join(f'<td class="{css_class.get(c, "")}">{esc(cells[c])}</td>' for c in COLUMNS[:-1])
        hw = _hardware(report, row)
        body.append(f'<tr class="{cells["status_class"]}">{tds}'
                    f'<td class="hardware">{_details(cells["hardware"], _hardware_lines(hw))}</td></tr>')
    workers = "".join(
        f"<tr><td>{esc(wid)}</td><td>{esc(w.get('node', '-'))}</td><td>{esc(', '.join(w.get('device_kinds', [])))}"
        f"</td><td><ul>{''.join(f'<li>{esc(line)}</li>' for line in _hardware_lines(w.get('hardware')))}</ul></td></tr>"
        for wid, w in report.get("workers", {}).items())
    figures = "".join(f'<figure><img src="{esc(name)}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption>'
                      f"</figure>" for _, name, caption, _ in plots(report))
    errors = "".join(f"<li>{esc(e)}</li>" for e in report.get("errors", []))
    errors = f'<ul id="errors">{errors}</ul>' if errors else '<p id="errors">none</p>'
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{CSS}</style></head>\n<body><h1>{title}</h1>\n"
            f"<ul id=\"facts\">{''.join(f'<li>{esc(fact)}</li>' for fact in _facts(report))}</ul>\n"
            f'<h2>Results</h2>\n<table id="matrix-rows"><thead><tr>{"".join(f"<th>{c}</th>" for c in COLUMNS)}'
            f"</tr></thead>\n<tbody>{''.join(body)}</tbody></table>\n"
            + (f"<h2>Plots</h2>\n<div id=\"plots\">{figures}</div>\n" if figures else "")
            + f'<h2>Workers</h2>\n<table id="workers"><thead><tr><th>worker</th><th>node</th><th>device kinds</th>'
            f"<th>hardware</th></tr></thead>\n<tbody>{workers}</tbody></table>\n"
            f"<h2>Errors</h2>\n{errors}\n"
            f"</body></html>\n")


def write_report(report: dict, out_dir: Path) -> dict[str, Path]:
    """Write the plots, report.md, report.html and, last, report.json (so a report.json means a finished render)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {kind: write_file_atomically(out_dir / name, draw) for kind, name, _, draw in plots(report)}
    for kind, name, text in [("markdown", "report.md", markdown(report)), ("html", "report.html", html(report)),
                             ("json", "report.json", json.dumps(report, indent=2) + "\n")]:
        written[kind] = write_file_atomically(out_dir / name, partial(Path.write_text, data=text, encoding="utf-8"))
    return written


if __name__ == "__main__":
    try:
        source = Path(sys.argv[1])
        written = write_report(json.loads(source.read_text()), source.parent)
    except (IndexError, OSError, ValueError, KeyError) as error:
        sys.exit(f"usage: python -m edgefm.matrix.report REPORT.json ({type(error).__name__}: {error})")
    print("\n".join(str(path) for path in written.values()))
