"""Torch -> ONNX: a clean fp32 graph with a dynamic batch, akd-edge metadata, the checker, and parity.

The graph takes images float32 NCHW in [0, 1] and returns logits; normalisation is inside (it is a layer
of every akd-edge model). torch's dynamo exporter (``torch.export``) gives the smallest graph here: the
batch-dependent reshape of the head becomes a constant-shape ``Reshape``, with no ``Shape``/``Gather``
arithmetic. Two rewrites then keep every node on the mobile execution providers' lists: a global mean
over H and W becomes ``GlobalAveragePool`` (CoreML NeuralNetwork has no ``ReduceMean``) and
``Flatten(axis=1)`` becomes ``Reshape`` (CoreML MLProgram has no ``Flatten``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"


def _export_dynamo(model: nn.Module, example: torch.Tensor, path: Path, opset: int | None) -> None:
    batch = torch.export.Dim(BATCH_DIM)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: batch},),
        external_data=False,
        opset_version=opset,
        verbose=False,
    )


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, opset: int | None) -> None:
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
        opset_version=opset or 17,
    )


def torch_to_onnx(model: nn.Module, path: str | Path, input_shape: Sequence[int], *, opset: int | None = None) -> str:
    """Write ``model`` (in eval mode) to ``path`` as one self-contained ONNX file; returns the exporter used.

    The dynamo exporter is tried first; a model it cannot trace falls back to the TorchScript exporter.
    """
    path = Path(path)
    example = torch.rand(2, *input_shape)
    was_training = model.training
    model.eval()
    stray = io.StringIO()
    try:
        with contextlib.redirect_stdout(stray), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecation notices from inside torch.export
            try:
                _export_dynamo(model, example, path, opset)
                exporter = "dynamo"
            except Exception as err:  # an unsupported op or data-dependent shape in a user's model
                log.warning("dynamo ONNX export failed (%s); falling back to the TorchScript exporter", err)
                _export_torchscript(model, example, path, opset)
                exporter = "torchscript"
    finally:
        model.train(was_training)
    if stray.getvalue().strip():
        log.debug("torch.onnx output: %s", stray.getvalue().strip())
    return exporter


def _const_name(graph: Any, base: str) -> str:
    names = {init.name for init in graph.initializer} | {out for node in graph.node for out in node.output}
    name, k = base, 0
    while name in names:
        k += 1
        name = f"{base}_{k}"
    return name


def _reduce_axes(node: Any, initializers: dict[str, np.ndarray]) -> list[int] | None:
    """Axes of a ReduceMean (attribute before opset 18, constant input from 18), or None if unknown."""
    from onnx import helper

    for attr in node.attribute:
        if attr.name == "axes":
            return list(helper.get_attribute_value(attr))
    if len(node.input) > 1 and node.input[1] in initializers:
        return [int(a) for a in initializers[node.input[1]].ravel()]
    return None


def mobile_friendly(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Rewrite ops the mobile EPs lack into equivalent supported ones; returns the model and what changed.

    ``ReduceMean`` over axes (2, 3) of a 4-D tensor -> ``GlobalAveragePool`` (+ ``Reshape [0, -1]`` when
    ``keepdims=0``); ``Flatten(axis=1)`` -> ``Reshape [0, -1]``. Node metadata and doc strings written by
    the exporter are dropped: they are debugging aids that would double a small model's file size.
    """
    import onnx
    from onnx import helper, numpy_helper

    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {
        vi.name: len(vi.type.tensor_type.shape.dim)
        for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
        if vi.type.tensor_type.HasField("shape")
    }
    graph = model.graph
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    flat_shape: str | None = None
    changes: list[str] = []
    new_nodes = []
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
        spatial_mean, keep = False, 1
        if node.op_type == "ReduceMean" and ranks.get(node.input[0]) == 4:
            axes = _reduce_axes(node, initializers)
            keep = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "keepdims"), 1)
            spatial_mean = axes is not None and sorted(a % 4 for a in axes) == [2, 3]
        flatten = node.op_type == "Flatten" and all(
            helper.get_attribute_value(a) == 1 for a in node.attribute if a.name == "axis"
        )
        if ((spatial_mean and not keep) or flatten) and flat_shape is None:
            flat_shape = _const_name(graph, "flatten_shape")
            graph.initializer.append(numpy_helper.from_array(np.array([0, -1], dtype=np.int64), flat_shape))
        if spatial_mean:
            pooled = node.output[0] if keep else _const_name(graph, f"{node.output[0]}_pooled")
            new_nodes.append(helper.make_node("GlobalAveragePool", [node.input[0]], [pooled], name=f"{node.name}_gap"))
            if not keep:
                new_nodes.append(
                    helper.make_node("Reshape", [pooled, flat_shape], [node.output[0]], name=f"{node.name}_reshape")
                )
            changes.append(f"{node.name}: ReduceMean(axes 2,3) -> GlobalAveragePool")
        elif flatten:
            new_nodes.append(helper.make_node("Reshape", [node.input[0], flat_shape], [node.output[0]], name=node.name))
            changes.append(f"{node.name}: Flatten -> Reshape")
        else:
            new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {name for node in graph.node for name in node.input}
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:  # the axes constants of replaced ReduceMean nodes
        graph.initializer.remove(init)
    return model, changes


def set_metadata(model: onnx.ModelProto, metadata: dict[str, Any]) -> None:
    """Write ``metadata`` into ``metadata_props`` (strings as is, everything else as JSON)."""
    existing = {prop.key: prop for prop in model.metadata_props}
    for key, value in metadata.items():
        text = value if isinstance(value, str) else json.dumps(value)
        if key in existing:
            existing[key].value = text
        else:
            model.metadata_props.add(key=key, value=text)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """``metadata_props`` of an ONNX file, JSON values decoded."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    out: dict[str, Any] = {}
    for prop in model.metadata_props:
        try:
            out[prop.key] = json.loads(prop.value)
        except json.JSONDecodeError:
            out[prop.key] = prop.value
    return out


def check_onnx(path: str | Path) -> dict[str, Any]:
    """``onnx.checker.check_model(full_check=True)`` (structure, types, strict shape inference)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        return {"passed": False, "error": str(err).splitlines()[0]}
    return {"passed": True}


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_shape: Sequence[int],
    metadata: dict[str, Any],
    *,
    opset: int | None = None,
) -> dict[str, Any]:
    """Export, rewrite for mobile, add metadata, save and check; returns what happened (for the report)."""
    import onnx

    path = Path(path)
    exporter = torch_to_onnx(model, path, input_shape, opset=opset)
    proto = onnx.load(str(path))
    proto, changes = mobile_friendly(proto)
    set_metadata(proto, metadata)
    proto.doc_string = "akd-edge image classifier: images float32 NCHW in [0, 1] -> logits"
    onnx.save(proto, str(path))
    checker = check_onnx(path)
    return {
        "exporter": exporter,
        "opset": max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "ops": sorted({node.op_type for node in proto.graph.node}),
        "nodes": len(proto.graph.node),
        "rewrites": changes,
        "checker": checker,
    }


def check_parity(
    model: nn.Module,
    onnx_path: str | Path,
    images: np.ndarray,
    *,
    rtol: float = 1e-4,
    min_argmax_agreement: float = 0.999,
) -> dict[str, Any]:
    """Torch vs onnxruntime logits on ``images``: max abs difference and argmax agreement, with thresholds.

    The difference passes when it is at most ``rtol * max(1, max |torch logit|)``, a bound that scales
    with the logits (float32 rounding differs between the two runtimes).
    """
    from akd_edge.core.ort import OrtClassifier, as_float_images

    x = as_float_images(images)
    ort_model = OrtClassifier.load(onnx_path)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            reference = torch.cat([model(torch.from_numpy(x[i : i + 256])) for i in range(0, len(x), 256)]).numpy()
    finally:
        model.train(was_training)
    logits = ort_model.predict(x)
    max_abs = float(np.abs(reference - logits).max())
    tolerance = rtol * max(1.0, float(np.abs(reference).max()))
    agreement = float((reference.argmax(1) == logits.argmax(1)).mean())
    return {
        "n": len(x),
        "max_abs_logit_diff": max_abs,
        "max_abs_logit_diff_threshold": tolerance,
        "argmax_agreement": agreement,
        "argmax_agreement_threshold": min_argmax_agreement,
        "passed": bool(max_abs <= tolerance and agreement >= min_argmax_agreement),
    }
