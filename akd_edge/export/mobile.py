"""onnxruntime-mobile: the ``.ort`` file, and how much of a graph NNAPI and CoreML can run.

The coverage figures come from onnxruntime's own mobile usability checker
(``python -m onnxruntime.tools.check_onnx_model_mobile_usability``), called through its Python API so
the numbers go into the report instead of a log: the graph is optimised to the BASIC level (what an
app's session does first) and each node is matched against the execution provider's list of supported
operators. NNAPI needs fixed shapes, so a graph with a dynamic batch shows 0 % on it; the mobile files
therefore get a fixed batch (1 by default: an app classifies one camera frame at a time).
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EPS = {
    "nnapi": "NNAPI (Android)",
    "coreml_neuralnetwork": "CoreML NeuralNetwork (iOS)",
    "coreml_mlprogram": "CoreML MLProgram (iOS 15+)",
}


def _partitions(model: Any, ep: str, require_fixed_sizes: bool) -> Any:
    from onnxruntime.tools.mobile_helpers import usability_checker as checker

    if ep == "nnapi":
        return checker.check_nnapi_partitions(model, require_fixed_sizes)
    table = (
        "coreml_supported_neuralnetwork_ops.md" if ep == "coreml_neuralnetwork" else "coreml_supported_mlprogram_ops.md"
    )
    return checker.check_coreml_partitions(model, require_fixed_sizes, table)


def mobile_usability(path: str | Path) -> dict[str, Any]:
    """Per execution provider: nodes it can run, partitions, unsupported ops, and onnxruntime's verdict.

    ``supported_pct`` is the share of nodes (after BASIC optimisation) that the EP takes; ``verdict`` is
    the checker's YES / MAYBE / NO. One partition covering every node is the ideal.
    """
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / path.name
        optimize_model(path, optimized)
        model = ModelProtoWithShapeInfo(optimized).model_with_shape_info
        report: dict[str, Any] = {}
        for ep, label in EPS.items():
            info = _partitions(model, ep, require_fixed_sizes=True)
            report[ep] = {
                "label": label,
                "nodes": info.num_nodes,
                "supported_nodes": info.num_supported_nodes,
                "supported_pct": round(100.0 * info.num_supported_nodes / max(info.num_nodes, 1), 1),
                "partitions": info.num_partitions,
                "unsupported_ops": sorted(info.unsupported_ops),
                "nodes_unsupported_due_to_dynamic_shape": info.nodes_unsupported_due_to_dynamic_input,
                "verdict": info.suitability().name,
            }
    return report


def fix_batch(src: str | Path, dst: str | Path, batch: int = 1) -> None:
    """Copy ``src`` with its dynamic batch dimension fixed to ``batch`` (outputs too)."""
    import onnx
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_dim_param_fixed

    model = onnx.load(str(src))
    params = {dim.dim_param for dim in model.graph.input[0].type.tensor_type.shape.dim if dim.HasField("dim_param")}
    for param in params:
        make_dim_param_fixed(model.graph, param, batch)
    fix_output_shapes(model)
    onnx.save(model, str(dst))


def to_ort(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Convert an ONNX file to onnxruntime's mobile format with ``convert_onnx_models_to_ort``.

    The *runtime* optimisation style is used, as onnxruntime recommends for NNAPI and CoreML: the file
    keeps the BASIC-level graph (what those EPs take) and records the CPU-only fusions, which an app
    replays by setting the session option ``session.enable_saved_runtime_optimizations`` to ``1``.
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    src, dst = Path(src), Path(dst)
    stray = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "in"
        work.mkdir()
        shutil.copy(src, work / "model.onnx")
        chatty = logging.getLogger("ort_format_model.utils")  # set to DEBUG when onnxruntime's tools load
        level = chatty.level
        chatty.setLevel(logging.WARNING)
        try:
            with contextlib.redirect_stdout(stray):
                convert_onnx_models_to_ort(
                    work / "model.onnx", output_dir=Path(tmp) / "out", optimization_styles=[OptimizationStyle.Runtime]
                )
        finally:
            chatty.setLevel(level)
        produced = sorted((Path(tmp) / "out").glob("*.ort"))
        if not produced:
            raise RuntimeError(f"onnxruntime produced no .ort file from {src}: {stray.getvalue()[-500:]}")
        shutil.move(str(produced[0]), dst)
    log.debug("convert_onnx_models_to_ort: %s", stray.getvalue().strip())
    return {"optimization_style": "runtime", "replay_option": "session.enable_saved_runtime_optimizations=1"}
