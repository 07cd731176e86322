"""``akd-edge export`` and ``akd-edge verify``: deployable files, and their robustness under onnxruntime.

Nothing heavy is imported at module level: ``verify`` must start on a machine with only numpy and
onnxruntime (plus click and rich) installed.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from akd_edge.cli.common import (
    calib_option,
    console,
    data_dir_option,
    make_progress,
    model_factory_option,
    n_option,
    out,
    out_option,
    seed_option,
    square_queries_option,
    threads_option,
    transfer_option,
    user_errors,
    which_option,
)
from akd_edge.interval import REPORTED_N, format_interval


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _with_ci(res: dict[str, Any], key: str) -> str:
    """An accuracy of the verify section with its 95% interval on the line below."""
    value = _pct(res.get(f"{key}_acc"))
    interval = format_interval(res.get(f"{key}_ci95"))
    return value if interval == "-" else f"{value}\n[dim]{interval}[/]"


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
        f"argmax {_pct(parity['argmax_agreement'])} >= {_pct(parity['argmax_agreement_threshold'])}",
    )
    if "int8_agreement" in checks:
        agree = checks["int8_agreement"]
        table.add_row(
            f"fp32 vs int8 (test split, {agree['n']} images)",
            _mark(agree["passed"]),
            f"agreement {_pct(agree['argmax_agreement'])} >= {_pct(agree['threshold'])}; clean fp32 "
            f"{_pct(agree['fp32_clean_acc'])}, int8 {_pct(agree['int8_clean_acc'])}",
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
    type=click.Choice(["none", "first", "last", "first+last"]),
    default="none",
    show_default=True,
    help="Weighted layers (Conv/Gemm/MatMul) that run in float, with float weights and bias.",
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
    help="Warn below this fp32-vs-int8 agreement.",
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
    from akd_edge.export import ExportCheckFailed, export_checkpoint

    with console.status("exporting") as status:
        try:
            folder, report = export_checkpoint(
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
    console.print(f"[green]wrote[/] {folder}   next: akd-edge verify {folder}", highlight=False)


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


def _trusting(factory: str | None) -> contextlib.AbstractContextManager[None]:
    """Let verify's torch side rebuild the transfer checkpoint with ``factory`` (torch imported only then)."""
    if factory is None:
        return contextlib.nullcontext()
    from akd_edge.verify.transfer import trusting_factory

    return trusting_factory(factory)


def _print_verify(folder: Path, verify: dict[str, Any]) -> None:
    settings = verify["settings"]
    table = Table(
        "model",
        "clean",
        "transfer",
        "Square",
        "robust (worst case)",
        title=f"{folder}: {verify['n']} images, {settings['norm']} eps={settings['eps']} (onnxruntime)",
        caption="accuracy and, below it, its 95% Wilson interval",
    )
    for name, res in verify["models"].items():
        table.add_row(
            name,
            _with_ci(res, "clean"),
            _with_ci(res, "transfer"),
            _with_ci(res, "square"),
            f"[bold]{_with_ci(res, 'robust')}[/]",
        )
    out.print(table)
    transfer = settings["transfer"]
    if transfer.get("skipped"):
        console.print(f"transfer attack skipped: {transfer['skipped']}", highlight=False)
    for warning in verify["warnings"]:
        console.print(f"[bold yellow]warning:[/] {warning}", highlight=False)
    latency = verify.get("latency")
    if latency:
        speed = Table(
            "model", "p50 ms (b=1)", "p95 ms (b=1)", "images/s (b=256)", "size", title="speed on this machine"
        )
        for name, res in latency.items():
            speed.add_row(
                name,
                f"{res['batch1_p50_ms']:.3f}",
                f"{res['batch1_p95_ms']:.3f}",
                f"{res['throughput_img_s']:,.0f}" if res.get("throughput_img_s") else "-",
                f"{res['bytes'] / 1024:.1f} KiB" if res.get("bytes") else "-",
            )
        out.print(speed)
        for note in verify.get("latency_notes", []):
            console.print(note, highlight=False)


@click.command("verify")
@click.argument("folder", metavar="EXPORT_DIR", type=click.Path())
@click.option(
    "--data", default=None, help="Dataset name, or an .npz with 'images' and 'labels' [default: the model's dataset]."
)
@data_dir_option("the one recorded at export")
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
@click.option("--checkpoint", default=None, help="Torch checkpoint to transfer from [default: the export's source].")
@model_factory_option(whose="the torch checkpoint's")
@click.option("--norm", type=click.Choice(["linf", "l2"]), default=None, help="Override the threat model's norm.")
@click.option("--eps", type=float, default=None, help="Override the threat model's epsilon.")
@click.option(
    "--margin", default=0.02, show_default=True, type=float, help="Gradient-masking warning threshold (accuracy)."
)
@click.option("--latency/--no-latency", default=True, show_default=True, help="Measure latency and throughput.")
@threads_option("torch and onnxruntime")
@seed_option("the attacks")
@click.option("--json", "as_json", is_flag=True, help="Print the verify section as JSON on stdout.")
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
    threads: int,
    seed: int,
    as_json: bool,
) -> None:
    """Re-verify an export folder's models under onnxruntime: clean, transferred AutoAttack, Square, worst case.

    The attacks (the official AutoAttack's Square on each onnxruntime session, AutoAttack on the torch model
    for the transfer examples) need torch; without it only --square-queries 0 --transfer none runs (clean
    accuracy and latency). Results go into the folder's report.json and MODEL_CARD.md, each accuracy with
    its 95% Wilson interval. The default 1000 images (500 before) give intervals of about +-3 points; the
    attacks' time grows in proportion, twice that of 500.
    """
    from akd_edge.verify.report import verify_export

    with _trusting(model_factory), make_progress(transient=True) as progress:
        tasks: dict[str, Any] = {}
        stage_task = progress.add_task("verify", total=None, info="")

        def on_stage(text: str) -> None:
            progress.update(stage_task, description=text)

        def on_progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(f"Square {name}", total=total, info="")
            progress.update(tasks[name], completed=done)

        verify = verify_export(
            folder,
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
            on_stage=on_stage,
            on_progress=on_progress,
        )
    if as_json:
        click.echo(json.dumps(verify, indent=2))
    else:
        _print_verify(Path(folder), verify)
