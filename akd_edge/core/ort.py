"""An exported classifier under onnxruntime: load it with clear errors, predict in batches, time it.

Needs only numpy and onnxruntime (imported when a model is loaded): the models run on a machine without
torch. Only :meth:`OrtClassifier.torch_predict`, the adapter the Square attack calls, imports torch.
Images are float32 NCHW in [0, 1] (uint8 images are scaled on the way in). The tolerances within which two
runtimes of one model file agree (verify's replay, the export's web page) are here too.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from akd_edge.core.errors import DataError, UsageError

log = logging.getLogger(__name__)


# -- runtime agreement: how far two runtimes of one model file may differ (verify replay, the web page) --

FP32_LOGIT_BOUND = 1e-3
"""Largest |logit difference| between runtimes for an fp32 model: float rounding only."""
INT8_LOGIT_BOUND = 0.05
"""Largest |logit difference| for an int8 model, as a fraction of the largest |logit| of the reference on the
same inputs: int8 kernels fused by onnxruntime's optimiser round differently from unfused ones (0.15 measured
on the quickstart student, 0.02 on the shipped teacher, whose logits reach 17)."""
MIN_AGREEMENT = 0.99
"""Smallest share of inputs (clean and worst-case) whose argmax a runtime within tolerance shares."""
MAX_ACCURACY_GAP = 0.01
"""Largest difference of robust accuracy (a fraction: 1 point) between a runtime within tolerance and the reference."""


def tolerances() -> dict[str, Any]:
    """The tolerances as report.json and the web page's samples.json record them."""
    return {
        "fp32_logit": FP32_LOGIT_BOUND,
        "int8_logit_fraction": INT8_LOGIT_BOUND,
        "min_agreement": MIN_AGREEMENT,
        "max_accuracy_gap": MAX_ACCURACY_GAP,
    }


class ModelFileError(UsageError):
    """An ONNX/ORT model file is missing, corrupt, or not an akd-edge image classifier."""


def as_float_images(images: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] or float [0, 1] images as float32 in [0, 1]."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    return np.ascontiguousarray(images, dtype=np.float32)


@dataclass
class OrtClassifier:
    """An onnxruntime session of an image classifier, plus the metadata akd-edge wrote into the file."""

    path: Path
    session: Any
    input_name: str
    input_shape: tuple[int | None, ...]
    """(C, H, W) as the graph declares it; None for a dynamic dimension."""
    batch: int | None
    """Fixed batch size of the graph, or None for a dynamic batch axis."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """``metadata_props`` of the file, JSON values decoded."""

    @classmethod
    def load(
        cls,
        path: str | Path,
        threads: int = 0,
        providers: list[Any] | None = None,
        level: str | None = None,
        *,
        content: bytes | None = None,
    ) -> OrtClassifier:
        """Open ``path`` on the CPU provider (or ``providers``, in order of preference); ``threads`` = 0 lets
        onnxruntime choose; ``level``: a ``GraphOptimizationLevel`` name (default ``ORT_ENABLE_ALL``).

        ``content``: the file's bytes, read (and hashed) earlier: the session is built from them and ``path``
        only names the model. With ``threads`` = 1 the session runs on the calling thread, with no thread
        pool spinning between calls (verify's attack workers, one per CPU).
        """
        import onnxruntime as ort

        path = Path(path)
        if content is None and not path.is_file():
            raise ModelFileError(f"model file {path} does not exist; run `akd-edge export` to create it")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        if threads == 1:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if level is not None:
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        if path.suffix == ".ort":  # replay the CPU fusions akd-edge saved in its own .ort files, as an app would
            options.add_session_config_entry("session.enable_saved_runtime_optimizations", "1")
        try:
            model = str(path) if content is None else content
            session = ort.InferenceSession(model, options, providers=providers or ["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelFileError(
                f"cannot load {path} with onnxruntime ({first}); expected an ONNX or ORT model written by "
                "`akd-edge export` (re-export it if the file is truncated or corrupt)"
            ) from None
        inputs, outputs = session.get_inputs(), session.get_outputs()
        shape = list(inputs[0].shape) if inputs else []
        if len(inputs) != 1 or len(outputs) != 1 or len(shape) != 4:
            raise ModelFileError(
                f"{path} is not an image classifier: expected one input [batch, C, H, W] and one output "
                f"(logits), found inputs {[(i.name, i.shape) for i in inputs]} and {len(outputs)} outputs"
            )
        dims = tuple(d if isinstance(d, int) and d > 0 else None for d in shape)
        raw = session.get_modelmeta().custom_metadata_map
        return cls(path, session, inputs[0].name, dims[1:], dims[0], {k: _decode(v) for k, v in raw.items()})

    def check_images(self, images: np.ndarray, source: str = "the data") -> None:
        """Raise DataError when images do not fit the graph's input (naming the file and the shapes)."""
        got = tuple(images.shape[1:])
        want = self.input_shape
        if images.ndim != 4 or any(w is not None and w != g for w, g in zip(want, got, strict=True)):
            expected = "x".join("?" if w is None else str(w) for w in want)
            raise DataError(
                f"{self.path} expects images of shape [N, {', '.join('?' if w is None else str(w) for w in want)}] "
                f"(C x H x W = {expected}), but {source} has shape {list(images.shape)}; "
                "use the dataset the model was trained on"
            )

    def predict(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Logits float32 [N, classes] for images [N, C, H, W] (uint8 or float in [0, 1])."""
        x = as_float_images(images)
        step = self.batch or batch_size
        chunks = []
        for start in range(0, len(x), step):
            chunk = x[start : start + step]
            if self.batch and len(chunk) < self.batch:  # fixed-batch graph (mobile): pad the last chunk
                pad = np.zeros((self.batch - len(chunk), *chunk.shape[1:]), dtype=np.float32)
                chunks.append(self.session.run(None, {self.input_name: np.concatenate([chunk, pad])})[0][: len(chunk)])
            else:
                chunks.append(self.session.run(None, {self.input_name: chunk})[0])
        if not chunks:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32, copy=False)

    def torch_predict(self, batch_size: int = 256) -> Callable[[Any], Any]:
        """This session as ``predict(x tensor) -> logits tensor`` on the CPU, for torch attacks that need outputs only.

        Tensor -> numpy -> ``session.run`` -> tensor: no gradients, the session is a black box.
        """
        import torch

        def predict(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(self.predict(x.detach().cpu().numpy(), batch_size))

        return predict

    def correct(self, images: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """bool [N]: predicted class equals the label."""
        return self.predict(images, batch_size).argmax(1) == np.asarray(labels)


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return value


def file_size(path: str | Path) -> int | None:
    """Size in bytes, or None when the file does not exist."""
    path = Path(path)
    return path.stat().st_size if path.is_file() else None


def _percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000.0, q))


def measure_latency(
    run_batch: Any,
    input_shape: tuple[int, ...],
    *,
    warmup: int = 10,
    repeats: int = 100,
    throughput_batch: int = 256,
    throughput_repeats: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """p50/p95 latency at batch 1 and images/s at ``throughput_batch`` of ``run_batch(x float32) -> Any``.

    Wall-clock on this machine, with random images (speed does not depend on the pixels). A fixed-batch
    graph (mobile) gets ``throughput_batch`` = None.
    """
    rng = np.random.default_rng(seed)
    one = rng.random((1, *input_shape), dtype=np.float32)
    for _ in range(warmup):
        run_batch(one)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_batch(one)
        times.append(time.perf_counter() - start)
    result: dict[str, Any] = {
        "batch1_p50_ms": round(_percentile_ms(times, 50), 4),
        "batch1_p95_ms": round(_percentile_ms(times, 95), 4),
        "batch1_repeats": repeats,
    }
    if throughput_batch:
        big = rng.random((throughput_batch, *input_shape), dtype=np.float32)
        run_batch(big)
        start = time.perf_counter()
        for _ in range(throughput_repeats):
            run_batch(big)
        elapsed = time.perf_counter() - start
        result["throughput_batch"] = throughput_batch
        result["throughput_img_s"] = round(throughput_batch * throughput_repeats / elapsed, 1)
    return result


def ort_latency(model: OrtClassifier, input_shape: tuple[int, ...], **kwargs: Any) -> dict[str, Any]:
    """:func:`measure_latency` of an onnxruntime session, with its thread count recorded."""

    def run(x: np.ndarray) -> Any:
        return model.session.run(None, {model.input_name: x})

    if model.batch not in (None, 1):
        raise ValueError(f"{model.path} has a fixed batch of {model.batch}; latency needs batch 1 or a dynamic batch")
    if model.batch == 1:
        kwargs["throughput_batch"] = 0
    result = measure_latency(run, input_shape, **kwargs)
    threads = model.session.get_session_options().intra_op_num_threads
    result["threads"] = threads or f"onnxruntime default ({os.cpu_count()} CPUs visible)"
    result["runtime"] = "onnxruntime CPUExecutionProvider"
    return result
