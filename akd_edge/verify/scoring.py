"""What verify's attacks add up to: each model's accuracies with their intervals, the per-sample worst case,
the warnings they raise (gradient masking, int8 losing robustness), and each model's speed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from akd_edge.core.interval import wilson_interval
from akd_edge.core.ort import OrtClassifier, file_size, ort_latency
from akd_edge.export.folder import MOBILE_MODELS

log = logging.getLogger(__name__)
SCORE_BATCH = 256


def _ci(name: str, correct: np.ndarray) -> dict[str, list[float | None]]:
    """``{name}_ci95``: the 95% Wilson interval of the accuracy of per-sample ``correct`` flags."""
    return {f"{name}_ci95": wilson_interval(int(np.count_nonzero(correct)), int(np.size(correct)))}


def _gradient_masking(name: str, entry: dict[str, Any], margin: float) -> str | None:
    """The warning when Square beats the transferred white-box examples by more than ``margin``, else None."""
    if entry["transfer_acc"] is None or entry["square_acc"] is None:
        return None
    if entry["square_acc"] >= entry["transfer_acc"] - margin:
        return None
    gap = 100 * (entry["transfer_acc"] - entry["square_acc"])
    return (
        f"{name}: the query-only Square attack beats the transferred white-box examples by {gap:.1f} points "
        f"(Square {100 * entry['square_acc']:.1f}% vs transfer {100 * entry['transfer_acc']:.1f}%): a sign of "
        "gradient masking, or of a model that differs from the torch one (common after int8); trust the worst case"
    )


def _entry(clean: np.ndarray, square: np.ndarray | None, transfer: np.ndarray | None) -> dict[str, Any]:
    """A model's accuracies with their intervals; robust is the per-sample worst case of the attacks that ran."""
    entry: dict[str, Any] = {"clean_acc": float(clean.mean()), **_ci("clean", clean)}
    worst = clean.copy()
    for key, flags in (("square", square), ("transfer", transfer)):
        if flags is None:
            entry |= {f"{key}_acc": None, f"{key}_ci95": [None, None]}
        else:
            entry |= {f"{key}_acc": float(flags.mean()), **_ci(key, flags)}
            worst &= flags
    attacked = square is not None or transfer is not None
    # no attack ran: there is no robust accuracy to report (clean accuracy is not one)
    entry["robust_acc"] = float(worst.mean()) if attacked else None
    entry["robust_n"] = int(worst.sum()) if attacked else None
    entry["robust_ci95"] = _ci("robust", worst)["robust_ci95"] if attacked else [None, None]
    return entry


def score_models(
    models: dict[str, OrtClassifier],
    labels: np.ndarray,
    clean: dict[str, np.ndarray],
    square: dict[str, np.ndarray],
    transfer: np.ndarray | None,
    margin: float,
) -> tuple[dict[str, Any], list[str]]:
    """Each model's accuracies on its attack examples (``square``: Square's, by model; ``transfer``: the
    transferred ones), scored under onnxruntime, and the warnings they raise."""
    results: dict[str, Any] = {}
    warnings: list[str] = []
    for name, model in models.items():
        flags = model.correct(square[name], labels, SCORE_BATCH) if name in square else None
        transferred = None if transfer is None else model.correct(transfer, labels)
        results[name] = _entry(clean[name], flags, transferred)
        warnings += filter(None, [_gradient_masking(name, results[name], margin)])
    if "model.int8.onnx" in results and results["model.onnx"]["robust_acc"] is not None:
        drop = results["model.onnx"]["robust_acc"] - results["model.int8.onnx"]["robust_acc"]
        if drop > margin:
            warnings.append(f"int8 loses {100 * drop:.1f} points of robust accuracy against fp32")
    for warning in warnings:
        log.warning(warning)
    return results, warnings


def models_latency(
    folder: Path,
    models: dict[str, OrtClassifier],
    torch_model: Any,
    input_shape: tuple[int, ...],
    repeats: int,
    threads: int = 0,
) -> tuple[dict[str, Any], list[str]]:
    """Latency/throughput/size of torch eager (if given), each ONNX session and the folder's .ort files."""
    results: dict[str, Any] = {}
    if torch_model is not None:
        from akd_edge.verify.transfer import torch_latency

        results["torch eager (fp32)"] = torch_latency(torch_model, input_shape, threads, repeats=repeats)
    for name, model in models.items():
        results[name] = {**ort_latency(model, input_shape, repeats=repeats), "bytes": file_size(model.path)}
    for name in MOBILE_MODELS:
        if (folder / name).is_file():
            mobile = OrtClassifier.load(folder / name, threads)
            results[name] = {**ort_latency(mobile, input_shape, repeats=repeats), "bytes": file_size(folder / name)}
    notes = []
    fp32, int8 = results.get("model.onnx"), results.get("model.int8.onnx")
    if fp32 and int8:
        ratio = int8["batch1_p50_ms"] / max(fp32["batch1_p50_ms"], 1e-9)
        if ratio > 1.0:
            notes.append(
                f"int8 is {ratio:.2f}x slower than fp32 at batch 1 on this machine: for a model this small the "
                "quantize/dequantize overhead outweighs the integer arithmetic; it is smaller on disk."
            )
        else:
            notes.append(f"int8 runs at {ratio:.2f}x the fp32 batch-1 latency on this machine.")
    return results, notes
