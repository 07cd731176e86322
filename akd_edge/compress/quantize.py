"""Static int8 quantization of an exported fp32 ONNX classifier with onnxruntime (QDQ format).

Weights are quantized per output channel (int8, symmetric) and activations per tensor (uint8 by
default, the CPU recommendation of onnxruntime), with ranges calibrated on training images. QDQ keeps
the graph in standard ONNX ops (QuantizeLinear / DequantizeLinear around float ops) that onnxruntime
fuses into integer kernels and NNAPI runs natively. Quantization can change a robust model's decision
boundary, so ``akd-edge verify`` measures the int8 model's robustness again instead of assuming it.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("uint8", "int8")


class _ImageReader:
    """onnxruntime's CalibrationDataReader protocol over an array of images in [0, 1]."""

    def __init__(self, input_name: str, images: np.ndarray, batch_size: int) -> None:
        self._batches = iter([{input_name: images[i : i + batch_size]} for i in range(0, len(images), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_int8(
    fp32_path: str | Path,
    int8_path: str | Path,
    calibration_images: np.ndarray,
    *,
    per_channel: bool = True,
    method: str = "minmax",
    activation_type: str = "uint8",
    batch_size: int = 64,
) -> dict[str, Any]:
    """Write a static int8 QDQ copy of ``fp32_path`` to ``int8_path``; returns its settings for the report.

    ``calibration_images``: uint8 or float [N, C, H, W] in [0, 1], drawn from the training split (never
    the test split the int8 model is later scored on). The fp32 file's metadata is carried over.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from akd_edge.verify.runtime import as_float_images

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}, got {method!r}")
    if activation_type not in ACTIVATION_TYPES:
        raise ValueError(f"activation type must be one of {ACTIVATION_TYPES}, got {activation_type!r}")
    images = as_float_images(calibration_images)
    if len(images) == 0:
        raise ValueError("int8 calibration needs at least one image")
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    source = onnx.load(str(fp32_path))
    input_name = source.graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(
            str(prepared),
            str(int8_path),
            _ImageReader(input_name, images, batch_size),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method={
                "minmax": CalibrationMethod.MinMax,
                "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile,
            }[method],
            calibration_providers=["CPUExecutionProvider"],
        )
    quantized = onnx.load(str(int8_path))
    props = {p.key: p.value for p in source.metadata_props}
    props.update({p.key: p.value for p in quantized.metadata_props})
    props["precision"] = "int8"
    onnx.helper.set_model_props(quantized, props)
    quantized.doc_string = source.doc_string
    onnx.save(quantized, str(int8_path))
    ops = [node.op_type for node in quantized.graph.node]
    log.info(
        "int8: %d QuantizeLinear, %d DequantizeLinear nodes", ops.count("QuantizeLinear"), ops.count("DequantizeLinear")
    )
    return {
        "format": "QDQ",
        "weights": "int8 symmetric, " + ("per channel" if per_channel else "per tensor"),
        "activations": f"{activation_type} per tensor",
        "calibration": method,
        "calibration_images": len(images),
        "calibration_split": "train",
    }
