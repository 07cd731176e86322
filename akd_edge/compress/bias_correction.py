"""Empirical bias correction of int8 weights (Nagel et al. 2019, "Data-Free Quantization", section 4.2).

Rounding a layer's weights to int8 shifts the mean of each of its output channels; on a small CNN the
shifts add up through the layers and flip the argmax of images near a decision boundary. The correction
measures each shift on the calibration images, layer by layer with the layers before it already
quantized and corrected, and subtracts it from the float bias, so the int8 model keeps the fp32 model's
mean activations. It needs the int8 weights exactly as onnxruntime rounds them: they are read back from a
first quantization pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
"""Ops whose second input is a weight."""


def dequantized_weights(quantized: Any) -> dict[str, np.ndarray]:
    """The int8 weight of each weighted node of a QDQ model, dequantized to float, by node name."""
    from onnx import numpy_helper

    inits = {init.name: numpy_helper.to_array(init) for init in quantized.graph.initializer}
    dequantizers = {node.output[0]: node for node in quantized.graph.node if node.op_type == "DequantizeLinear"}
    weights = {}
    for node in quantized.graph.node:
        dq = dequantizers.get(node.input[1]) if node.op_type in WEIGHTED_OPS and len(node.input) > 1 else None
        if dq is None or dq.input[0] not in inits:
            continue
        q, scale = inits[dq.input[0]].astype(np.float64), inits[dq.input[1]].astype(np.float64)
        zero = inits[dq.input[2]].astype(np.float64) if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale)
        if scale.ndim == 1 and q.ndim > 1:  # per channel along the DequantizeLinear's axis
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) % q.ndim
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        weights[node.name] = ((q - zero) * scale).astype(np.float32)
    return weights


def _layer_outputs(model: Any, names: list[str], images: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """The named tensors of ``model`` on ``images``, one onnxruntime session on one thread."""
    import onnx
    import onnxruntime as ort

    model = onnx.ModelProto.FromString(model.SerializeToString())
    del model.graph.output[:]
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = model.graph.input[0].name
    batches = [session.run(names, {feed: images[i : i + batch_size]}) for i in range(0, len(images), batch_size)]
    return [np.concatenate([batch[k] for batch in batches]) for k in range(len(names))]


def correct_biases(model: Any, int8_weights: dict[str, np.ndarray], images: np.ndarray, batch_size: int = 64) -> Any:
    """A copy of the float ``model`` whose weighted nodes' biases cancel the mean shift of their int8 weights.

    ``int8_weights``: :func:`dequantized_weights` of the first pass. Nodes without a constant bias input
    (a Conv without bias, MatMul) are left as they are. The returned model keeps its float weights, so the
    second quantization pass rounds them to the same int8 values.
    """
    import onnx
    from onnx import numpy_helper

    corrected = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {init.name: init for init in corrected.graph.initializer}
    layers = [
        node
        for node in corrected.graph.node
        if node.name in int8_weights and len(node.input) > 2 and node.input[2] in inits
    ]
    if not layers:
        return corrected
    reference = _layer_outputs(model, [node.output[0] for node in layers], images, batch_size)
    simulated = onnx.ModelProto.FromString(corrected.SerializeToString())
    sim_inits = {init.name: init for init in simulated.graph.initializer}
    for node in layers:  # every weight rounded; biases corrected in graph order
        sim_inits[node.input[1]].CopyFrom(numpy_helper.from_array(int8_weights[node.name], node.input[1]))
    for node, expected in zip(layers, reference, strict=True):
        (actual,) = _layer_outputs(simulated, [node.output[0]], images, batch_size)
        axes = tuple(a for a in range(actual.ndim) if a != 1)
        bias = numpy_helper.to_array(inits[node.input[2]])
        shift = (actual.astype(np.float64) - expected).mean(axis=axes).reshape(bias.shape)
        new_bias = (bias - shift).astype(bias.dtype)
        inits[node.input[2]].CopyFrom(numpy_helper.from_array(new_bias, node.input[2]))
        sim_inits[node.input[2]].CopyFrom(numpy_helper.from_array(new_bias, node.input[2]))
    return corrected
