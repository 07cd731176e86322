"""How closely two runtimes of one model agree: fp32 and int8 on the test split, an ``.onnx`` file and its
``.ort``, and torch's own accuracy on the same images (the tolerances are :mod:`akd_edge.core.ort`'s)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import nn


def int8_agreement(
    fp32_path: Path, int8_path: Path, images: np.ndarray, labels: np.ndarray, threshold: float
) -> dict[str, Any]:
    """fp32 against int8 under onnxruntime on the test images: argmax agreement (passed at ``threshold``) and
    each one's clean accuracy."""
    from akd_edge.core.ort import OrtClassifier

    fp32 = OrtClassifier.load(fp32_path).predict(images)
    int8 = OrtClassifier.load(int8_path).predict(images)
    agree = float((fp32.argmax(1) == int8.argmax(1)).mean())
    return {
        "n": len(images),
        "split": "test",
        "argmax_agreement": agree,
        "threshold": threshold,
        "passed": bool(agree >= threshold),
        "fp32_clean_acc": float((fp32.argmax(1) == labels).mean()),
        "int8_clean_acc": float((int8.argmax(1) == labels).mean()),
        "max_abs_logit_diff": float(np.abs(fp32 - int8).max()),
    }


def ort_parity(onnx_path: Path, ort_path: Path, images: np.ndarray) -> dict[str, Any]:
    """An ``.ort`` file against the ``.onnx`` it was converted from: logit difference and argmax agreement."""
    from akd_edge.core.ort import OrtClassifier

    reference = OrtClassifier.load(onnx_path).predict(images)
    mobile = OrtClassifier.load(ort_path).predict(images)
    return {
        "n": len(images),
        "max_abs_logit_diff": float(np.abs(reference - mobile).max()),
        "argmax_agreement": float((reference.argmax(1) == mobile.argmax(1)).mean()),
    }


def torch_accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """The torch model's accuracy on the images, in batches of 256."""
    import torch

    from akd_edge.core.ort import as_float_images

    x = as_float_images(images)
    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(x[i : i + 256])).argmax(1) for i in range(0, len(x), 256)])
    return float((pred.numpy() == labels).mean())


def int8_failure_action(agreement: dict[str, Any]) -> str:
    """What a failed fp32-vs-int8 agreement did to the export, in one sentence (report.json, the card, the CLI)."""
    found = (
        f"int8 and fp32 agree on {100 * agreement['argmax_agreement']:.2f}% of {agreement['n']} test images, below "
        f"--min-int8-agreement {100 * agreement['threshold']:.2f}%"
    )
    if agreement["kept"]:
        return f"{found}; the int8 files were kept as --keep-failed-int8 asked"
    return (
        f"{found}: the int8 files were not written, the fp32 model is the export (--keep-failed-int8 keeps int8 "
        "anyway; --no-bias-correction, --calib or --float-layers may raise the agreement)"
    )
