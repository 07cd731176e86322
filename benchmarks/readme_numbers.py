"""Render the README's measured numbers from the results files, so two sections cannot disagree.

    python benchmarks/readme_numbers.py            # rewrite the marked blocks of README.md and export/README.md
    python benchmarks/readme_numbers.py --check    # exit 1 naming every block that differs from its results file

A block is ``<!-- results:NAME ARGS -->...<!-- /results -->`` (inline in a sentence, or on lines of its own
for a table); everything between the markers is replaced by what the renderer ``NAME`` makes of the results
files in ``recipes/results/`` and ``benchmarks/results/``. Numbers are never typed between the markers:
``tests/test_readme.py`` runs ``--check``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from akd_edge.config import measured_where, recipe_results

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "README.md", ROOT / "export" / "README.md")
BLOCK = re.compile(r"<!-- results:(?P<spec>[^>]*?) -->(?P<body>.*?)<!-- /results -->", re.DOTALL)


def _recipe(name: str) -> dict:
    result = recipe_results(name)
    if result is None:
        raise KeyError(f"recipes/results/{name}.json does not exist")
    return result


def recipe_test(name: str) -> str:
    """``83.9% clean / 71.1% PGD-20``: a recipe's test accuracy, clean and under its attack."""
    test = _recipe(name)["test"]
    return f"{test['clean_acc']:.1%} clean / {test['robust_acc']:.1%} PGD-{test['attack']['steps']}"


def recipe_time(name: str) -> str:
    """``16.5 min (x86_64 CPU, 2 torch threads)``: a recipe's wall time and where it was measured."""
    result = _recipe(name)
    return f"{result['wall_time_s'] / 60:.1f} min ({measured_where(result)})"


def demo(name: str = "fmnist-demo") -> str:
    """The first screen's sentence on what ``make demo`` takes and reaches, with the machine and its load."""
    result = _recipe(name)
    test = result["test"]
    load = (result.get("load_average") or {}).get("start")
    loaded = f" (load average {load[0]:.1f} at the start)" if load else ""
    return (
        f"Measured (`recipes/results/{name}.json`): {recipe_time(name)} of wall time{loaded} for "
        f"{result['epochs']} epochs, reaching {recipe_test(name)} on {test['n']:,} test images. "
        f"{result.get('note', '')}".rstrip()
    )


def _bench_results(name: str) -> dict:
    path = ROOT / "benchmarks" / "results" / f"{name}.json"
    if not path.is_file():
        raise KeyError(f"benchmarks/results/{name}.json does not exist")
    return json.loads(path.read_text())


def _seconds(value: float) -> str:
    return f"{value:,.0f} s" if value < 120 else f"{value / 60:,.1f} min"


def _machine(machine: dict) -> str:
    flags = " ".join(machine.get("cpu_flags") or []) or "no AVX2"
    return f"{machine['cpu']} ({flags}), {machine.get('cores') or machine.get('cpus')} cores"


def user_path(name: str = "user_path") -> str:
    """The README's path timed step by step (``benchmarks/user_path.py``), with the load average of each step."""
    result = _bench_results(name)
    lines = ["| step | wall time | load average (1 min) at its start |", "|---|---:|---:|"]
    for key, step in result["steps"].items():
        lines.append(
            f"| {result['steps_described'][key]} | {_seconds(step['seconds'])} | {step['load_average'][0][0]:.1f} |"
        )
        for stage in step.get("stages", []):
            lines.append(f"| &nbsp;&nbsp;stage: {stage['title']} | {_seconds(stage['seconds'])} | |")
    settings, test = result["settings"], result["steps"]["demo"]["test"]
    lines += [
        "",
        f"{_machine(result['machine'])}, torch {result['machine']['torch']}, onnxruntime "
        f"{result['machine']['onnxruntime']}; {result['created']}. Verify: {settings['n']:,} test images, Square "
        f"{settings['square_queries']:,} queries, transfer AutoAttack {settings['transfer']}. The demo student: "
        f"{test['clean_acc']:.1%} clean / {test['robust_acc']:.1%} PGD-{test['attack']['steps']} on {test['n']:,} test images.",
    ]
    return "\n".join(lines)


def int8_speed(name: str = "export_latency") -> str:
    """fp32 against int8 per model, timed in one run (``benchmarks/export_latency.py``), with the machine and load."""
    result = _bench_results(name)
    rows = {(r["arch"], r["model"]): r for r in result["rows"]}
    lines = [
        "| model | int8 layers in float | fp32 img/s (batch 256) | int8 img/s | int8 / fp32 | fp32 p50 ms (batch 1) | int8 p50 ms | agreement |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for ratio in result["ratios"]:
        fp32 = rows[(ratio["arch"], "model.onnx")]
        int8 = rows[(ratio["arch"], f"model.int8.onnx (float layers: {ratio['float_layers']})")]
        agreement = f"{ratio['int8_agreement']:.2%}" if ratio["int8_agreement"] is not None else "n/a (untrained)"
        lines.append(
            f"| `{ratio['arch']}` ({fp32['params'] / 1000:,.0f}k params) | {ratio['float_layers']} | {fp32['img_s']:,.0f} | "
            f"{int8['img_s']:,.0f} | **{ratio['throughput_ratio']:.2f}x** | {fp32['p50_ms']:.3f} | {int8['p50_ms']:.3f} | {agreement} |"
        )
    machine, load = result["machine"], result["machine"]["load_average"]
    untrained = any(r["int8_agreement"] is None for r in result["ratios"])
    lines += [
        "",
        f"{_machine(machine)}, onnxruntime {result['onnxruntime']} ({result['threads'] or 'default'} threads), "
        f"{result['created']}; load average {load[0][0]:.1f} at the start, {load[1][0]:.1f} at the end."
        + (" Untrained models are timed on random images: speed does not depend on the weights." if untrained else ""),
    ]
    return "\n".join(lines)


def recipes_table() -> str:
    """The table of every shipped recipe's results (``benchmarks/results_table.py``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from results_table import render

    return render()


def study_table(name: str) -> str:
    """A study's table, as ``benchmarks/method_study.py report NAME`` prints it (``benchmarks/results/NAME.json``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from method_study import RESULTS_DIR, load_study, markdown, read_results, summarize

    results = read_results(RESULTS_DIR / f"{name}.json")
    variants = load_study(results["study"]).variants
    rows, notes = summarize(results, [v.name for v in variants])
    shown = {row["variant"] for row in rows}
    described = "".join(f"- `{v.name}`: {v.description}\n" for v in variants if v.name in shown and v.description)
    return (markdown(results, rows, notes) + "\n" + described).rstrip("\n")


def label_curve(name: str) -> str:
    """Robust accuracy against the number of labels (``benchmarks/fewlabel_curve.py``) from ``NAME.json``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fewlabel_curve import table
    from method_study import RESULTS_DIR

    return table(RESULTS_DIR / f"{name}.json")[0].rstrip("\n")


RENDERERS: dict[str, Callable[..., str]] = {
    "recipe-test": recipe_test,
    "recipe-time": recipe_time,
    "demo": demo,
    "user-path": user_path,
    "int8-speed": int8_speed,
    "recipes-table": recipes_table,
    "study-table": study_table,
    "label-curve": label_curve,
}


def render_block(spec: str) -> str:
    """The text of one block: ``spec`` is the renderer's name and its arguments, separated by spaces."""
    name, *args = spec.split()
    if name not in RENDERERS:
        raise KeyError(f"unknown results block {name!r}; known: {', '.join(RENDERERS)}")
    return RENDERERS[name](*args)


def render(text: str) -> str:
    """``text`` with every block re-rendered (a block on lines of its own stays on lines of its own)."""

    def replace(match: re.Match[str]) -> str:
        body = render_block(match["spec"])
        if match["body"].startswith("\n"):
            body = f"\n{body}\n"
        return f"<!-- results:{match['spec']} -->{body}<!-- /results -->"

    return BLOCK.sub(replace, text)


def stale_blocks(text: str) -> list[str]:
    """The specs of the blocks whose text differs from what their results files give."""
    fresh = {m["spec"]: m["body"] for m in BLOCK.finditer(render(text))}
    return [m["spec"] for m in BLOCK.finditer(text) if m["body"] != fresh[m["spec"]]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Exit 1 if a block differs from its results file.")
    parser.add_argument("files", nargs="*", type=Path, default=list(DOCS))
    args = parser.parse_args(argv)
    stale = []
    for path in args.files:
        text = path.read_text()
        if args.check:
            stale += [f"{path}: <!-- results:{spec} -->" for spec in stale_blocks(text)]
        elif (new := render(text)) != text:
            path.write_text(new)
            print(f"updated {path}")
    for line in stale:
        print(f"out of date: {line} (run python benchmarks/readme_numbers.py)")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
