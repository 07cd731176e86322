"""Render the README's measured numbers from the results files, so two sections cannot disagree.

    python benchmarks/readme_numbers.py            # rewrite the marked blocks of README.md and export/README.md
    python benchmarks/readme_numbers.py --check    # exit 1 naming every block that differs from its results file

A block is ``<!-- results:NAME ARGS -->...<!-- /results -->`` (inline in a sentence, or on lines of its own
for a table); everything between the markers is replaced by what the renderer ``NAME`` makes of the results
files in ``recipes/results/`` and ``benchmarks/results/`` (JSON, or the markdown and text a benchmark printed
and was kept). Numbers are never typed between the markers: ``tests/test_readme.py`` runs ``--check``. The
kinds are the keys of :data:`RENDERERS`; a renderer whose results file, key or row is missing raises, naming
the block, rather than printing ``None``. A measurement no results file backs is not quoted in the READMEs.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from akd_edge.config import measured_where, recipe_results

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # the sibling scripts whose formatting the renderers reuse
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
    """``Intel(R) Xeon(R) Processor (avx2 ...), 2 cores``: a results file's ``machine`` (cores where recorded)."""
    flags = " ".join(machine.get("cpu_flags") or []) or "no AVX2"
    cores = machine.get("cores") or machine.get("cpus")
    return f"{machine['cpu']} ({flags})" + (f", {cores} cores" if cores else "")


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
        f"{test['clean_acc']:.1%} clean / {test['robust_acc']:.1%} PGD-{test['attack']['steps']} on {test['n']:,} test images."
        + "".join(
            f" Not timed this time: {result['steps_described'][k]}."
            for k in result["steps_described"]
            if k not in result["steps"]
        ),
    ]
    return "\n".join(lines)


VERIFY_VARIANTS = {
    "before": "before: torch's and onnxruntime's thread pools in one process",
    "one process": "now, `--threads 1`: one process of one thread",
    "workers": "now, the default: a worker process of one thread per CPU",
}


def verify_speed(name: str = "verify_speed") -> str:
    """``akd-edge verify`` before and after, side by side in one run (``benchmarks/verify_speed.py``)."""
    result = _bench_results(name)
    runs, settings = result["runs"], result["settings"]
    before = statistics.median(r["seconds"] for r in runs["before"]) if runs.get("before") else None
    lines = [
        "| verify | runs | median wall time | speed vs before | load average (1 min) at start / end |",
        "|---|---:|---:|---:|---:|",
    ]
    for variant, found in runs.items():
        if not found:
            continue
        median = statistics.median(r["seconds"] for r in found)
        ratio = f"{before / median:.2f}x" if before and variant != "before" else ""
        start, end = (statistics.median(r["load_average"][i][0] for r in found) for i in (0, 1))
        described = VERIFY_VARIANTS.get(variant, variant)
        lines.append(f"| {described} | {len(found)} | {_seconds(median)} | {ratio} | {start:.1f} / {end:.1f} |")
    models = [found[0]["models"] for found in runs.values() if found]
    same = "identical in every variant" if all(m == models[0] for m in models) else _accuracy_moves(runs, settings["n"])
    step = result.get("torch_step")
    if step and "attack_copy_ms" in step:
        same += (
            f". The transfer's forward and input-gradient pass at batch 250 (one thread): {step['micro_ms']:.0f} ms "
            f"before, {step['attack_copy_ms']:.0f} ms on verify's attack copy (gradients within "
            f"{step['max_gradient_difference']['attack_copy']:.0e})"
        )
    lines += [
        "",
        f"{_machine(result['machine'])}; {result['created']}. {settings['n']:,} test images, Square "
        f"{settings['square_queries']:,} queries, transfer AutoAttack {settings['transfer']}, no latency. "
        f"Accuracies (clean, transfer, Square, robust, per model): {same}.",
    ]
    return "\n".join(lines)


def _accuracy_moves(runs: dict[str, list[dict[str, Any]]], n: int) -> str:
    """Where the variants' accuracies differ: each differing figure, before -> the others, in images."""
    first, *others = [(variant, found[0]) for variant, found in runs.items() if found]
    moves = []
    for variant, run in others:
        for model, figures in run["models"].items():
            for key, value in figures.items():
                old = first[1]["models"].get(model, {}).get(key)
                if key.endswith("_acc") and old is not None and old != value:
                    images = round(abs(value - old) * n)
                    count = f", {images} image{'s' if images != 1 else ''}"
                    moves.append(f"{model} {key[:-4]} {100 * old:.1f} -> {100 * value:.1f} ({variant}{count})")
    return "differ: " + "; ".join(moves) if moves else "identical in every variant"


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
    return "\n".join([*lines, "", _onnx_conditions(result)])


def _onnx_conditions(result: dict) -> str:
    """The machine, runtime, date and load of an ``export_latency.py`` run, in one line."""
    machine, load = result["machine"], result["machine"]["load_average"]
    untrained = any(r["int8_agreement"] is None for r in result["ratios"])
    return (
        f"{_machine(machine)}, onnxruntime {result['onnxruntime']} ({result['threads'] or 'default'} threads), "
        f"{result['created']}; load average {load[0][0]:.1f} at the start, {load[1][0]:.1f} at the end."
        + (" Untrained models are timed on random images: speed does not depend on the weights." if untrained else "")
    )


def recipes_table() -> str:
    """The table of every shipped recipe's results (``benchmarks/results_table.py``)."""
    from results_table import render

    return render()


def study_table(name: str) -> str:
    """A study's table, as ``benchmarks/method_study.py report NAME`` prints it (``benchmarks/results/NAME.json``)."""
    from method_study import RESULTS_DIR, load_study, markdown, read_results, summarize

    results = read_results(RESULTS_DIR / f"{name}.json")
    variants = load_study(results["study"]).variants
    rows, notes = summarize(results, [v.name for v in variants])
    shown = {row["variant"] for row in rows}
    described = "".join(f"- `{v.name}`: {v.description}\n" for v in variants if v.name in shown and v.description)
    return (markdown(results, rows, notes) + "\n" + described).rstrip("\n")


def label_curve(name: str) -> str:
    """Robust accuracy against the number of labels (``benchmarks/fewlabel_curve.py``) from ``NAME.json``."""
    from fewlabel_curve import table
    from method_study import RESULTS_DIR

    return table(RESULTS_DIR / f"{name}.json")[0].rstrip("\n")


# -- studies, inline: one variant's figure, or its difference from another's ---------------------------------


def _study_values(name: str, variant: str, metric: str) -> dict[int, float]:
    """Per seed, ``variant``'s ``metric`` (``clean``, ``robust`` or an attack: ``pgd``, ``aa-fast``...) in
    ``benchmarks/results/NAME.json``, from the cells its table shows (the most common evaluation settings)."""
    from method_study import RESULTS_DIR, read_results, summarize

    rows = {row["variant"]: row for row in summarize(read_results(RESULTS_DIR / f"{name}.json"))[0]}
    if variant not in rows:
        raise KeyError(f"benchmarks/results/{name}.json has no finished cell of {variant!r}; it has {', '.join(rows)}")
    row = rows[variant]
    if metric not in ("clean", "robust") and metric not in row["attacks"]:
        raise KeyError(
            f"benchmarks/results/{name}.json: {variant} has no {metric!r}; it has {', '.join(row['attacks'])}"
        )
    values = row[metric] if metric in ("clean", "robust") else row["attacks"][metric]
    return dict(zip(row["seeds"], values, strict=True))


def study_value(name: str, variant: str, metric: str) -> str:
    """``83.2 ± 0.6``: a study variant's mean (%) ± standard deviation over seeds, as its table shows it."""
    from method_study import mean_std

    values = list(_study_values(name, variant, metric).values())
    mean, std = mean_std([100 * v for v in values])
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ± {std:.1f}"


def _points(fraction: float) -> str:
    """``+2.7``: a difference of accuracies in points, rounded half away from zero (accuracies on n images
    differ by multiples of 100/n points, so halves are common and must not depend on binary floating point)."""
    points = Decimal(f"{100 * fraction:.6f}").quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
    return "0.0" if points == 0 else f"{points:+}"


def study_diff(name: str, variant: str, base: str, metric: str) -> str:
    """``+2.7``: ``variant``'s mean ``metric`` minus ``base``'s, in points, over the seeds both have (a seed
    evaluated for one variant only would otherwise move the difference by its own luck)."""
    ours, theirs = _study_values(name, variant, metric), _study_values(name, base, metric)
    seeds = sorted(ours.keys() & theirs.keys())
    if not seeds:
        raise KeyError(f"benchmarks/results/{name}.json: {variant} and {base} share no seed")
    return _points(statistics.fmean(ours[s] - theirs[s] for s in seeds))


def study_seed_diffs(name: str, variant: str, base: str, metric: str) -> str:
    """``+0.9, +0.7, -3.2``: ``variant``'s ``metric`` minus ``base``'s, seed by seed (the seeds both have)."""
    ours, theirs = _study_values(name, variant, metric), _study_values(name, base, metric)
    seeds = sorted(ours.keys() & theirs.keys())
    if not seeds:
        raise KeyError(f"benchmarks/results/{name}.json: {variant} and {base} share no seed")
    return ", ".join(_points(ours[s] - theirs[s]) for s in seeds)


def study_eval_time(name: str) -> str:
    """``27-37 min a cell (x86_64, 2 cores)``: the range of a study's evaluation time per finished cell."""
    results = _bench_results(name)
    minutes = [c["eval"]["seconds"] / 60 for c in results["cells"].values() if c.get("status") == "done"]
    if not minutes:
        raise KeyError(f"benchmarks/results/{name}.json has no finished cell")
    return f"{min(minutes):.0f}-{max(minutes):.0f} min a cell ({results['machine']})"


def recipe_val(name: str) -> str:
    """``89.0% clean / 80.7% robust on 1,000 validation images``: a recipe's best validation figures."""
    val = _recipe(name)["val_best"]
    return f"{val['clean_acc']:.1%} clean / {val['robust_acc']:.1%} robust on {val['n']:,} validation images"


# -- teachers ----------------------------------------------------------------------------------------------

TEACHER_PATHS = {
    "torch eager fp32": "torch, as loaded (eager, float32)",
    "torch fast path": "torch fast path (folded, channels_last, bf16: the default on AMX-BF16 CPUs)",
    "torch fast path fp32": "torch fast path in float32 (CPUs without AMX-BF16)",
    "onnxruntime": "`onnx:` export under onnxruntime (float32)",
    "onnx: fast path (openvino bf16)": "`onnx:` export, fast path: OpenVINO at bf16",
}
"""``teacher_forward.json``'s names of the teacher paths, and the README's."""


def teacher_forward(name: str = "teacher_forward") -> str:
    """The teacher forward per step, each path against the ONNX fast path (``benchmarks/teacher_forward.py``)."""
    result = _bench_results(name)
    speedup = result["onnx_fast_path_speedup"]
    lines = ["| teacher | ms per step | the ONNX teacher's fast path is |", "|---|---:|---:|"]
    for key, ms in result["ms_per_step"].items():
        faster = f"{speedup[key]:.1f}x faster" if key in speedup else ""
        lines.append(f"| {TEACHER_PATHS.get(key, key)} | {ms:.1f} | {faster} |")
    machine = result["machine"]
    lines += [
        "",
        f"`{result['teacher']}` ({result['arch']}), batch {result['batch']}, {result['threads']} torch thread(s), "
        f"median of {result['repeats']} steps per path, timed alternately; {_machine(machine)}, torch {machine['torch']}.",
    ]
    return "\n".join(lines)


def onnx_teacher_parity(name: str = "onnx_teacher_parity") -> str:
    """Validation accuracy of one student distilled from the torch teacher and from its ONNX export."""
    result = _bench_results(name)
    torch_run, onnx_run = result["runs"]["torch"], result["runs"]["onnx"]

    def reached(run: dict) -> str:
        val = run["val_best"]
        return f"{val['clean_acc']:.1%} / {val['robust_acc']:.1%}"

    runtime = " and ".join(onnx_run["speed"]["onnx_teacher_runtime"])
    return (
        f"validation clean / robust {reached(torch_run)} from the torch teacher and {reached(onnx_run)} from the "
        f"ONNX one run by {runtime}, {max(result['abs_difference_points'].values()):.1f} point apart at most "
        f"({torch_run['val_best']['n']:,} validation images; `{' '.join(result['overrides'])}`, "
        f"{result['threads']} torch thread(s), {_machine(result['machine'])})"
    )


# -- robust generalisation gap -----------------------------------------------------------------------------


def _gap_groups(name: str) -> tuple[dict, dict[Path, list[dict]]]:
    """``robust_gap.json`` and its runs grouped by variant folder (``runs/studies/STUDY/VARIANT``)."""
    result = _bench_results(name)
    groups: dict[Path, list[dict]] = {}
    for run, figures in result["runs"].items():
        groups.setdefault(Path(run).parent, []).append({**figures, "run": Path(run)})
    return result, groups


def robust_gap(name: str = "robust_gap") -> str:
    """PGD accuracy on the training images against the test images, per study variant (``benchmarks/robust_gap.py``);
    each variant's parameters and epochs from its study's results file."""
    result, groups = _gap_groups(name)
    steps = result["steps"]
    lines = [
        f"| students (study, variant) | runs | params | epochs | train PGD-{steps} % | test PGD-{steps} % | robust gap (points) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for folder, runs in groups.items():
        study, variant = folder.parts[-2:]
        train = _bench_results(study)["cells"][f"{variant}/{runs[0]['run'].name}"]["train"]
        train_pgd = 100 * statistics.fmean(r["train"]["pgd"] for r in runs)
        test_pgd = 100 * statistics.fmean(r["test"]["pgd"] for r in runs)
        lines.append(
            f"| {study}, {variant} | {len(runs)} | {train['params']:,} | {train['epochs']} | {train_pgd:.1f} | "
            f"{test_pgd:.1f} | {train_pgd - test_pgd:.1f} |"
        )
    attack = next(iter(result["runs"].values()))["attack"]
    lines += [
        "",
        f"PGD-{steps} ({attack['norm']} eps {attack['eps']:g}, {attack['restarts']} restart), each run's best checkpoint, "
        f"on the first {result['n']:,} images of its training split and of the test split; the mean over the runs.",
    ]
    return "\n".join(lines)


def robust_gap_span(name: str = "robust_gap") -> str:
    """``0.8 to 1.8 points``: the smallest and largest mean robust gap of the variants in ``robust_gap.json``."""
    _, groups = _gap_groups(name)
    gaps = [100 * statistics.fmean(r["gap_pgd"] for r in runs) for runs in groups.values()]
    return f"{min(gaps):.1f} to {max(gaps):.1f} points"


# -- results kept as markdown or text (what a benchmark printed) ---------------------------------------------


def _results_text(name: str) -> str:
    path = ROOT / "benchmarks" / "results" / name
    if not path.is_file():
        raise KeyError(f"benchmarks/results/{name} does not exist")
    return path.read_text()


def _md_tables(text: str) -> list[tuple[str, list[dict[str, str]]]]:
    """Each markdown table in ``text`` as (the nearest non-empty line above it, its rows keyed by header)."""

    def cells(line: str) -> list[str]:
        return [cell.strip() for cell in line.strip().strip("|").split("|")]

    tables, caption, lines = [], "", text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header, rows = cells(line), []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append(dict(zip(header, cells(row), strict=True)))
            tables.append((caption, rows))
        elif line.strip() and not line.startswith("|"):
            caption = line.strip()
    return tables


GPU_PLAN = (
    ("channels_last True", "channels_last"),
    ("channels_last False", "NCHW"),
    ("compile False (mode default)", "eager"),
    ("compile False", "eager"),
    ("compile True (mode default)", "compiled"),
    ("compile True (mode reduce-overhead)", "compiled, CUDA graphs (reduce-overhead)"),
    ("compile True", "compiled"),
)
"""How ``train_throughput.py``'s plan line reads in the README."""
STUDENT_BATCH = re.compile(r"student (?P<student>\S+), .*, batch (?P<batch>\d+)")


def gpu_throughput(*names: str) -> str:
    """akd-edge's training step against the plain eager loop on a GPU, from what ``benchmarks/train_throughput.py
    --plain`` printed into ``benchmarks/results/NAME.md`` (one file per session)."""
    lines = [
        "| student, batch | precision, layout, compile | akd-edge img/s | plain eager img/s | akd-edge / plain "
        "| share of matmul peak | results file |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    devices = []
    for name in names:
        tables = _md_tables(_results_text(f"{name}.md"))
        if not tables:
            raise KeyError(f"benchmarks/results/{name}.md holds no table")
        for caption, rows in tables:
            device, hardware, plan, _peak = caption.removeprefix("Device: ").split("; ")
            devices.append(f"{device}, {hardware.split(', ', 1)[1]}")
            for old, new in GPU_PLAN:
                plan = plan.replace(old, new)
            plain = {row["configuration"].removeprefix("plain eager loop: "): row for row in rows}
            for row in rows:
                if row["configuration"].startswith("plain eager loop: "):
                    continue
                other, config = plain[row["configuration"]], STUDENT_BATCH.search(row["configuration"])
                lines.append(
                    f"| {config['student']}, {config['batch']} | {plan} | {int(row['images/s']):,} | "
                    f"{int(other['images/s']):,} | {other['akd-edge / plain']} | {row['share of matmul peak']} | `{name}.md` |"
                )
    lines += ["", f"{'; '.join(dict.fromkeys(devices))}. Each line's two loops were timed alternately in one run."]
    return "\n".join(lines)


ROUND = re.compile(
    r"round (?P<round>\d+) (?P<mode>\S+)\s+train\s+(?P<train>\d+) img/s, whole command\s+(?P<whole>\d+) img/s"
)


def loop_vs_plain(name: str) -> str:
    """Rounds and summary of ``benchmarks/loop_vs_plain.py`` as it printed them into ``benchmarks/results/NAME.txt``."""
    text = _results_text(f"{name}.txt")
    rounds: dict[str, dict[str, dict[str, str]]] = {}
    for match in ROUND.finditer(text):
        rounds.setdefault(f"round {match['round']}", {})[match["mode"]] = match.groupdict()
    summary = {row["mode"]: row for row in _md_tables(text)[-1][1]}
    lines = [
        "| | plain, img/s (training passes / whole command) | akd-edge, img/s | akd-edge / plain |",
        "|---|---:|---:|---:|",
    ]
    for label, modes in rounds.items():
        plain, ours = modes["plain"], modes["akd-edge"]
        lines.append(
            f"| {label} | {plain['train']} / {plain['whole']} | {ours['train']} / {ours['whole']} | "
            f"{int(ours['train']) / int(plain['train']):.2f}x / {int(ours['whole']) / int(plain['whole']):.2f}x |"
        )
    plain, ours = summary["plain"], summary["akd-edge"]
    lines.append(
        f"| all rounds | {plain['training passes, img/s']} / {plain['whole command, img/s']} | "
        f"{ours['training passes, img/s']} / {ours['whole command, img/s']} | "
        f"**{ours['vs plain (train)']}** / {ours['vs plain (whole)']} |"
    )
    head = text.splitlines()
    return "\n".join([*lines, "", f"{head[0]}; {head[1]} (`benchmarks/results/{name}.txt`)."])


def run_report(folder: str) -> str:
    """The models an ``akd-edge report`` wrote into ``benchmarks/results/FOLDER/report.md``, with its Pareto fronts."""
    text = _results_text(f"{folder}/report.md")
    models = next((rows for caption, rows in _md_tables(text) if caption == "## Models"), None)
    if models is None:
        raise KeyError(f"benchmarks/results/{folder}/report.md has no Models table")
    columns = ("model", "params", "file size", "clean", "robust (worst case)", "n")
    lines = ["| " + " | ".join(columns) + " |", "|---|---:|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in models]
    fronts = [line for line in text.splitlines() if line.startswith("- Front against")]
    return "\n".join(
        [*lines, "", *fronts, "", f"Attacks: {models[0]['attack settings']}; verified under onnxruntime on each file."]
    )


# -- compression and export --------------------------------------------------------------------------------


def _acc_ci(figures: dict, key: str) -> str:
    """``83.8 [81.4, 86.0]``: ``figures[KEY_acc]`` in % with its 95% interval."""
    from akd_edge.core.interval import format_interval

    return f"{100 * figures[f'{key}_acc']:.1f} {format_interval(figures[f'{key}_ci95'])}"


def prune_finetune(*names: str) -> str:
    """One student pruned, without and with robust fine-tuning, from ``benchmarks/prune_robustness.py``'s
    ``benchmarks/results/NAME.json`` files (each a fine-tuning length; the same student in all)."""
    results = [_bench_results(name) for name in names]
    first = results[0]["rows"][0]
    base, ev = first["prune"]["before"], first["prune"]["evaluation"]
    lines = [
        f"| channels pruned | fine-tuning | params | clean % | PGD-{ev['pgd']['steps']} % | AutoAttack {base['aa_version']} % | AutoAttack lost (points) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]

    def row(ratio: str, finetune: str, m: dict) -> str:
        lost = f"{100 * (base['aa_acc'] - m['aa_acc']):.1f}" if m is not base else "-"
        return (
            f"| {ratio} | {finetune} | {m['params']:,} ({m['params'] / base['params']:.0%}) | {_acc_ci(m, 'clean')} | "
            f"{_acc_ci(m, 'pgd')} | {_acc_ci(m, 'aa')} | {lost} |"
        )

    lines += [row("0% (the student)", "-", base), row(f"{first['ratio']:.0%}", "none", first["prune"]["after"])]
    for name, result in zip(names, results, strict=True):
        for entry in result["rows"]:
            if entry["finetune"]["source"] != first["prune"]["source"]:
                raise ValueError(f"benchmarks/results/{name}.json prunes another student than {names[0]}.json")
            args = result["args"]
            images = f"{args['train_subset']:,} images" if args["train_subset"] else "all training images"
            tuned = (
                f"{args['finetune_epochs']} epochs, {images}, {entry['finetune']['finetune']['method']} (`{name}.json`)"
            )
            lines.append(row(f"{entry['ratio']:.0%}", tuned, entry["finetune"]["after"]))
    lines += [
        "",
        f"Student `{first['prune']['source']['run']}` ({first['prune']['model']}); channels pruned by "
        f"{first['prune']['prune']['importance']} importance; first {ev['n']:,} test images, PGD-{ev['pgd']['steps']} "
        f"{ev['pgd']['norm']} eps {ev['pgd']['eps']:g}, AutoAttack {base['aa_version']} on the first {ev['aa_n']:,}, "
        f"seed {ev['seed']}; accuracies in % with their 95% Wilson interval.",
    ]
    return "\n".join(lines)


def export_table(name: str = "export_latency") -> str:
    """Every file and runtime of ``benchmarks/export_latency.py``'s run: latency, throughput, size, accuracy."""
    from export_latency import markdown

    result = _bench_results(name)
    return f"{markdown(result['rows'])}\n\n{_onnx_conditions(result)}"


def int8_size_ratio(name: str = "export_latency") -> str:
    """``2.8-4.0x``: how many times smaller the int8 ``.onnx`` files are than fp32 in ``export_latency.json``."""
    rows = _bench_results(name)["rows"]
    fp32 = {r["arch"]: r["bytes"] for r in rows if r["model"] == "model.onnx"}
    ratios = [fp32[r["arch"]] / r["bytes"] for r in rows if r["model"].startswith("model.int8.onnx")]
    if not ratios:
        raise KeyError(f"benchmarks/results/{name}.json has no int8 .onnx row")
    return f"{min(ratios):.1f}-{max(ratios):.1f}x"


# -- int8 calibration --------------------------------------------------------------------------------------

INT8_BASE = {"method": "minmax", "per_channel": True, "symmetric_activations": False, "activation_type": "uint8"}
DEFAULT_CALIB = {**INT8_BASE, "n": 512, "calib_data": "clean"}
INT8_COLUMNS = {
    "quick": [
        ("logits in int8", {**DEFAULT_CALIB, "float_logits": False}),
        ("float logits", {**DEFAULT_CALIB, "float_logits": True}),
        (
            "float logits, any method, 128-2,048 images, clean or half PGD: range",
            {"per_channel": True, "symmetric_activations": False, "float_logits": True},
        ),
        ("float logits, per-tensor weights", {**DEFAULT_CALIB, "per_channel": False, "float_logits": True}),
        ("float logits, symmetric activations", {**DEFAULT_CALIB, "symmetric_activations": True, "float_logits": True}),
    ],
    "placement": [
        ("logits in int8", {**DEFAULT_CALIB, "float_logits": False, "float_layers": "none"}),
        ("float logits", {**DEFAULT_CALIB, "float_logits": True, "float_layers": "none", "bias_correction": False}),
        (
            "float logits, bias-corrected",
            {**DEFAULT_CALIB, "float_logits": True, "float_layers": "none", "bias_correction": True},
        ),
        (
            "float first and/or last layer, bias-corrected: range",
            {**DEFAULT_CALIB, "float_layers": ("first", "last", "first+last"), "bias_correction": True},
        ),
    ],
    "stem": [
        (
            "stem in float, bias-corrected (the default)",
            {**DEFAULT_CALIB, "float_layers": "stem", "bias_correction": True},
        ),
        (
            "only the logits in float, bias-corrected",
            {**DEFAULT_CALIB, "float_layers": "none", "bias_correction": True},
        ),
    ],
}
"""Per grid of ``benchmarks/int8_calibration.py``, the README's columns: a header and the settings a row must
have (a tuple: any of these). A header ending in ``range`` shows the spread of every matching row."""


def _int8_cell(rows: list[dict], settings: dict, spread: bool) -> str:
    def matches(row: dict) -> bool:
        have = row["settings"]
        return all(have.get(k) in v if isinstance(v, tuple) else have.get(k) == v for k, v in settings.items())

    found = [row for row in rows if matches(row)]
    if spread and found:
        agree = [row["clean"]["agree"] for row in found]
        return f"{min(agree):.2%} to {max(agree):.2%} ({len(found)} settings)"
    if len(found) > 1:
        raise ValueError(f"{len(found)} rows have the settings {settings}: name the column's settings more narrowly")
    if not found:
        return "not measured"
    row = found[0]
    from akd_edge.core.interval import format_interval

    ties = f"; ties {row['clean']['int8_ties']:.2%}" if row["clean"]["int8_ties"] else ""
    return (
        f"{row['clean']['agree']:.2%} {format_interval(row['clean']['agree_ci95'], 2)}{ties}; "
        f"PGD {row['adversarial']['agree']:.1%}"
    )


def int8_agreement(name: str) -> str:
    """How often int8 and fp32 agree, per model and calibration setting, from ``benchmarks/int8_calibration.py``'s
    ``benchmarks/results/NAME.json``; the columns are those of its grid in :data:`INT8_COLUMNS`."""
    result = _bench_results(name)
    columns = INT8_COLUMNS[result["grid"]]
    lines = [
        "| model (fp32 clean accuracy) | " + " | ".join(h for h, _ in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for model, info in result["models"].items():
        label = model.removeprefix("runs/").removesuffix("/best.pt")
        cells = [_int8_cell(info["rows"], settings, header.endswith("range")) for header, settings in columns]
        lines.append(f"| `{info['arch']}` {label} ({info['fp32_clean_acc']:.1%}) | " + " | ".join(cells) + " |")
    infos = list(result["models"].values())
    n_adv = " or ".join(f"{n:,}" for n in sorted({i["n_adv"] for i in infos}))
    lines += [
        "",
        f"Argmax agreement of int8 with fp32 on the first {infos[0]['n_test']:,} test images with its 95% Wilson "
        f"interval (ties: images whose two top int8 logits are equal), and on {n_adv} PGD-{infos[0]['pgd_steps']} "
        f"examples made on the torch model; MinMax, per-channel int8 weights, uint8 activations, 512 clean "
        f"calibration images unless the column says otherwise; seed {result['seed']}, {result['machine']}.",
    ]
    return "\n".join(lines)


RENDERERS: dict[str, Callable[..., str]] = {
    "recipe-test": recipe_test,
    "recipe-time": recipe_time,
    "demo": demo,
    "user-path": user_path,
    "int8-speed": int8_speed,
    "verify-speed": verify_speed,
    "recipes-table": recipes_table,
    "study-table": study_table,
    "label-curve": label_curve,
    "study-value": study_value,
    "study-diff": study_diff,
    "study-seed-diffs": study_seed_diffs,
    "study-eval-time": study_eval_time,
    "recipe-val": recipe_val,
    "teacher-forward": teacher_forward,
    "onnx-teacher-parity": onnx_teacher_parity,
    "robust-gap": robust_gap,
    "robust-gap-span": robust_gap_span,
    "gpu-throughput": gpu_throughput,
    "loop-vs-plain": loop_vs_plain,
    "run-report": run_report,
    "prune-finetune": prune_finetune,
    "export-table": export_table,
    "int8-size-ratio": int8_size_ratio,
    "int8-agreement": int8_agreement,
}


def render_block(spec: str) -> str:
    """The text of one block: ``spec`` is the renderer's name and its arguments, separated by spaces."""
    name, *args = spec.split()
    if name not in RENDERERS:
        raise KeyError(f"unknown results block {name!r}; known: {', '.join(RENDERERS)}")
    try:
        return RENDERERS[name](*args)
    except (KeyError, ValueError, TypeError) as exc:  # a missing file, key or argument: name the block
        raise type(exc)(f"<!-- results:{spec} -->: {exc.args[0] if exc.args else exc}") from exc


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
