"""The report as ``index.html`` (self-contained: styles and plots inline, nothing fetched) and ``report.md``.

Every value that comes from a file is escaped for the format it goes into: HTML entities in the page,
Markdown (and the HTML that Markdown viewers render) in the ``.md``. A Content-Security-Policy forbids the
page any network access, so even a value that slipped through could not load anything.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

from akd_edge.core.interval import format_interval
from akd_edge.export.card import format_pct, format_size
from akd_edge.report.collect import Collection, ModelRow

HEADER = [
    "model",
    "role",
    "params",
    "MACs",
    "file size",
    "p50 ms (batch 1)",
    "clean",
    "transfer",
    "Square",
    "robust (worst case)",
    "attack settings",
    "n",
    "Pareto front",
    "status",
]
HEADER_ACCURACIES = ("clean", "transfer", "square", "robust")
_NUMERIC = {2, 3, 4, 5, 6, 7, 8, 9, 11}
"""Columns of :data:`HEADER` that hold numbers (right-aligned)."""
MAX_RECIPE_CHARS = 20_000
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.5em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; white-space: nowrap; }
tr.front td:first-child { font-weight: bold; }
.ci { color: #777; font-size: 0.85em; display: block; }
.warn { color: #a00; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
img { max-width: 100%; border: 1px solid #ddd; }
details { margin: 0.5em 0; }
summary { cursor: pointer; font-weight: bold; }
"""


def _num(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def _role(model: ModelRow) -> str:
    role = model.role or "n/a"
    return f"pruned {role}" if model.pruned else role


def _attack_text(model: ModelRow) -> str:
    """The threat model and the attacks, as one phrase: ``linf eps=0.1; Square 1000 queries; ...``."""
    attack = model.attack
    if not attack:
        return "n/a"
    parts = [f"{attack.get('norm') or '?'} eps={attack.get('eps') if attack.get('eps') is not None else '?'}"]
    square, transfer = attack.get("square", {}), attack.get("transfer", {})
    if square.get("n_queries") is not None:
        parts.append(f"Square {square['n_queries']} queries, p_init {square.get('p_init')}")
    elif square.get("skipped"):
        parts.append(f"Square skipped ({square['skipped']})")
    if transfer.get("version"):
        attacks = ", ".join(transfer.get("attacks") or [])
        parts.append(f"transfer AutoAttack {transfer['version']}" + (f" ({attacks})" if attacks else ""))
    elif transfer.get("skipped"):
        parts.append(f"transfer skipped ({transfer['skipped']})")
    if attack.get("seed") is not None:
        parts.append(f"seed {attack['seed']}")
    return "; ".join(parts)


def _front(model: ModelRow) -> str:
    on = [name for name, flag in (("size", model.front_bytes), ("latency", model.front_p50_ms)) if flag]
    return ", ".join(on) or "-"


def table_rows(collection: Collection) -> list[list[tuple[str, str]]]:
    """Each model as cells ``(value, 95% interval or "")``, in :data:`HEADER` order, as plain text."""
    rows = []
    for m in collection.models:
        accuracies = [(format_pct(m.accuracy.get(k)), format_interval(m.ci95.get(k))) for k in HEADER_ACCURACIES]
        if not m.file:  # a torch run: its validation figures, labelled as such
            val = m.torch_val
            accuracies = [
                (f"{format_pct(val.get('clean_acc'))} (torch)", ""),
                ("n/a", ""),
                ("n/a", ""),
                (f"{format_pct(val.get('robust_acc'))} (torch)", ""),
            ]
        rows.append(
            [
                (m.label, ""),
                (_role(m), ""),
                (_num(m.params), ""),
                (_num(m.macs), ""),
                (format_size(m.bytes), ""),
                ("n/a" if m.p50_ms is None else f"{m.p50_ms:.3f}", ""),
                *[(value, "" if ci == "-" else ci) for value, ci in accuracies],
                (_attack_text(m) if m.file else "n/a", ""),
                (_num(m.n), ""),
                (_front(m), ""),
                (m.status, ""),
            ]
        )
    return rows


def recipe_text(recipe: dict[str, Any] | None) -> str:
    """A recipe as TOML (JSON when TOML cannot hold it), cut at :data:`MAX_RECIPE_CHARS`."""
    if recipe is None:
        return ""
    try:
        import tomli_w

        body = tomli_w.dumps(recipe)
    except (TypeError, ValueError):
        body = json.dumps(recipe, indent=2, default=str)
    return body if len(body) <= MAX_RECIPE_CHARS else body[:MAX_RECIPE_CHARS] + "\n… (cut)"


def provenance_items(m: ModelRow) -> list[tuple[str, str]]:
    """What a model is and where it came from, as (label, plain text) pairs."""
    items = [("folder", m.folder)]
    if m.file:
        items.append(("file", m.file))
    items += [("architecture", m.arch or "n/a"), ("source run", m.run or "n/a")]
    if m.sha256:
        items.append(("sha256 now", m.sha256))
    items += [(name, value or "n/a") for name, value in m.hashes.items()]
    val = m.torch_val
    if val:
        items.append(
            (
                "torch validation (training time)",
                f"clean {format_pct(val.get('clean_acc'))}, robust {format_pct(val.get('robust_acc'))}",
            )
        )
    info = m.verify_info
    if info.get("created"):
        machine = f"{info.get('cpus') or '?'} CPUs, {info.get('platform') or '?'}"
        items.append(("verified", f"{info['created']} on {info.get('data') or '?'} test images; {machine}"))
    items.append(("recipe", m.recipe_from or "not given (pass the run directory to `akd-edge report`)"))
    return items


def teacher_rows(m: ModelRow) -> list[list[str]]:
    return [
        [
            t.get("source") or "n/a",
            t.get("kind") or "n/a",
            t.get("arch") or "n/a",
            t.get("sha256") or "n/a",
            "n/a" if t.get("weight") is None else f"{t['weight']:.3f}",
            format_pct(t.get("clean_acc")),
            format_pct(t.get("robust_acc")),
        ]
        for t in m.teachers
    ]


TEACHER_HEADER = ["source", "kind", "architecture", "sha256", "weight", "clean (recorded)", "robust (recorded)"]
INTRO = (
    "Robust accuracy is the per-sample worst case over clean, transferred (AutoAttack on the torch model) and "
    "Square (query-only, run on the onnxruntime session) examples, measured by akd-edge verify on the file "
    "itself; it counts only while the file's SHA-256 matches the one verify recorded. Each accuracy is followed "
    "by its 95% Wilson interval. MACs are those of the convolution and linear layers of the ONNX graph, per "
    "image. Latency is the p50 at batch 1 under onnxruntime on the machine that ran verify: compare latencies "
    "only between models verified on the same machine."
)


STAGE_HEADER = ["stage", "this run", "wall time"]


def stage_rows(stages: list[dict[str, Any]]) -> list[list[str]]:
    """The pipeline's stages as rows of :data:`STAGE_HEADER`, then their total."""
    rows = []
    for stage in stages:
        done = "ran" if stage["ran"] else "skipped"
        when_run = stage.get("seconds_when_run")
        took = f"{stage['seconds']:,.1f} s" + (f" ({when_run:,.1f} s when it ran)" if when_run else "")
        rows.append([stage["title"], done, took])
    total = sum(stage["seconds"] for stage in stages)
    return [*rows, ["total", "", f"{total:,.1f} s"]]


STAGE_INTRO = (
    "Wall time of each stage of the `akd-edge run` that wrote this report, on the machine it ran on (the "
    "report's own stage is not counted: it was still running)."
)


# -- HTML -----------------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["<table>", "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>"]
    lines += ["<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows]
    return [*lines, "</table>"]


def _html_models(collection: Collection) -> list[str]:
    lines = ["<table>", "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in HEADER) + "</tr>"]
    for model, row in zip(collection.models, table_rows(collection), strict=True):
        front = model.front_bytes or model.front_p50_ms
        cells = []
        for index, (value, ci) in enumerate(row):
            cls = ' class="num"' if index in _NUMERIC else ""
            interval = f'<span class="ci">{_e(ci)}</span>' if ci else ""
            warn = index == len(row) - 1 and model.file and not model.verified
            body = f'<span class="warn">{_e(value)}</span>' if warn else _e(value)
            cells.append(f"<td{cls}>{body}{interval}</td>")
        row_class = ' class="front"' if front else ""
        lines.append(f"<tr{row_class}>" + "".join(cells) + "</tr>")
    return [*lines, "</table>"]


def _html_plots(plots: dict[str, Any], folder: Path) -> list[str]:
    lines = []
    if "pareto" in plots:
        lines += [
            "<h2>Pareto front</h2>",
            "<p>Verified robust accuracy against file size and against p50 latency. A model is on the front "
            "(ringed, joined by the dashed line) when no other model is both smaller (faster) and more robust. "
            "Circle: student; triangle: pruned student; star: teacher. Blue: fp32; orange: int8.</p>",
            f'<img alt="Pareto front" src="{_png(folder / plots["pareto"])}">',
        ]
    if "eps_curve" in plots:
        lines += [
            "<h2>Robust accuracy against epsilon (torch, from akd-edge eval)</h2>",
            f'<img alt="robust accuracy against epsilon" src="{_png(folder / plots["eps_curve"])}">',
        ]
    if plots.get("reliability"):
        lines.append("<h2>Reliability diagrams (torch, from akd-edge eval)</h2>")
        for label, name in plots["reliability"].items():
            lines += [f"<h3>{_e(label)}</h3>", f'<img alt="reliability diagram" src="{_png(folder / name)}">']
    if plots.get("note"):
        lines.append(f'<p class="warn">{_e(plots["note"])}</p>')
    return lines


def _html_provenance(collection: Collection) -> list[str]:
    lines = ["<h2>Provenance</h2>"]
    for m in collection.models:
        lines.append(f"<details><summary>{_e(m.label)}</summary><ul>")
        lines += [f"<li>{_e(label)}: <code>{_e(value)}</code></li>" for label, value in provenance_items(m)]
        lines.append("</ul>")
        if m.teachers:
            lines += ["<p>Teachers (accuracy as recorded with each, not re-measured):</p>"]
            lines += _html_table(TEACHER_HEADER, teacher_rows(m))
        if m.recipe is not None:
            lines.append(f"<pre>{_e(recipe_text(m.recipe))}</pre>")
        lines.append("</details>")
    return lines


def render_html(collection: Collection, plots: dict[str, Any], folder: Path, meta: dict[str, Any]) -> str:
    """The whole page; PNGs named in ``plots`` (files in ``folder``) are inlined as data URIs."""
    lines = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(meta['title'])}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{_e(meta['title'])}</h1>",
        f"<p>Written {_e(meta['created'])} by akd-edge {_e(meta['version'])} from {len(collection.sources)} "
        "folder(s).</p>",
        f"<p>{_e(INTRO)}</p>",
        "<h2>Models</h2>",
        *_html_models(collection),
    ]
    lines += [f'<p class="warn">{_e(note)}</p>' for note in collection.notes]
    lines += _html_plots(plots, folder)
    if meta.get("stages"):
        lines += ["<h2>Pipeline stages</h2>", f"<p>{_e(STAGE_INTRO)}</p>"]
        lines += _html_table(STAGE_HEADER, stage_rows(meta["stages"]))
    lines += _html_provenance(collection)
    lines += ["<h2>Sources</h2>", "<ul>"]
    lines += [f"<li>{_e(s['kind'])}: <code>{_e(s['path'])}</code></li>" for s in collection.sources]
    lines += ["</ul>", "</body></html>", ""]
    return "\n".join(lines)


# -- Markdown ----------------------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]|~])")
"""Characters that would start Markdown markup in a cell (``[`` and ``]`` make links and images)."""


def md(value: Any) -> str:
    """Plain text for a Markdown table cell: HTML and Markdown characters escaped, one line."""
    text = html.escape(" ".join(str(value).split()), quote=False)
    return _MD_SPECIAL.sub(r"\\\1", text)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(md(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return [*lines, *("| " + " | ".join(md(c) for c in row) + " |" for row in rows), ""]


def render_markdown(collection: Collection, plots: dict[str, Any], meta: dict[str, Any]) -> str:
    """``report.md``: the same content, with the PNGs beside it referenced by name."""
    rows = [[f"{v} {ci}".strip() for v, ci in row] for row in table_rows(collection)]
    lines = [
        f"# {md(meta['title'])}",
        "",
        f"Written {md(meta['created'])} by akd-edge {md(meta['version'])} from {len(collection.sources)} folder(s).",
        "",
        INTRO,  # akd-edge's own words: no Markdown in them to escape
        "",
        "## Models",
        "",
        *_md_table(HEADER, rows),
    ]
    lines += [f"- **{md(note)}**" for note in collection.notes]
    if "pareto" in plots:
        lines += ["## Pareto front", "", f"![Pareto front]({plots['pareto']})", ""]
        for key, what in (("front_bytes", "size"), ("front_p50_ms", "latency")):
            members = [md(m.label) for m in collection.models if getattr(m, key)]
            lines.append(f"- Front against {what}: {', '.join(members) or 'none'}")
        lines.append("")
    if "eps_curve" in plots:
        lines += ["## Robust accuracy against epsilon", "", f"![eps curve]({plots['eps_curve']})", ""]
    if plots.get("reliability"):
        lines += ["## Reliability diagrams", ""]
        lines += [f"![reliability {md(label)}]({name})\n" for label, name in plots["reliability"].items()]
    if plots.get("note"):
        lines += [f"- {md(plots['note'])}", ""]
    if meta.get("stages"):
        lines += ["## Pipeline stages", "", STAGE_INTRO, "", *_md_table(STAGE_HEADER, stage_rows(meta["stages"]))]
    lines += ["## Provenance", ""]
    for m in collection.models:
        lines += [f"### {md(m.label)}", ""]
        lines += [f"- {md(label)}: {md(value)}" for label, value in provenance_items(m)]
        lines.append("")
        if m.teachers:
            lines += _md_table(TEACHER_HEADER, teacher_rows(m))
        if m.recipe is not None:
            body = recipe_text(m.recipe).replace("```", "'''")
            lines += ["<details><summary>recipe</summary>", "", "```toml", body, "```", "", "</details>", ""]
    return "\n".join(lines)
