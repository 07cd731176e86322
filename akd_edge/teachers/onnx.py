"""ONNX teachers: a frozen classifier from any framework, run by onnxruntime inside a TeacherEnsemble.

Any framework exports ONNX, so any robust model can teach. :class:`OnnxTeacher` is an ``nn.Module`` whose
forward converts the batch to numpy, runs the session (CUDA provider when the run is on a GPU and this
onnxruntime has it, else CPU) and returns float32 logits on the batch's device, so the ensemble averages
it with torch members. It has no gradients: objectives that differentiate the teacher refuse it.

onnxruntime's CPU kernels are float32 (or int8) only. Where the run's speed plan gives frozen teachers bf16
(CPUs with AMX-BF16, as for torch teachers) and OpenVINO is installed (``pip install 'akd-edge[openvino]'``),
:meth:`OnnxTeacher.fast_path` runs the same file through OpenVINO at bf16 instead: 1.5-2x faster than the torch
bf16 fast path on the shipped teacher (``benchmarks/teacher_forward.py``).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from akd_edge.core.errors import ConfigError
from akd_edge.core.ort import OrtClassifier

log = logging.getLogger(__name__)

PREFIX = "onnx:"


class OnnxTeacher(nn.Module):
    """A frozen onnxruntime session as a teacher member: ``forward(x) -> logits`` on ``x``'s device."""

    differentiable: ClassVar[bool] = False
    """No autograd through onnxruntime (see :func:`akd_edge.teachers.require_autograd`)."""

    def __init__(self, classifier: OrtClassifier, openvino: Any = None) -> None:
        super().__init__()
        self.classifier = classifier
        self.openvino = openvino
        """An OpenVINO infer request for the same file (bf16 on the CPU), used instead of the session."""

    @property
    def source(self) -> str:
        return f"{PREFIX}{self.classifier.path}"

    @property
    def runtime(self) -> str:
        return "openvino bf16" if self.openvino is not None else "onnxruntime"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x.detach().to("cpu", torch.float32).contiguous().numpy()
        if self.openvino is not None:
            self.openvino.infer({0: images})
            logits = self.openvino.get_output_tensor(0).data  # the request's own buffer: copied below
        else:
            logits = self.classifier.session.run(None, {self.classifier.input_name: images})[0]
        return torch.from_numpy(np.array(logits, dtype=np.float32)).to(x.device)

    def fast_path(self, precision: str, device: torch.device) -> OnnxTeacher:
        """This teacher as a run with frozen teachers at ``precision`` on ``device`` should call it: through
        OpenVINO at bf16 when that is asked for on the CPU and OpenVINO is installed, else itself."""
        if precision != "bf16" or device.type != "cpu" or self.openvino is not None:
            return self
        try:
            import openvino
        except ImportError:
            log.info(
                "%s runs under onnxruntime in float32; `pip install 'akd-edge[openvino]'` runs it at bf16 on "
                "this CPU's AMX units (about 2x faster)",
                self.source,
            )
            return self
        data = Path(self.classifier.path).read_bytes()  # checked and compiled from the same bytes
        if _uses_external_data(data):
            log.info("%s keeps its weights in external files: it runs under onnxruntime", self.source)
            return self  # OpenVINO would open files the ONNX file names; onnxruntime confines them to its folder
        core = openvino.Core()
        settings = {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        try:
            model = core.read_model(io.BytesIO(data))
            request = core.compile_model(model, "CPU", settings).create_infer_request()
        except Exception as err:  # noqa: BLE001 - OpenVINO's own error types: onnxruntime runs it instead
            log.warning("OpenVINO cannot run %s (%s); it runs under onnxruntime", self.source, err)
            return self
        log.info("%s runs under OpenVINO at bf16", self.source)
        return OnnxTeacher(self.classifier, request)

    def __deepcopy__(self, memo: dict[int, Any]) -> OnnxTeacher:
        return self  # a frozen session: copies (speed-plan trials, fast paths) share it

    def extra_repr(self) -> str:
        if self.openvino is not None:
            return f"{self.source}, {self.runtime}"
        return f"{self.source}, providers={self.classifier.session.get_providers()}"


def _uses_external_data(data: bytes) -> bool:
    """True when a tensor of the ONNX model ``data`` (subgraphs included) points to data in another file."""
    import onnx

    def graphs_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from graph.initializer
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                for sub in [attribute.g, *attribute.graphs] if attribute.HasField("g") else attribute.graphs:
                    yield from graphs_tensors(sub)

    model = onnx.load_model_from_string(data)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in graphs_tensors(model.graph))


def providers_for(device: str | torch.device) -> list[Any]:
    """onnxruntime providers for a run on ``device``: CUDA (then CPU) when the run is on a GPU and available."""
    import onnxruntime as ort

    device = torch.device(device)
    if device.type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
        log.warning(
            "the run is on %s but this onnxruntime has no CUDA provider (install onnxruntime-gpu); "
            "the ONNX teacher runs on the CPU",
            device,
        )
    return ["CPUExecutionProvider"]


def load_onnx_teacher(
    path: str | Path,
    device: str | torch.device = "cpu",
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
) -> tuple[OnnxTeacher, dict[str, Any]]:
    """The teacher in ``path`` (without the ``onnx:`` prefix), checked against the data; plus its metadata.

    Intra-op threads follow torch's thread count. The input contract is checked here, with errors that say
    how to fix the export: one float32 input [batch, C, H, W] with the data's C, H, W and a dynamic batch,
    an output [batch, classes] with the data's class count, and a declared ``input_range`` (when the file
    has one, as akd-edge exports do) of [0, 1].
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"teacher {PREFIX}{path}: file not found")
    classifier = OrtClassifier.load(path, threads=torch.get_num_threads(), providers=providers_for(device))
    check_contract(classifier, input_shape, num_classes)
    return OnnxTeacher(classifier), dict(classifier.metadata)


def check_contract(model: OrtClassifier, input_shape: Sequence[int] | None, num_classes: int | None) -> None:
    """Raise ConfigError when ``model`` cannot teach on images of ``input_shape`` with ``num_classes``."""
    name = f"teacher {PREFIX}{model.path}"
    declared = model.session.get_inputs()[0]
    if declared.type != "tensor(float)":
        raise ConfigError(f"{name} takes {declared.type}; a teacher takes float32 images NCHW in [0, 1]")
    if model.batch is not None:
        raise ConfigError(
            f"{name} has a fixed batch of {model.batch}; export it with a dynamic batch axis "
            "(torch.onnx.export(..., dynamic_shapes=({0: torch.export.Dim('batch')},)) or "
            "dynamic_axes={'<input>': {0: 'batch'}})"
        )
    shape = tuple(int(v) for v in input_shape) if input_shape is not None else None
    if shape is not None and any(w is not None and w != g for w, g in zip(model.input_shape, shape, strict=True)):
        have = tuple("?" if w is None else w for w in model.input_shape)
        raise ConfigError(f"{name} takes inputs of shape {have} (C, H, W, NCHW), the data has {shape}")
    low_high = model.metadata.get("input_range")
    if low_high is not None and _range(low_high) != (0.0, 1.0):
        raise ConfigError(
            f"{name} declares input_range {low_high}; akd-edge feeds images in [0, 1]: put the model's "
            "normalisation inside the graph and export it again"
        )
    shape = shape or tuple(model.input_shape)
    if None in shape:
        return  # dynamic C/H/W and no data shape given: nothing to probe with
    probe = np.random.default_rng(0).random((2, *shape), dtype=np.float32)  # numpy RNG: torch's stays as it was
    try:
        out = model.session.run(None, {model.input_name: probe})[0]
    except Exception as err:  # onnxruntime's own error types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"{name} fails on a batch of 2 images ({first}); export it with a dynamic batch axis"
        ) from None
    if out.ndim != 2 or out.shape[0] != 2:
        raise ConfigError(f"{name} returns shape {list(out.shape)} for 2 images; a teacher returns logits [N, classes]")
    if num_classes is not None and out.shape[1] != num_classes:
        raise ConfigError(f"{name} has {out.shape[1]} classes, the data has {num_classes}")
    if np.all(out >= 0) and np.allclose(out.sum(1), 1.0, atol=1e-4):
        log.warning("%s seems to return probabilities; a teacher should return logits (softmax is applied)", name)


def _range(value: Any) -> tuple[float, float] | None:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return low, high
