"""Teachers: load them from any source (checkpoint, ONNX, weights file), record where each came from, and
average an ensemble's probabilities."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from akd_edge.config import TeacherSpec
from akd_edge.core.errors import CheckpointError, ConfigError, some_names
from akd_edge.core.files import sha256_file
from akd_edge.models.checkpoint import CHECKPOINT_FORMAT, RESUME_KEYS, build_model, load_model, why_unreadable

if TYPE_CHECKING:
    from akd_edge.data import ImageDataset

log = logging.getLogger(__name__)


class TeacherEnsemble(nn.Module):
    """Frozen teachers whose softmax probabilities are averaged with normalised weights (AKD guideline 2)."""

    def __init__(self, models: Sequence[nn.Module], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if not models:
            raise ValueError("a teacher ensemble needs at least one teacher")
        weights = list(weights) if weights is not None else [1.0] * len(models)
        if len(weights) != len(models) or min(weights) <= 0:
            raise ValueError("one positive weight per teacher is required")
        self.members = nn.ModuleList(models)
        self.provenance: list[dict[str, Any]] | None = None
        """One record per member saying where it came from (set by :func:`load_teachers`)."""
        total = sum(weights)
        # on the members' device, so an ensemble of GPU members is on the GPU as a whole (copies follow it)
        device = next((t.device for t in (*self.members.parameters(), *self.members.buffers())), None)
        self.register_buffer("weights", torch.tensor([w / total for w in weights], device=device), persistent=False)
        for param in self.parameters():
            param.requires_grad_(False)
        self.eval()
        self.configure()

    def configure(self, *, channels_last: bool = False, precision: str = "fp32", needs_grad: bool = False) -> None:
        """How :meth:`probs` runs the members (see ``akd_edge.train.accel.accelerate_teacher``).

        ``channels_last`` converts inputs (the members must have been converted too); ``precision`` is the
        autocast precision (fp32, bf16, fp16); ``needs_grad=False`` runs under ``torch.inference_mode``,
        ``True`` keeps autograd so an objective can differentiate the teacher's output.
        """
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"teacher precision must be fp32, bf16 or fp16, got {precision!r}")
        self.channels_last, self.precision, self.needs_grad = channels_last, precision, needs_grad

    def train(self, mode: bool = True) -> TeacherEnsemble:
        return super().train(False)  # teachers stay in eval mode whatever the student does

    def probs(self, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Weighted average of the members' ``softmax(logits / temperature)``, in float32.

        Without ``needs_grad`` no autograd graph is built (``inference_mode``); the result is a normal
        tensor, usable as a target in the student's loss.
        """
        grad_mode = contextlib.nullcontext() if self.needs_grad else torch.inference_mode()
        with grad_mode:
            total = self.combine(self.member_logits(x), temperature)
        return total if self.needs_grad else total.clone()  # clone outside inference_mode: a normal tensor

    def member_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each member's logits on ``x`` (in the configured layout and precision; autograd as the caller has it)."""
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.precision == "fp32":  # also inside the student's bf16 step: the teacher keeps its own precision
            with torch.autocast(x.device.type, enabled=False):
                return [member(x) for member in self.members]
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        with torch.autocast(x.device.type, dtype=dtype):
            return [member(x) for member in self.members]

    def combine(self, logits: list[torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
        """The weighted average of ``softmax(logits / temperature)`` over members, in float32."""
        total = None
        for weight, member_logits in zip(self.weights, logits, strict=True):
            p = torch.softmax(member_logits.float() / temperature, dim=1) * weight
            total = p if total is None else total + p
        assert total is not None
        return total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log of the ensemble probabilities: usable as logits by evaluation code."""
        return self.probs(x).clamp_min(1e-12).log()


def load_teachers(
    specs: Sequence[TeacherSpec],
    device: str | torch.device = "cpu",
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
) -> TeacherEnsemble:
    """Load each teacher and check it fits the student's data; the ensemble's :attr:`provenance` says what each is.

    Sources: an akd-edge run directory or checkpoint (early-stopped ``best`` by default), ``builtin:NAME``,
    ``onnx:PATH`` (run by onnxruntime) or a plain weights file built by ``spec.factory``. Loading leaves torch's
    random state as it was, so a run's random numbers do not depend on the teachers' source: the same seed
    distills the same student from a checkpoint or from its ONNX export.
    """
    models, records = [], []
    for spec in specs:
        with torch.random.fork_rng(devices=[]):  # building a torch teacher draws init weights: not the run's RNG
            model, record = _load_member(spec, device, input_shape, num_classes)
        log.info("teacher %s (%s): val %s", spec.path, record.get("kind"), record.get("val"))
        models.append(model)
        records.append(record)
    ensemble = TeacherEnsemble(models, [spec.weight for spec in specs]).to(device)
    for record, weight in zip(records, ensemble.weights.tolist(), strict=True):
        record["weight"] = weight
    ensemble.provenance = records
    return ensemble


def _load_member(
    spec: TeacherSpec, device: str | torch.device, input_shape: tuple[int, ...] | None, num_classes: int | None
) -> tuple[nn.Module, dict[str, Any]]:
    """One teacher of any source, and its provenance record."""
    if spec.path.startswith("onnx:"):
        from akd_edge.teachers.onnx import load_onnx_teacher

        path = Path(spec.path.removeprefix("onnx:"))
        model, metadata = load_onnx_teacher(path, device, input_shape, num_classes)
        return model, _onnx_record(spec, path, metadata, model)
    path = Path(spec.path)
    if spec.path.startswith("builtin:") or not path.is_file():
        model, meta = load_model(spec.path, spec.which, device, spec.factory or None)
    else:  # a file: an akd-edge checkpoint, or the state_dict of the user's own architecture
        content = read_weights(path)
        if not (isinstance(content, dict) and content.get("format") == CHECKPOINT_FORMAT):
            model = _build_from_weights(spec, path, content, input_shape, num_classes).to(device).eval()
            return model, _weights_record(spec, path)
        if "model" not in content or "arch" not in content:
            raise CheckpointError(f"{path} is not an akd-edge checkpoint (it has no 'model' or 'arch')")
        content["path"] = str(path)
        model = build_model(content, spec.factory or None).to(device).eval()
        meta = {k: v for k, v in content.items() if k not in ("model", *RESUME_KEYS)}
    arch = meta["arch"]
    if input_shape is not None and tuple(arch["input_shape"]) != tuple(input_shape):
        raise ConfigError(
            f"teacher {spec.path} takes inputs of shape {tuple(arch['input_shape'])}, the data has {tuple(input_shape)}"
        )
    if num_classes is not None and arch["num_classes"] != num_classes:
        raise ConfigError(f"teacher {spec.path} has {arch['num_classes']} classes, the data has {num_classes}")
    return model, _checkpoint_record(spec, meta)


# -- plain weights files ----------------------------------------------------------------------


def read_weights(path: Path) -> Any:
    """The content of a torch file (``weights_only=True``: plain tensors and containers only) or a
    ``.safetensors`` file (a dict of tensors, through the optional ``safetensors`` package)."""
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ConfigError(
                f"{path} is a safetensors file: pip install 'akd-edge[safetensors]' (the safetensors package)"
            ) from None
        try:
            return load_file(str(path))
        except Exception as err:  # safetensors' own error types: header, truncation
            raise CheckpointError(f"cannot read {path} as safetensors ({err})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, pickle with code in it, not a torch file
        raise CheckpointError(f"cannot read {path}: {why_unreadable(err)}") from None


def state_dict_of(content: Any, path: Path) -> dict[str, torch.Tensor]:
    """The named tensors of a weights file: the dict itself, or under ``state_dict``/``model_state_dict``/
    ``model``; a ``module.`` prefix (DataParallel) is removed."""

    def is_state(obj: Any) -> bool:
        return (
            isinstance(obj, dict)
            and bool(obj)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
        )

    if isinstance(content, dict) and not is_state(content):
        content = next((content[k] for k in STATE_KEYS if is_state(content.get(k))), content)
    if not is_state(content):
        raise CheckpointError(
            f"{path} is neither an akd-edge checkpoint nor a state_dict (a table of named tensors, possibly "
            f"under {' or '.join(repr(k) for k in STATE_KEYS)})"
        )
    if all(k.startswith("module.") for k in content):
        content = {k.removeprefix("module."): v for k, v in content.items()}
    return content


STATE_KEYS = ("state_dict", "model_state_dict", "model")


def _build_from_weights(
    spec: TeacherSpec, path: Path, content: Any, input_shape: tuple[int, ...] | None, num_classes: int | None
) -> nn.Module:
    """``spec.factory(num_classes, input_shape=..., **spec.kwargs)`` with the file's weights, checked on 2 images."""
    from akd_edge.models import create_model

    state = state_dict_of(content, path)
    if not spec.factory:
        raise ConfigError(
            f"teacher {path} holds a state_dict, not an akd-edge checkpoint: give factory = "
            "'package.module:factory' (and kwargs) in its [[teachers]] entry (or --teacher-factory) to build it"
        )
    if input_shape is None or num_classes is None:
        raise ConfigError(f"teacher {path}: building {spec.factory} needs the data's input shape and class count")
    model = create_model(spec.factory, num_classes=num_classes, input_shape=input_shape, **spec.kwargs)
    try:
        result = model.net.load_state_dict(state, strict=False)  # the factory's own module: no normalise layer
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:4])
        raise CheckpointError(f"weights in {path} do not fit {spec.factory}({spec.kwargs}): {detail}") from None
    missing, unexpected = result.missing_keys, result.unexpected_keys
    if missing or unexpected:
        raise CheckpointError(
            f"weights in {path} do not fit {spec.factory}({spec.kwargs}): missing keys {some_names(missing)}, "
            f"unexpected keys {some_names(unexpected)}; build the architecture the weights were saved from "
            "(factory, kwargs)"
        )
    model.eval()
    with torch.inference_mode():
        out = model(torch.zeros(2, *input_shape))
    if tuple(out.shape) != (2, num_classes):
        raise ConfigError(f"teacher {path} returns shape {list(out.shape)} for 2 images, expected [2, {num_classes}]")
    return model


# -- provenance -------------------------------------------------------------------------------


def _checkpoint_record(spec: TeacherSpec, meta: dict[str, Any]) -> dict[str, Any]:
    recipe = meta.get("recipe") or {}
    return {
        "kind": "builtin" if spec.path.startswith("builtin:") else "checkpoint",
        "source": spec.path,
        "which": spec.which if Path(spec.path).is_dir() else None,
        "file": str(meta["path"]),
        "sha256": sha256_file(meta["path"]),
        "arch": meta["arch"]["name"],
        "dataset": (meta.get("data") or {}).get("name"),
        "epoch": meta.get("epoch"),
        "val": dict(meta.get("val") or {}),
        "threat": meta.get("threat"),
        "attack": ((recipe.get("eval") or {}).get("attack")) or None,
    }


def _onnx_record(spec: TeacherSpec, path: Path, metadata: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    accuracy = {"clean_acc": metadata.get("clean_accuracy"), "robust_acc": metadata.get("robust_accuracy")}
    return {
        "kind": "onnx",
        "source": spec.path,
        "file": str(path),
        "sha256": sha256_file(path),
        "arch": metadata.get("architecture"),
        "dataset": metadata.get("dataset"),
        "providers": model.classifier.session.get_providers(),
        "val": {k: v for k, v in accuracy.items() if v is not None},
        "threat": metadata.get("threat_model"),
        "attack": metadata.get("accuracy_measured_on"),
    }


def _weights_record(spec: TeacherSpec, path: Path) -> dict[str, Any]:
    return {
        "kind": "weights",
        "source": spec.path,
        "file": str(path),
        "sha256": sha256_file(path),
        "arch": spec.factory,
        "kwargs": dict(spec.kwargs),
        "val": {},
        "threat": None,
        "attack": None,
    }


def teacher_provenance(teacher: nn.Module) -> list[dict[str, Any]]:
    """What each teacher is (source, file SHA-256, recorded accuracy and attack, ensemble weight), for the
    student's checkpoint, summary and model card; a teacher given as a Python object says only its class."""
    records = getattr(teacher, "provenance", None)
    if records:
        return [dict(r) for r in records]
    members = getattr(teacher, "members", [teacher])
    weights = teacher.weights.tolist() if isinstance(teacher, TeacherEnsemble) else [1.0]
    return [
        {"kind": "object", "source": f"python object {type(m).__name__}", "weight": w}
        for m, w in zip(members, weights, strict=True)
    ]


def require_autograd(teacher: nn.Module, method: str) -> None:
    """ConfigError when a member of ``teacher`` cannot be differentiated (an ONNX teacher) but ``method`` must."""
    members = getattr(teacher, "members", [teacher])
    frozen = [getattr(m, "source", type(m).__name__) for m in members if not getattr(m, "differentiable", True)]
    if frozen:
        raise ConfigError(
            f"method.name={method!r} differentiates the teacher's output with respect to its input, but "
            f"{', '.join(frozen)} runs under onnxruntime without gradients; use that teacher's torch checkpoint "
            "or weights file, or a method that only reads the teacher's outputs (akd, ard, rslad, iad, saad)"
        )


class CleanTeacherCache:
    """The teachers' logits on every clean training image, computed once at the start of a run.

    Objectives whose teacher sees the clean, unaugmented batch (ARD, RSLAD, AKD with ``teacher_input =
    "clean"``) then read the teacher's probabilities instead of running it every step. The logits are
    computed in fixed batches in dataset order, so a resumed run reads exactly what an uninterrupted one does.
    """

    MAX_BYTES = 1 << 30
    """Larger caches (members x images x classes x 4 bytes) are not built; the teacher runs every step."""

    def __init__(self, teacher: TeacherEnsemble, logits: torch.Tensor) -> None:
        self.teacher = teacher
        self.logits = logits  # [members, images, classes], float32

    @classmethod
    def build(
        cls, teacher: TeacherEnsemble, dataset: object, batch_size: int, device: torch.device, num_classes: int
    ) -> CleanTeacherCache | None:
        """The cache of ``dataset`` (an ImageDataset), or None when it would exceed :attr:`MAX_BYTES`."""
        from akd_edge.data import iterate_batches

        n, members = len(dataset), len(teacher.members)
        if members * n * num_classes * 4 > cls.MAX_BYTES:
            log.info("teacher outputs of %d images not cached (over %d MiB)", n, cls.MAX_BYTES >> 20)
            return None
        logits = torch.empty(members, n, num_classes, device=device)
        with torch.inference_mode():
            for x, _, idx in iterate_batches(dataset, batch_size, device=device):
                for m, member_logits in enumerate(teacher.member_logits(x)):
                    logits[m, idx.to(device)] = member_logits.float()
        return cls(teacher, logits.clone())

    def probs(self, idx: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """The ensemble's probabilities for the images ``idx`` of the cached dataset."""
        rows = idx.to(self.logits.device)
        return self.teacher.combine([member[rows] for member in self.logits], temperature)


def teacher_labels(
    teacher: TeacherEnsemble, dataset: ImageDataset, batch_size: int, device: torch.device
) -> np.ndarray:
    """The teachers' class (argmax of the ensemble's probabilities) for every clean image of ``dataset``.

    These pseudo-labels stand in for the missing labels of unlabelled images (as in RST, Carmon et al. 2019):
    computed once, in fixed batches and dataset order, so a resumed run gets exactly the same ones.
    """
    from akd_edge.data import iterate_batches

    labels = np.empty(len(dataset), dtype=np.int64)
    with torch.inference_mode():
        for x, _, idx in iterate_batches(dataset, batch_size, device=device):
            labels[idx.cpu().numpy()] = teacher.probs(x).argmax(1).cpu().numpy()
    return labels
