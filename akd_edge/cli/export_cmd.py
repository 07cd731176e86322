"""``akd-edge export``: deployable files (``akd-edge verify`` is in ``verify_cmd``).

Nothing heavy is imported at module level: ``akd-edge --help`` stays fast.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from akd_edge.cli.common import (
    calib_option,
    console,
    data_dir_option,
    model_factory_option,
    n_option,
    out,
    out_option,
    seed_option,
    user_errors,
    which_option,
)
from akd_edge.core.interval import format_percent


def _mark(passed: bool) -> str:
    return "[green]pass[/]" if passed else "[bold red]FAIL[/]"


def _print_export(folder: Path, report: dict[str, Any]) -> None:
    checks = report["checks"]
    table = Table("check", "result", "detail", title=f"export checks: {folder}")
    for name, res in checks["onnx_checker"].items():
        table.add_row(f"onnx.checker (full) {name}", _mark(res["passed"]), res.get("error", ""))
    parity = checks["parity"]
    table.add_row(
        f"torch vs onnxruntime ({parity['n']} images)",
        _mark(parity["passed"]),
        f"max |diff| {parity['max_abs_logit_diff']:.2e} <= {parity['max_abs_logit_diff_threshold']:.0e}, "
        f"argmax {format_percent(parity['argmax_agreement'])} >= {format_percent(parity['argmax_agreement_threshold'])}",
    )
    if "int8_agreement" in checks:
        agree = checks["int8_agreement"]
        table.add_row(
            f"fp32 vs int8 (test split, {agree['n']} images)",
            _mark(agree["passed"]) + ("" if agree.get("kept", True) else "\n[bold]int8 not written[/]"),
            f"agreement {format_percent(agree['argmax_agreement'])} >= {format_percent(agree['threshold'])}; clean fp32 "
            f"{format_percent(agree['fp32_clean_acc'])}, int8 {format_percent(agree['int8_clean_acc'])}",
        )
    if "int8_speed" in checks:
        speed = checks["int8_speed"]
        table.add_row(
            "int8 vs fp32 speed (this machine)",
            "[green]int8 faster[/]" if speed["int8_faster"] else "[yellow]fp32 faster[/]",
            f"batch 256 {speed['throughput_ratio']:.2f}x fp32, batch-1 latency {speed['batch1_latency_ratio']:.2f}x",
        )
    for name, info in report.get("mobile", {}).get("ort", {}).items():
        par = info["parity"]
        table.add_row(
            f"{name} vs {info['from']}",
            _mark(par["argmax_agreement"] == 1.0),
            f"max |diff| {par['max_abs_logit_diff']:.2e}",
        )
    out.print(table)
    mobile = Table("graph", "NNAPI", "CoreML NN", "CoreML MLProgram", title="nodes each mobile execution provider runs")
    for graph, eps in report.get("mobile", {}).get("usability", {}).items():
        cells = [f"{e['supported_nodes']}/{e['nodes']} ({e['verdict']})" for e in eps.values()]
        mobile.add_row(graph, *cells)
    out.print(mobile)
    files = Table("file", "bytes", title="files")
    for name, info in report.get("files", {}).items():
        files.add_row(name, f"{info['bytes']:,}")
    out.print(files)


@click.command("export")
@click.argument("source", metavar="RUN_OR_CHECKPOINT")
@out_option("Output folder", "export/<run name>")
@which_option()
@model_factory_option()
@click.option("--int8/--no-int8", default=True, show_default=True, help="Also write the static int8 (QDQ) model.")
@calib_option()
@click.option(
    "--calib-method",
    type=click.Choice(["minmax", "entropy", "percentile"]),
    default="minmax",
    show_default=True,
    help="How activation ranges are calibrated (onnxruntime CalibrationMethod).",
)
@click.option(
    "--calib-percentile",
    default=99.999,
    show_default=True,
    type=click.FloatRange(0, 100, min_open=True),
    help="Percentile of --calib-method percentile.",
)
@click.option(
    "--per-channel/--per-tensor",
    default=True,
    show_default=True,
    help="int8 weight scales per output channel or per tensor.",
)
@click.option(
    "--symmetric-activations/--asymmetric-activations",
    default=False,
    show_default=True,
    help="Activation ranges symmetric around 0 (onnxruntime ActivationSymmetric).",
)
@click.option(
    "--float-logits/--int8-logits",
    default=True,
    show_default=True,
    help="Leave the final layer's output (the logits) in float: 8-bit logits tie and flip the argmax.",
)
@click.option(
    "--float-layers",
    type=click.Choice(["none", "stem", "first", "last", "first+last"]),
    default="stem",
    show_default=True,
    help="Layers that run in float, with float weights and bias: stem = the first conv with its activation and "
    "pool (fast on CPUs), first / last = that weighted layer (Conv/Gemm/MatMul).",
)
@click.option(
    "--bias-correction/--no-bias-correction",
    default=True,
    show_default=True,
    help="Correct each layer's bias for the mean shift of its int8 weights, measured on the calibration images.",
)
@n_option("for the fp32-vs-int8 agreement", 0, name="n_test")
@data_dir_option("the one recorded in the checkpoint")
@click.option(
    "--mobile-batch",
    default=1,
    show_default=True,
    type=click.IntRange(min=0),
    help="Fixed batch of the .ort files (0 = keep dynamic).",
)
@click.option(
    "--min-int8-agreement",
    default=0.995,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="fp32-vs-int8 argmax agreement on the test split below which the int8 files are not written.",
)
@click.option(
    "--keep-failed-int8",
    is_flag=True,
    help="Write the int8 files even when they agree with fp32 less than --min-int8-agreement (report.json and "
    "MODEL_CARD.md still record the failed check).",
)
@click.option(
    "--web/--no-web",
    default=True,
    show_default=True,
    help="Also write web/: a page that runs the ONNX models under onnxruntime-web on sample test images.",
)
@click.option(
    "--web-runtime",
    default=None,
    metavar="PATH",
    help="onnxruntime-web package (or its dist/ folder) to copy into web/ort/ "
    "[default: $AKD_EDGE_WEB_RUNTIME, else ./node_modules/onnxruntime-web, else none: web/README.md says how].",
)
@seed_option("the calibration sample")
@user_errors
def export_cmd(
    source: str,
    out_dir: str | None,
    which: str,
    model_factory: str | None,
    int8: bool,
    calib: int,
    calib_method: str,
    calib_percentile: float,
    per_channel: bool,
    symmetric_activations: bool,
    float_logits: bool,
    float_layers: str,
    bias_correction: bool,
    n_test: int,
    data_dir: str | None,
    mobile_batch: int,
    min_int8_agreement: float,
    keep_failed_int8: bool,
    web: bool,
    web_runtime: str | None,
    seed: int,
) -> None:
    """Export a run or checkpoint to ONNX (fp32 + int8), onnxruntime-mobile .ort, report.json and MODEL_CARD.md.

    The graph takes images float32 NCHW in [0, 1] with a dynamic batch and returns logits (normalisation is
    inside). Checks: onnx.checker full check, parity with torch, fp32-vs-int8 agreement on the test split, and
    NNAPI/CoreML coverage. web/ holds a page that classifies sample test images with the same files under
    onnxruntime-web in a browser. Then run `akd-edge verify` on the folder.
    """
    from akd_edge import api
    from akd_edge.export import ExportCheckFailed

    with console.status("exporting") as status:
        try:
            folder, report = api.export(
                source,
                out_dir,
                which=which,
                int8=int8,
                calib=calib,
                int8_settings={
                    "method": calib_method,
                    "percentile": calib_percentile,
                    "per_channel": per_channel,
                    "symmetric_activations": symmetric_activations,
                    "float_logits": float_logits,
                    "float_layers": float_layers,
                    "bias_correction": bias_correction,
                },
                data_dir=data_dir,
                n_test=n_test,
                mobile_batch=mobile_batch,
                min_int8_agreement=min_int8_agreement,
                keep_failed_int8=keep_failed_int8,
                seed=seed,
                on_stage=lambda text: status.update(text),
                factory=model_factory,
                web=web,
                web_runtime=web_runtime,
            )
        except ExportCheckFailed as err:
            console.print(f"[bold red]export failed:[/] {err}", highlight=False)
            raise click.exceptions.Exit(1) from None
    _print_export(folder, report)
    _print_web(folder, report.get("web"))
    action = report["checks"].get("int8_agreement", {}).get("action")
    if action:
        console.print(f"[bold yellow]int8:[/] {escape(action)}", highlight=False)
    speed = report["checks"].get("int8_speed")
    if speed:
        style = "green" if speed["int8_faster"] else "bold yellow"
        console.print(f"[{style}]int8 speed:[/] {escape(speed['advice'])}", highlight=False)
    console.print(
        f"[green]wrote[/] {escape(str(folder))}   next: akd-edge verify {escape(shlex.quote(str(folder)))}",
        highlight=False,
        soft_wrap=True,
    )


def _print_web(folder: Path, web: dict[str, Any] | None) -> None:
    """Where the browser page is and how to open it, or what it still needs."""
    if not web:
        return
    runtime = web.get("runtime")
    if runtime is None:
        console.print(
            f"web/: onnxruntime-web not copied ({escape(web.get('runtime_missing', ''))}; or --web-runtime PATH)",
            highlight=False,
        )
        return
    console.print(
        f"web/: onnxruntime-web {escape(str(runtime.get('version')))}, {web['samples']} sample images; open it with "
        f"python3 -m http.server --bind 127.0.0.1 --directory {escape(str(folder))} 8000 and http://127.0.0.1:8000/web/",
        highlight=False,
    )
