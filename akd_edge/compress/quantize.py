"""Static int8 quantization of an exported fp32 ONNX classifier with onnxruntime (QDQ format).

Weights are quantized per output channel (int8, symmetric) and activations per tensor (uint8 by
default, the CPU recommendation of onnxruntime), with ranges calibrated on training images; the logits
(the final layer's output) stay float and the biases are corrected for the int8 weights by default, see
:class:`Int8Settings`. QDQ keeps the graph in standard ONNX ops (QuantizeLinear / DequantizeLinear around
float ops) that onnxruntime fuses into integer kernels and NNAPI runs natively. Quantization can change a
robust model's decision boundary, so ``akd-edge verify`` measures the int8 model's robustness again
instead of assuming it.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from akd_edge.compress.bias_correction import WEIGHTED_OPS, correct_biases, dequantized_weights

log = logging.getLogger(__name__)

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("uint8", "int8")
FLOAT_LAYERS = ("none", "stem", "first", "last", "first+last")
POOLS = ("MaxPool",)
"""Pools that commute with a ReLU (both monotone): the stem runs ``MaxPool`` before ``Relu``."""


class _ImageReader:
    """onnxruntime's CalibrationDataReader protocol over an array of images in [0, 1]."""

    def __init__(self, input_name: str, images: np.ndarray, batch_size: int) -> None:
        self._batches = iter([{input_name: images[i : i + batch_size]} for i in range(0, len(images), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


@dataclass(frozen=True)
class Int8Settings:
    """How the int8 model is calibrated and where its QuantizeLinear / DequantizeLinear pairs go.

    The defaults are the best of ``benchmarks/int8_calibration.py`` (results in
    ``benchmarks/results/int8_calibration.json`` and ``int8_placement.json``). Two changes mattered:
    keeping the logits in float (quantized to 8 bits, logits a step apart tie, and argmax then picks the
    lower class), and bias correction: on the 24k-parameter students the int8 weights, not the
    activations, flip the argmax, and correcting their mean shift took agreement from 99.4% to 99.7%.
    Leaving the first or last layer in float did not help agreement; leaving the stem in float is for speed
    (``float_layers``).
    """

    method: str = "minmax"
    """Activation range calibration: ``minmax`` (observed range), ``entropy`` (KL-divergence threshold),
    ``percentile`` (clip at ``percentile`` of the absolute values)."""
    percentile: float = 99.999
    """The percentile of ``percentile`` calibration, in (0, 100]; ignored by the other methods."""
    per_channel: bool = True
    """Weight scales per output channel (else one per tensor)."""
    symmetric_activations: bool = False
    """Activation ranges symmetric around 0 (ONNX Runtime's ``ActivationSymmetric``); with uint8 this
    wastes half the range on ReLU outputs, and ONNX Runtime then keeps the ReLU nodes."""
    float_logits: bool = True
    """Leave the output of the final layer (the logits) unquantized (``OpTypesToExcludeOutputQuantization``
    for the op that produces the graph output); its weights and input stay int8."""
    activation_type: str = "uint8"
    """``uint8`` (ONNX Runtime's CPU recommendation) or ``int8``."""
    float_layers: str = "stem"
    """Layers that run in float, with float weights and bias (onnxruntime's ``nodes_to_exclude``): ``none``,
    ``stem`` (the first weighted layer with the activation and pooling after it), ``first`` (the first
    weighted layer in graph order, which sees the image), ``last`` (the last, which makes the logits: they
    are float whatever ``float_logits`` says) or ``first+last``. The layer's input keeps the 8-bit rounding
    of the quantized op before it. Each float weight costs 3 more bytes in the file.

    ``stem`` is the default for speed: a convolution over 1-3 image channels has too few inputs per output
    for onnxruntime's int8 GEMM (the 24k Fashion-MNIST student's first conv took 4.8 ms in int8 against
    1.1 ms in float at batch 256), and an 8-bit max-pool outside the NHWC int8 chain runs on onnxruntime's
    slow generic kernel, so the stem's ``Relu -> MaxPool`` is written ``MaxPool -> Relu`` (the same values)
    to keep that pool in float (``benchmarks/export_latency.py``)."""
    bias_correction: bool = True
    """Shift each quantized layer's float bias so that its int8 weights keep the fp32 mean output per
    channel, measured on the calibration images (empirical bias correction,
    :mod:`akd_edge.compress.bias_correction`); costs one more quantization pass and one calibration run
    per layer, and nothing in the file."""

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}, got {self.method!r}")
        if self.activation_type not in ACTIVATION_TYPES:
            raise ValueError(f"activation type must be one of {ACTIVATION_TYPES}, got {self.activation_type!r}")
        if not 0 < self.percentile <= 100:  # also refuses NaN
            raise ValueError(f"calibration percentile must be in (0, 100], got {self.percentile}")
        if self.float_layers not in FLOAT_LAYERS:
            raise ValueError(f"float layers must be one of {FLOAT_LAYERS}, got {self.float_layers!r}")


def stem_nodes(model: Any) -> list[str]:
    """The first weighted node and the nodes after it up to the next weighted one (graph order is topological)."""
    nodes = list(model.graph.node)
    first = next((i for i, node in enumerate(nodes) if node.op_type in WEIGHTED_OPS), len(nodes))
    stem = nodes[first : first + 1]
    for node in nodes[first + 1 :]:
        if node.op_type in WEIGHTED_OPS:
            break
        stem.append(node)
    return [node.name for node in stem]


def float_layer_nodes(model: Any, float_layers: str) -> list[str]:
    """Names of the nodes that ``float_layers`` leaves in float (graph order is topological)."""
    weighted = [node.name for node in model.graph.node if node.op_type in WEIGHTED_OPS]
    if not weighted or float_layers == "none":
        return []
    if float_layers == "stem":
        nodes = stem_nodes(model)
    else:
        picked = {"first": weighted[:1], "last": weighted[-1:], "first+last": [weighted[0], weighted[-1]]}
        nodes = list(dict.fromkeys(picked[float_layers]))
    if any(not name for name in nodes):
        raise ValueError("a layer to leave in float has no node name, so onnxruntime cannot exclude it")
    return nodes


def pool_before_relu(model: Any, names: list[str]) -> Any:
    """``model`` with each ``Relu -> MaxPool`` among the nodes ``names`` written ``MaxPool -> Relu``.

    The outputs are identical (max and ReLU are both monotone); the pool then runs in float, before the
    QuantizeLinear that follows the ReLU, where onnxruntime would otherwise move that QuantizeLinear above the
    pool and run the pool in 8 bits on its slow generic kernel. Only a ReLU whose one consumer is the pool
    (and which is no graph output) is moved.
    """
    import onnx

    chosen = set(names)
    outputs = {output.name for output in model.graph.output}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    nodes = list(model.graph.node)
    for relu in [n for n in nodes if n.op_type == "Relu" and n.name in chosen and n.output[0] not in outputs]:
        after = consumers.get(relu.output[0], [])
        if len(after) != 1 or after[0].op_type not in POOLS or after[0].name not in chosen:
            continue
        pool = after[0]
        source, middle, result = relu.input[0], relu.output[0], pool.output[0]
        pool.input[0], pool.output[0], relu.input[0], relu.output[0] = source, middle, middle, result
        nodes.remove(relu)
        nodes.insert(nodes.index(pool) + 1, relu)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.value_info[:]  # the moved tensors changed shape: infer them again
    return onnx.shape_inference.infer_shapes(model)


def _output_op_type(model: Any) -> str | None:
    """The op type of the node that produces the graph's first output (the logits)."""
    name = model.graph.output[0].name
    return next((node.op_type for node in model.graph.node if name in node.output), None)


def _quantize_static(
    prepared: Path,
    out: Path,
    input_name: str,
    images: np.ndarray,
    *,
    settings: Int8Settings,
    float_nodes: list[str],
    extra: dict[str, Any],
    batch_size: int,
) -> None:
    """One onnxruntime ``quantize_static`` call (QDQ, int8 weights) with ``settings``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(prepared),
        str(out),
        _ImageReader(input_name, images, batch_size),
        quant_format=QuantFormat.QDQ,
        per_channel=settings.per_channel,
        activation_type=QuantType.QUInt8 if settings.activation_type == "uint8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method={
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[settings.method],
        calibration_providers=["CPUExecutionProvider"],
        nodes_to_exclude=float_nodes,
        extra_options=extra,
    )


def quantize_int8(
    fp32_path: str | Path,
    int8_path: str | Path,
    calibration_images: np.ndarray,
    settings: Int8Settings | None = None,
    *,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Write a static int8 QDQ copy of ``fp32_path`` to ``int8_path``; returns its settings for the report.

    ``calibration_images``: uint8 or float [N, C, H, W] in [0, 1], drawn from the training split (never
    the test split the int8 model is later scored on). The fp32 file's metadata is carried over.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from akd_edge.core.ort import as_float_images

    settings = settings or Int8Settings()
    images = as_float_images(calibration_images)
    if len(images) == 0:
        raise ValueError("int8 calibration needs at least one image")
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    source = onnx.load(str(fp32_path))
    input_name = source.graph.input[0].name
    extra: dict[str, Any] = {"ActivationSymmetric": settings.symmetric_activations, "WeightSymmetric": True}
    if settings.method == "percentile":
        extra["CalibPercentile"] = settings.percentile
    output_op = _output_op_type(source)
    if settings.float_logits and output_op is not None:
        extra["OpTypesToExcludeOutputQuantization"] = [output_op]
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        # node names are taken after pre-processing, which may rename or fold nodes
        float_nodes = float_layer_nodes(onnx.load(str(prepared)), settings.float_layers)
        if settings.float_layers == "stem":
            onnx.save(pool_before_relu(onnx.load(str(prepared)), float_nodes), str(prepared))
        run = {"settings": settings, "float_nodes": float_nodes, "extra": extra, "batch_size": batch_size}
        if settings.bias_correction:
            first_pass = Path(tmp) / "first-pass.onnx"
            _quantize_static(prepared, first_pass, input_name, images, **run)
            int8_weights = dequantized_weights(onnx.load(str(first_pass)))
            onnx.save(correct_biases(onnx.load(str(prepared)), int8_weights, images, batch_size), str(prepared))
        _quantize_static(prepared, int8_path, input_name, images, **run)
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
    return settings_record(settings, len(images), output_op, float_nodes)


def settings_record(
    settings: Int8Settings, n_images: int, output_op: str | None = None, float_nodes: list[str] | None = None
) -> dict[str, Any]:
    """The report's ``quantization`` section: human-readable fields plus the settings themselves."""
    method = settings.method + (f" {settings.percentile:g}" if settings.method == "percentile" else "")
    logits = "float (output of the final " + (output_op or "layer") + " not quantized)"
    if "last" in settings.float_layers:
        logits = "float (the final " + (output_op or "layer") + " runs in float)"
    elif not settings.float_logits:
        logits = f"{settings.activation_type} (quantized)"
    return {
        "format": "QDQ",
        "weights": "int8 symmetric, " + ("per channel" if settings.per_channel else "per tensor"),
        "activations": f"{settings.activation_type} per tensor, "
        + ("symmetric" if settings.symmetric_activations else "asymmetric"),
        "logits": logits,
        "float_layers": settings.float_layers,
        "float_nodes": list(float_nodes or []),
        "calibration": method,
        "bias_correction": settings.bias_correction,
        "calibration_images": n_images,
        "calibration_split": "train",
        "settings": asdict(settings),
    }
