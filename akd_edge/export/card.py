"""The export folder's ``report.json`` and its human-readable rendering, ``MODEL_CARD.md``.

The JSON report is the record (written by ``akd-edge export``, extended by ``akd-edge verify``); the
model card is always re-rendered from it, never edited by hand. numpy/torch-free, so verify can use it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from akd_edge.core import files
from akd_edge.core.interval import format_accuracy, format_percent, interval_of

REPORT_NAME = "report.json"
CARD_NAME = "MODEL_CARD.md"
REPORT_FORMAT = "akd-edge-export/1"
"""``format`` of an export's report.json."""
REPLAY_NAME = "replay.npz"
"""The worst-case examples ``akd-edge verify`` keeps in the export folder (``akd_edge.verify.replay``)."""


def file_record(path: str | Path) -> dict[str, Any]:
    """What report.json's ``files`` section holds for a model file: its size and SHA-256."""
    return {"bytes": Path(path).stat().st_size, "sha256": files.sha256_file(path)}


def checkpoint_record(checkpoint: str | Path, folder: str | Path) -> dict[str, str]:
    """What ``source`` records of an exported checkpoint: its path relative to the export ``folder`` (found
    from any working directory, and beside the folder when both move together) and its SHA-256 (so that
    verify uses it only while it is the very file exported)."""
    relative = os.path.relpath(Path(checkpoint).absolute(), Path(folder).absolute())
    return {"checkpoint": relative, "checkpoint_sha256": files.sha256_file(checkpoint)}


def recorded_checkpoint(folder: str | Path, source: dict[str, Any]) -> Path | None:
    """The checkpoint path ``source`` records, relative to the export ``folder`` (an absolute one, from an
    earlier akd-edge, as it is), or None when it records none; a path from a file: never opened unchecked."""
    value = source.get("checkpoint")
    if not isinstance(value, str) or not value or "\x00" in value:
        return None
    return Path(folder) / value


def write_report(folder: str | Path, report: dict[str, Any]) -> None:
    """Write ``report.json`` and re-render ``MODEL_CARD.md`` from it, both atomically (NaN is written as null)."""
    folder = Path(folder)
    files.write_json_atomic(folder / REPORT_NAME, report)
    files.write_text_atomic(folder / CARD_NAME, render_model_card(files.json_ready(report)))


def read_report(folder: str | Path) -> dict[str, Any] | None:
    """The folder's report, or None when it has none; a UsageError when it is not a JSON object."""
    path = Path(folder) / REPORT_NAME
    if not path.is_file():
        return None
    return files.read_json_object(path, "export report")


def format_pct(value: Any) -> str:
    """A fraction as a percentage with two decimals, or n/a."""
    return format_percent(value, missing="n/a")


def _acc_ci(res: dict[str, Any], key: str, n: Any) -> str:
    """``82.00% [79.5, 84.3]``: ``res[key + "_acc"]`` with its 95% interval (recomputed from ``n`` for a
    report written before intervals were recorded), or n/a."""
    value = res.get(f"{key}_acc")
    if value is None:
        return "n/a"
    ci = res.get(f"{key}_ci95") or (interval_of(float(value), int(n)) if isinstance(n, int) else None)
    return format_accuracy(float(value), ci)


def _sci(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.2e}"


def format_size(num: Any) -> str:
    """Bytes as KiB (or MiB from 1 MiB up), or n/a."""
    if num is None:
        return "n/a"
    return f"{num / 1024:.1f} KiB" if num < 1024 * 1024 else f"{num / 1024 / 1024:.2f} MiB"


def _ok(passed: Any) -> str:
    return "pass" if passed else "FAIL"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _robustness(verify: dict[str, Any]) -> list[str]:
    lines = ["## Robustness measured under onnxruntime", ""]
    settings = verify.get("settings", {})
    lines.append(
        f"{verify.get('n')} test images of `{verify.get('data', {}).get('name')}`; threat model "
        f"{settings.get('norm')} eps={settings.get('eps')}. Robust accuracy is the per-sample worst case over "
        "clean, transferred and Square examples. Each accuracy is followed by its 95% Wilson score interval "
        "[low, high] (%): the sampling noise of the number of test images."
    )
    lines.append("")
    rows, n = [], verify.get("n")
    for name, res in verify.get("models", {}).items():
        rows.append(
            [
                f"`{name}`",
                _acc_ci(res, "clean", n),
                _acc_ci(res, "transfer", n),
                _acc_ci(res, "square", n),
                f"**{_acc_ci(res, 'robust', n)}**",
            ]
        )
    lines += _table(
        ["model", "clean", "transfer (AutoAttack on torch)", "Square (query-only)", "robust (worst case)"], rows
    )
    transfer = settings.get("transfer") or {}
    square = settings.get("square") or {}
    if transfer.get("skipped"):
        lines.append(f"- Transfer: skipped ({transfer['skipped']}).")
    elif transfer:
        lines.append(
            f"- Transfer: AutoAttack `{transfer.get('version')}` ({', '.join(transfer.get('attacks', []))}) on the torch "
            f"model `{transfer.get('checkpoint')}`; torch robust accuracy {_acc_ci(transfer, 'torch_robust', n)}."
        )
    if square:
        lines.append(
            f"- Square: {square.get('n_queries')} queries, p_init {square.get('p_init')}, loss {square.get('loss')}, "
            f"seed {square.get('seed')}, run directly on each onnxruntime session."
        )
    for warning in verify.get("warnings", []):
        lines.append(f"- **Warning:** {warning}")
    return lines + [""]


def _replayed(verify: dict[str, Any]) -> list[str]:
    """The runtimes on which the worst-case examples (replay.npz) were replayed, and what each gave."""
    replay = verify.get("replay") or {}
    runtimes = replay.get("runtimes") or {}
    if not runtimes:
        return []
    lines = [
        "## Robust accuracy replayed on other runtimes",
        "",
        f"verify kept the worst-case example of each of the {replay.get('n')} images in `{replay.get('file')}`; "
        "`akd-edge verify --replay` replays it on every onnxruntime provider and optimisation level of the "
        "verifying machine, and the page in `web/` in onnxruntime-web. Replayed on: "
        + "; ".join(str(name) for name in runtimes)
        + ".",
        "",
    ]
    rows = []
    for runtime, models in runtimes.items():
        for model, res in (models or {}).items():
            if "error" in res:
                rows.append([runtime, f"`{model}`", "n/a", "n/a", "n/a", f"not run: {res['error']}"])
                continue
            rows.append(
                [
                    runtime,
                    f"`{model}`",
                    format_pct(res.get("robust_acc")),
                    format_pct(res.get("argmax_agreement")),
                    _sci(res.get("max_abs_logit_diff")),
                    res.get("verdict"),
                ]
            )
    return lines + _table(["runtime", "model", "robust", "argmax agreement", "max abs logit diff", "verdict"], rows)


def _latency(verify: dict[str, Any]) -> list[str]:
    latency = verify.get("latency") or {}
    if not latency:
        return []
    lines = ["## Speed and size on the verifying machine", ""]
    rows = []
    for name, res in latency.items():
        rows.append(
            [
                name,
                f"{res['batch1_p50_ms']:.3f}" if "batch1_p50_ms" in res else "n/a",
                f"{res['batch1_p95_ms']:.3f}" if "batch1_p95_ms" in res else "n/a",
                f"{res['throughput_img_s']:,.0f}" if res.get("throughput_img_s") else "n/a",
                format_size(res.get("bytes")),
            ]
        )
    lines += _table(["model", "p50 ms (batch 1)", "p95 ms (batch 1)", "images/s (batch 256)", "size"], rows)
    machine = verify.get("machine") or {}
    lines.append(
        f"Wall-clock on {machine.get('cpus', '?')} CPUs ({machine.get('platform', '?')}); onnxruntime CPU provider, "
        "torch eager in inference mode. Figures from a shared machine are indicative only."
    )
    for note in verify.get("latency_notes", []):
        lines.append(f"- {note}")
    return lines + [""]


def _mobile(mobile: dict[str, Any]) -> list[str]:
    lines = ["## Mobile (onnxruntime-mobile usability checker)", ""]
    rows = []
    for graph, eps in mobile.get("usability", {}).items():
        for info in eps.values():
            unsupported = ", ".join(op.split(":")[-1] for op in info["unsupported_ops"]) or "-"
            rows.append(
                [
                    f"`{graph}`",
                    info["label"],
                    f"{info['supported_nodes']}/{info['nodes']} ({info['supported_pct']}%)",
                    info["partitions"],
                    unsupported,
                    info["verdict"],
                ]
            )
    lines += _table(["graph", "execution provider", "nodes it runs", "partitions", "unsupported ops", "verdict"], rows)
    lines.append(
        f"The `.ort` files have a fixed batch of {mobile.get('batch')} (NNAPI needs static shapes); the `.onnx` files "
        "keep a dynamic batch, so NNAPI runs none of their nodes as they are. CoreML has no QuantizeLinear/"
        "DequantizeLinear, so on iOS use `model.ort` (fp32) with CoreML, or `model.int8.ort` on the CPU provider."
    )
    return lines + [""]


def _attack_text(attack: Any) -> str:
    """An attack's settings as one phrase (``pgd-10 linf eps=0.1``), or what the file said, or n/a."""
    if isinstance(attack, dict):
        return f"{attack.get('name', '?')}-{attack.get('steps', '?')} {attack.get('norm', '')} eps={attack.get('eps')}"
    return str(attack) if attack else "n/a"


def _teachers(teachers: list[dict[str, Any]]) -> list[str]:
    """Where the student's teachers came from: source, SHA-256, their recorded accuracy and its attack."""
    if not teachers:
        return []
    lines = [
        "## Teachers",
        "",
        "The model was distilled from these teachers (accuracy as recorded with each teacher, not re-measured).",
        "",
    ]
    rows = []
    for t in teachers:
        val = t.get("val") or {}
        sha = t.get("sha256")
        rows.append(
            [
                f"`{t.get('source')}`",
                t.get("kind"),
                f"`{t.get('arch')}`" if t.get("arch") else "n/a",
                f"`{sha[:16]}…`" if sha else "n/a",
                f"{float(t['weight']):.3f}" if t.get("weight") is not None else "n/a",
                format_pct(val.get("clean_acc")),
                format_pct(val.get("robust_acc")),
                _attack_text(t.get("attack")),
            ]
        )
    return lines + _table(["source", "kind", "architecture", "sha256", "weight", "clean", "robust", "attack"], rows)


def _checks(report: dict[str, Any]) -> list[str]:
    checks = report.get("checks", {})
    lines = ["## Export checks", ""]
    rows = [
        [f"onnx.checker full check `{name}`", _ok(res["passed"]), res.get("error", "")]
        for name, res in checks.get("onnx_checker", {}).items()
    ]
    parity = checks.get("parity")
    if parity:
        rows.append(
            [
                f"torch vs onnxruntime fp32 ({parity['n']} images)",
                _ok(parity["passed"]),
                f"max abs logit diff {_sci(parity['max_abs_logit_diff'])} (<= {_sci(parity['max_abs_logit_diff_threshold'])}), "
                f"argmax agreement {format_pct(parity['argmax_agreement'])} (>= {format_pct(parity['argmax_agreement_threshold'])})",
            ]
        )
    agreement = checks.get("int8_agreement")
    if agreement:
        rows.append(
            [
                f"fp32 vs int8 on the test split ({agreement['n']} images)",
                _ok(agreement["passed"]),
                f"argmax agreement {format_pct(agreement['argmax_agreement'])} (>= {format_pct(agreement['threshold'])}); clean "
                f"accuracy fp32 {format_pct(agreement['fp32_clean_acc'])}, int8 {format_pct(agreement['int8_clean_acc'])}"
                + (f". **{agreement['action']}**" if agreement.get("action") else ""),
            ]
        )
    speed = checks.get("int8_speed")
    if speed:
        rows.append(
            [
                "int8 vs fp32 speed under onnxruntime (this machine)",
                "int8 faster" if speed["int8_faster"] else "**fp32 recommended for speed**",
                f"{_speed_figures(speed)}. {speed['advice']}",
            ]
        )
    for name, info in (report.get("mobile") or {}).get("ort", {}).items():
        parity_ort = info["parity"]
        rows.append(
            [
                f"`{name}` vs `{info['from']}`",
                _ok(parity_ort["argmax_agreement"] == 1.0),
                f"max abs logit diff {_sci(parity_ort['max_abs_logit_diff'])}, argmax agreement {format_pct(parity_ort['argmax_agreement'])}",
            ]
        )
    return lines + _table(["check", "result", "detail"], rows)


def _speed_figures(speed: dict[str, Any]) -> str:
    """``batch 256: 63,447 vs 39,471 img/s; batch 1 p50: 0.024 vs 0.030 ms`` (int8 vs fp32)."""
    int8, fp32 = speed["int8"], speed["fp32"]
    return (
        f"int8 vs fp32: batch 256 {int8['throughput_img_s']:,.0f} vs {fp32['throughput_img_s']:,.0f} img/s; "
        f"batch 1 p50 {int8['batch1_p50_ms']:.3f} vs {fp32['batch1_p50_ms']:.3f} ms"
    )


def render_model_card(report: dict[str, Any]) -> str:
    """A markdown model card: what the model is, how to feed it, how robust it measured, and its files."""
    source, model = report.get("source", {}), report.get("model", {})
    arch, threat = source.get("arch", {}), report.get("threat", {})
    val = source.get("val") or {}
    val_n = f", {val['n']} validation images" if isinstance(val.get("n"), int) else ""
    lines = [
        f"# Model card: {source.get('run', 'model')}",
        "",
        f"- Architecture: `{arch.get('name')}` ({source.get('params', 0):,} parameters"
        f"{', pruned' if source.get('pruned') else ''}), role: {source.get('role')}, epoch {source.get('epoch')}",
        f"- Dataset: `{report.get('data', {}).get('name')}`, {len(model.get('class_names', []))} classes: "
        + ", ".join(f"`{c}`" for c in model.get("class_names", [])),
        f"- Threat model: {threat.get('norm')} perturbations of size eps = {threat.get('eps')} on images in [0, 1]",
        f"- Torch validation (at training time{val_n}): clean {_acc_ci(val, 'clean', val.get('n'))}, "
        f"robust {_acc_ci(val, 'robust', val.get('n'))}",
        f"- Source checkpoint: `{source.get('checkpoint')}`; exported {report.get('created')} with "
        + ", ".join(f"{k} {v}" for k, v in report.get("versions", {}).items()),
        "",
        "## Input and output",
        "",
        f"- Input `{model.get('input', {}).get('name')}`: float32 {model.get('input', {}).get('layout')} "
        f"{model.get('input', {}).get('shape')}, pixel values in [0, 1] (divide 8-bit pixels by 255; "
        "no mean/std normalisation: it is inside the graph).",
        f"- Output `{model.get('output', {}).get('name')}`: {model.get('output', {}).get('shape')} logits, in the class order above.",
        "",
    ]
    lines += _teachers(source.get("teachers") or [])
    verify = report.get("verify")
    if verify:
        lines += _robustness(verify)
        lines += _replayed(verify)
        lines += _latency(verify)
    else:
        lines += [
            "## Robustness measured under onnxruntime",
            "",
            "Not verified yet: run `akd-edge verify <this folder>`.",
            "",
        ]
    lines += _checks(report)
    if report.get("quantization"):
        q = report["quantization"]
        lines += [
            "## Quantization",
            "",
            f"Static {q['format']}: weights {q['weights']}, activations {q['activations']}, {q['calibration']} "
            f"calibration on {q['calibration_images']} {q['calibration_split']} images"
            + (", biases corrected for the int8 weights" if q.get("bias_correction") else "")
            + "."
            + (f" Logits: {q['logits']}." if q.get("logits") else "")
            + (f" Float layers: {', '.join(q['float_nodes'])}." if q.get("float_nodes") else ""),
            "",
        ]
    if report.get("mobile"):
        lines += _mobile(report["mobile"])
    files = report.get("files", {})
    if files:
        lines += ["## Files", ""]
        lines += _table(
            ["file", "size", "sha256"],
            [[f"`{k}`", format_size(v["bytes"]), f"`{v['sha256'][:16]}…`"] for k, v in files.items()],
        )
    lines += [
        "## Limitations",
        "",
        "- Robustness holds only for the threat model above and was measured on the stated number of test images; "
        "attacks are not proofs, and a stronger attack can only lower the figures.",
        "- The int8 model is a separate model: its robustness is re-measured, not inherited from fp32.",
        "",
    ]
    return "\n".join(lines)
