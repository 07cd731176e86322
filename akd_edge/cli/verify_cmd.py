"""``akd-edge verify``: the exported models' robustness under onnxruntime, and its replay on other runtimes.

Nothing heavy is imported at module level: ``verify`` must start on a machine with only numpy and
onnxruntime (plus click and rich) installed.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from akd_edge.cli.common import (
    console,
    data_dir_option,
    model_factory_option,
    n_option,
    out,
    seed_option,
    square_queries_option,
    threads_option,
    transfer_option,
    user_errors,
)
from akd_edge.cli.progress import TaskProgress
from akd_edge.core.interval import REPORTED_N, format_interval
from akd_edge.export.card import format_pct

VERDICT_STYLE = {"matches": "green", "within tolerance": "yellow", "mismatch": "bold red"}


def _with_ci(res: dict[str, Any], key: str) -> str:
    """An accuracy of the verify section with its 95% interval on the line below."""
    value = format_pct(res.get(f"{key}_acc"))
    interval = format_interval(res.get(f"{key}_ci95"))
    return value if interval == "-" else f"{value}\n[dim]{interval}[/]"


def _model_column(width: int) -> dict[str, Any]:
    """The model column never cuts a file name (``model.int8.onnx``): the other columns fold instead."""
    return {"no_wrap": True, "min_width": width}


def _names_width(names: Any) -> int:
    return max((len(str(name)) for name in names), default=5)


def _print_verify(folder: Path, verify: dict[str, Any]) -> None:
    settings = verify["settings"]
    table = Table(
        title=f"{escape(str(folder))}: {verify['n']} images, {settings['norm']} eps={settings['eps']} (onnxruntime)",
        caption="accuracy and, below it, its 95% Wilson interval",
    )
    table.add_column("model", **_model_column(_names_width(verify["models"])))
    for header in ("clean", "transfer", "Square", "robust (worst case)"):
        table.add_column(header)
    for name, res in verify["models"].items():
        table.add_row(
            escape(name),
            _with_ci(res, "clean"),
            _with_ci(res, "transfer"),
            _with_ci(res, "square"),
            f"[bold]{_with_ci(res, 'robust')}[/]",
        )
    out.print(table)
    transfer = settings["transfer"]
    if transfer.get("skipped"):
        console.print(f"transfer attack skipped: {transfer['skipped']}", highlight=False)
    for name, res in verify["models"].items():
        if res.get("same_file_as"):
            other = escape(str(res["same_file_as"]))
            console.print(f"{escape(name)} is bit-identical to {other}: attacked once, same results", highlight=False)
    wall, workers = verify.get("timings_s", {}).get("attacks_wall_s"), settings.get("workers")
    if wall is not None:
        where = "in one process" if workers == 1 else f"on {workers} worker processes"
        console.print(f"attacks: {wall:,.0f} s {where}", highlight=False)
    for warning in verify["warnings"]:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False)
    _print_latency(verify)
    replay = verify.get("replay")
    if replay:
        console.print(
            f"kept the worst-case example of each image in {escape(str(Path(folder) / replay['file']))}; "
            f"next: akd-edge verify {escape(shlex.quote(str(folder)))} --replay (replays them on the other "
            "onnxruntime providers and optimisation levels here), and the web/ page replays them in a browser",
            highlight=False,
            soft_wrap=True,
        )


def _print_latency(verify: dict[str, Any]) -> None:
    latency = verify.get("latency")
    if not latency:
        return
    speed = Table(title="speed on this machine")
    speed.add_column("model", **_model_column(_names_width(latency)))
    for header in ("p50 ms (b=1)", "p95 ms (b=1)", "images/s (b=256)", "size"):
        speed.add_column(header)
    for name, res in latency.items():
        speed.add_row(
            escape(name),
            f"{res['batch1_p50_ms']:.3f}",
            f"{res['batch1_p95_ms']:.3f}",
            f"{res['throughput_img_s']:,.0f}" if res.get("throughput_img_s") else "-",
            f"{res['bytes'] / 1024:.1f} KiB" if res.get("bytes") else "-",
        )
    out.print(speed)
    for note in verify.get("latency_notes", []):
        console.print(note, highlight=False)


def _delta(res: dict[str, Any]) -> str:
    """Robust accuracy on a runtime, and its difference from the reference's in points."""
    robust, reference = res.get("robust_acc"), res.get("reference_robust_acc")
    if robust is None or reference is None:
        return "-"
    return f"{format_pct(robust)} ({100 * (robust - reference):+.2f})"


def _replay_table(title: str, models: dict[str, Any]) -> Table:
    """Robust accuracy, argmax agreement and the largest logit difference of each model on one runtime."""
    bounds = {res.get("precision"): res.get("logit_bound") for res in models.values() if "error" not in res}
    caption = ", ".join(f"{precision} bound {bound:.1e}" for precision, bound in bounds.items() if bound is not None)
    table = Table(title=title, caption=caption)
    table.add_column("model", **_model_column(_names_width(models)))
    for header in ("robust (vs verify)", "same argmax", "max |logit diff|", "verdict"):
        table.add_column(header)
    for name, res in models.items():
        if "error" in res:
            table.add_row(escape(name), "-", "-", "-", f"not run: {escape(res['error'])}")
            continue
        compared = 2 * res["n"]
        table.add_row(
            escape(name),
            _delta(res),
            f"{compared - res['argmax_disagreements']}/{compared}",
            f"{res['max_abs_logit_diff']:.2e}",
            f"[{VERDICT_STYLE.get(res['verdict'], '')}]{res['verdict']}[/]",
        )
    return table


def _print_replay(folder: Path, replay: dict[str, Any]) -> None:
    """One table per runtime replayed (the reference, verify's own run, is the baseline of each)."""
    for runtime, models in replay["runtimes"].items():
        if runtime != replay.get("reference"):
            out.print(_replay_table(f"{escape(runtime)}: {replay['n']} worst-case examples", models))
    console.print(
        f"{escape(str(folder))}: replayed against {escape(str(replay.get('reference')))}. matches: every logit within "
        "1e-3; within tolerance: int8 kernels round differently between runtimes, so int8 logits may differ by up "
        "to 5% of the largest |logit| while >= 99% of argmaxes agree and robust accuracy stays within 1 point.",
        highlight=False,
    )


@click.command("verify")
@click.argument("folder", metavar="EXPORT_DIR", type=click.Path())
@click.option(
    "--data", default=None, help="Dataset name, or an .npz with 'images' and 'labels' [default: the model's dataset]."
)
@data_dir_option("$AKD_EDGE_DATA, the OS location, then the download cache; never the one report.json records")
@n_option("to verify on (a smaller test split is used whole)", REPORTED_N, all_when_zero=False)
@square_queries_option()
@click.option(
    "--p-init",
    default=0.8,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True),
    help="Square's initial square size.",
)
@transfer_option(" (fast = APGD-CE + APGD-T)")
@click.option(
    "--checkpoint",
    default=None,
    help="Torch checkpoint (run directory or .pt) to transfer from [default: the export's source, recorded in "
    "report.json, used only while its SHA-256 is unchanged since the export].",
)
@model_factory_option(whose="the torch checkpoint's")
@click.option("--norm", type=click.Choice(["linf", "l2"]), default=None, help="Override the threat model's norm.")
@click.option("--eps", type=float, default=None, help="Override the threat model's epsilon.")
@click.option(
    "--margin", default=0.02, show_default=True, type=float, help="Gradient-masking warning threshold (accuracy)."
)
@click.option("--latency/--no-latency", default=True, show_default=True, help="Measure latency and throughput.")
@click.option(
    "--replay",
    is_flag=True,
    help="Attack nothing: replay the worst-case examples the last verify kept (replay.npz) on every other "
    "onnxruntime provider and optimisation level here, and record the results in report.json.",
)
@threads_option("the attacks (as many worker processes of one thread each; 0: one per CPU) and of --replay")
@seed_option("the attacks")
@click.option("--json", "as_json", is_flag=True, help="Print the verify section (or the replay) as JSON on stdout.")
@user_errors
def verify_cmd(
    folder: str,
    data: str | None,
    data_dir: str | None,
    n: int,
    square_queries: int,
    p_init: float,
    transfer: str,
    checkpoint: str | None,
    model_factory: str | None,
    norm: str | None,
    eps: float | None,
    margin: float,
    latency: bool,
    replay: bool,
    threads: int,
    seed: int,
    as_json: bool,
) -> None:
    """Re-verify an export folder's models under onnxruntime: clean, transferred AutoAttack, Square, worst case.

    The attacks (the official AutoAttack's Square on each onnxruntime session, AutoAttack on the torch model
    for the transfer examples) need torch; without it only --square-queries 0 --transfer none runs (clean
    accuracy and latency). Results go into the folder's report.json and MODEL_CARD.md, each accuracy with
    its 95% Wilson interval; the worst-case example of each image goes into replay.npz. The default 1000
    images (500 before) give intervals of about +-3 points; the attacks' time grows in proportion. The
    attacks run batch by batch on one worker process per CPU (--threads), with the examples one process
    would make.
    """
    if replay:
        _replay(Path(folder), threads, as_json)
        return
    from akd_edge import api

    with TaskProgress(console, "verify") as progress:
        verify = api.verify(
            folder,
            factory=model_factory,
            data=data,
            data_dir=data_dir,
            n=n,
            seed=seed,
            square_queries=square_queries,
            p_init=p_init,
            transfer=transfer,
            checkpoint=checkpoint,
            norm=norm,
            eps=eps,
            margin=margin,
            latency=latency,
            threads=threads,
            on_stage=progress.stage,
            on_progress=progress.advance,
        )
    if as_json:
        click.echo(json.dumps(verify, indent=2))
    else:
        _print_verify(Path(folder), verify)


def _replay(folder: Path, threads: int, as_json: bool) -> None:
    """``verify --replay``: the stored examples on every other runtime here, a table per runtime."""
    from akd_edge import api

    with TaskProgress(console, "verify --replay") as progress:
        section = api.replay(folder, threads=threads, on_stage=progress.stage)
    if as_json:
        click.echo(json.dumps(section, indent=2))
    else:
        _print_replay(folder, section)
