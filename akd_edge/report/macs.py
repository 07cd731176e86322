"""Multiply-accumulates per image, counted from an ONNX graph (so the report needs no torch and no checkpoint).

Only the layers that dominate a convolutional classifier are counted: ``Conv`` (output elements x input
channels per group x kernel size) and ``Gemm``/``MatMul`` (output elements x inner dimension). Shapes come
from ONNX shape inference with the batch fixed at 1; an int8 QDQ graph keeps the same ``Conv`` nodes, fed by
``DequantizeLinear``, so fp32 and int8 files of one model count the same.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

log = logging.getLogger(__name__)


def _dims(value_info: object) -> list[int] | None:
    """Static dims of a tensor's shape; None when any is unknown."""
    shape = value_info.type.tensor_type.shape  # type: ignore[attr-defined]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]
    return None if any(d is None for d in dims) else dims  # type: ignore[return-value]


def onnx_macs(path: str | Path) -> int | None:
    """MACs of one image through the graph in ``path``, or None when the file cannot be read or shaped."""
    import onnx

    try:
        model = onnx.load(str(path))
        graph_input = model.graph.input[0]
        for dim in graph_input.type.tensor_type.shape.dim[:1]:
            dim.Clear()
            dim.dim_value = 1
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as err:  # a damaged or foreign file: the report shows n/a, it does not fail
        log.warning("cannot count the MACs of %s: %s", path, err)
        return None
    graph = inferred.graph
    shapes: dict[str, list[int] | None] = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        shapes[info.name] = _dims(info)
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    total = 0
    for node in graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        if out is None:
            continue
        if node.op_type == "Conv" and len(node.input) > 1:
            weight = shapes.get(node.input[1])
            if weight is None or len(weight) < 3:
                continue
            total += math.prod(out[1:]) * weight[1] * math.prod(weight[2:])
        elif node.op_type in ("Gemm", "MatMul"):
            first = shapes.get(node.input[0])
            if not first:
                continue
            transposed = node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute)
            inner = first[-2] if transposed and len(first) >= 2 else first[-1]
            total += math.prod(out[1:] if len(out) > 1 else out) * inner
    return int(total)
