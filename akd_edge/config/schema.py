"""The recipe schema: frozen dataclasses, one per TOML section, validated on construction.

A recipe file mirrors these classes section by section (:mod:`akd_edge.config.load` reads it); out-of-range
values raise :class:`ConfigError` naming the key, whoever builds the dataclass.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from akd_edge.core import registry
from akd_edge.core.errors import ConfigError, UsageError
from akd_edge.core.files import check_name

NORMS = ("linf", "l2")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""``torch.compile`` modes of the student; the first two without ``max-autotune``'s long kernel search."""


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _check_finite(section: Any, prefix: str) -> None:
    """Every float field of ``section`` (and float in a list field) is finite, whoever built the dataclass.

    TOML and ``--set`` values are checked as they are read; this catches ``OptimConfig(lr=math.inf)`` in Python.
    """
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(f"{prefix}.{f.name}: must be a finite number, got {item}")


SEED_RANGE = (-(2**63), 2**63 - 1)
"""``run.seed`` must fit a signed 64-bit integer, as torch's and numpy's generators take it."""
MAX_LR = 1e6
"""Largest ``train.optim.lr``: far above any rate that trains (0.01-1 for SGD), below what overflows float32."""


def to_dict(obj: Any) -> Any:
    """A dataclass as plain dicts and lists (TOML/JSON ready)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


@dataclass(frozen=True)
class RunConfig:
    """Where and how a run executes."""

    name: str = "run"
    """Run name, a plain name (letters, digits, ``._+=-``; no ``/``, ``..`` or leading dot; at most 100
    characters); the run directory defaults to ``<out_dir>/<name>``."""
    seed: int = 0
    """Seed of every random choice (data order, augmentation, attack starts, initialisation)."""
    device: str = "auto"
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    threads: int = 0
    """CPU threads for torch; 0 lets torch choose (all physical cores)."""
    out_dir: str = "runs"
    """Parent folder of run directories."""

    def __post_init__(self) -> None:
        try:
            check_name(self.name, "run.name")
        except UsageError as err:
            raise ConfigError(str(err)) from None
        lo, hi = SEED_RANGE
        _check(lo <= self.seed <= hi, "run.seed", f"must fit in 64 bits (from {lo} to {hi}), got {self.seed}")
        _check(self.threads >= 0, "run.threads", "must be >= 0")
        _check(
            self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:"),
            "run.device",
            f"must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}",
        )


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, how it is split, and how batches are made."""

    name: str = "fashion-mnist"
    """Dataset name: fashion-mnist, mnist, cifar10, cifar100, svhn, imagefolder or synthetic."""
    data_dir: str = ""
    """Folder holding the dataset files; empty means $AKD_EDGE_DATA, then the OS location."""
    download: bool = False
    """Fetch missing files from the official URLs (checksums verified)."""
    val_size: int = 5000
    """Training images held out (deterministically, by seed) for validation and early stopping."""
    train_subset: int = 0
    """Use only the first N training images after the split (0 = all); for quick runs."""
    batch_size: int = 128
    """Training batch size."""
    eval_batch_size: int = 500
    """Batch size of evaluation and of validation attacks."""
    augment: bool = False
    """Random crop (padding 4) and horizontal flip; meant for CIFAR-like data."""
    labeled: int = 0
    """Keep the labels of N training images, drawn class by class in a seeded order (0 = every image labelled).
    The other training images are then unlabelled: used only if ``unlabeled = "rest"``, their labels never read."""
    unlabeled: str = "none"
    """Images used without labels, whose targets come from the teachers: ``none``; ``rest`` (the training
    images outside the ``labeled`` N); or a path to your own images: a folder of PNG/JPEG files, an IDX file, or
    an ``.npz`` whose ``x`` array holds them (uint8, [N, H, W], [N, C, H, W] or [N, H, W, C])."""
    labeled_fraction: float = 0.0
    """With unlabelled images: the share of every training batch taken from the labelled images, which are
    then repeated as often as needed (an epoch is one pass over the unlabelled ones); 0 draws batches from one
    shuffled pool of both, in proportion to their numbers."""

    def __post_init__(self) -> None:
        _check(self.val_size >= 0, "data.val_size", "must be >= 0")
        _check(self.labeled >= 0, "data.labeled", "must be >= 0 (0 = all images labelled)")
        _check(bool(self.unlabeled.strip()), "data.unlabeled", 'must be "none", "rest" or a path to your images')
        _check(
            self.unlabeled != "rest" or self.labeled > 0,
            "data.unlabeled",
            '"rest" means the training images outside data.labeled; set data.labeled = N too',
        )
        _check(
            math.isfinite(self.labeled_fraction) and 0 <= self.labeled_fraction < 1,
            "data.labeled_fraction",
            f"must be a fraction in [0, 1) (0 = in proportion), got {self.labeled_fraction}",
        )
        _check(self.train_subset >= 0, "data.train_subset", "must be >= 0 (0 = all)")
        _check(self.batch_size >= 1, "data.batch_size", "must be >= 1")
        _check(self.eval_batch_size >= 1, "data.eval_batch_size", "must be >= 1")

    @property
    def uses_unlabeled(self) -> bool:
        """Whether training takes images without labels (their targets then come from the teachers)."""
        return self.unlabeled != "none"


@dataclass(frozen=True)
class ModelConfig:
    """The architecture to train: a registered name (``akd-edge models``) or ``module:factory``."""

    name: str = "cnn-student"
    """Registered model name, or ``package.module:factory`` for a user's own architecture."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments of the model factory (for example ``width = 2``)."""


@dataclass(frozen=True)
class AttackConfig:
    """An attack: the student's training attack, or the threat model used for validation."""

    name: str = "pgd"
    """``pgd``, ``fgsm`` (with random start) or ``none`` (clean training)."""
    norm: str = "linf"
    """``linf`` or ``l2``."""
    eps: float = 0.1
    """Radius of the perturbation ball, for images in [0, 1]."""
    steps: int = 10
    """Number of PGD steps (ignored by fgsm)."""
    step_size: float = 0.0
    """Step size; 0 means 2.5 * eps / steps for PGD and 1.25 * eps for FGSM."""
    random_start: bool = True
    """Start from a uniformly random point of the ball."""

    def __post_init__(self) -> None:
        _check(self.name in ("pgd", "fgsm", "none"), "attack.name", f"must be pgd, fgsm or none, got {self.name!r}")
        _check(self.norm in NORMS, "attack.norm", f"must be one of {NORMS}, got {self.norm!r}")
        _check_finite(self, "attack")
        _check(self.eps >= 0, "attack.eps", "must be >= 0")
        _check(
            self.norm != "linf" or self.eps <= 1,
            "attack.eps",
            f"must be <= 1 for a linf attack on images in [0, 1], got {self.eps}",
        )
        _check(self.steps >= 1, "attack.steps", "must be >= 1")
        _check(self.step_size >= 0, "attack.step_size", "must be >= 0 (0 = automatic)")

    def settings(self) -> dict[str, Any]:
        """The attack as reported next to a number it produced: every field, step size resolved."""
        return {**to_dict(self), "step_size": self.resolved_step_size}

    @property
    def resolved_step_size(self) -> float:
        if self.step_size > 0:
            return self.step_size
        if self.name == "fgsm":
            return 1.25 * self.eps
        return 2.5 * self.eps / self.steps


@dataclass(frozen=True)
class OptimConfig:
    """SGD and its learning-rate schedule."""

    lr: float = 0.1
    """Peak learning rate, in (0, 1e6]."""
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    """L2 penalty of SGD, in [0, 1]."""
    schedule: str = "onecycle"
    """``onecycle``, ``cosine``, ``multistep`` or ``constant``; stepped every batch."""
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    """For ``multistep``: fractions of training at which the rate is multiplied by ``gamma``."""
    gamma: float = 0.1
    """For ``multistep``: the factor, in (0, 1], the rate is multiplied by at each milestone."""
    warmup: float = 0.0
    """Fraction of training over which the rate rises linearly from ``lr / 10`` to ``lr`` before a cosine,
    multistep or constant schedule (one-cycle has its own warm-up); for large batches with a scaled rate."""
    grad_clip: float = 0.0
    """Clip the gradient norm to this value (0 = off)."""

    def __post_init__(self) -> None:
        _check_finite(self, "optim")
        _check(self.lr > 0, "optim.lr", "must be > 0")
        _check(
            self.lr <= MAX_LR, "optim.lr", f"must be at most {MAX_LR:g} (SGD trains with 0.01 to 1), got {self.lr:g}"
        )
        _check(0 <= self.momentum < 1, "optim.momentum", "must be in [0, 1)")
        _check(0 <= self.weight_decay <= 1, "optim.weight_decay", f"must be in [0, 1], got {self.weight_decay:g}")
        _check(
            0 < self.gamma <= 1,
            "optim.gamma",
            f"must be in (0, 1]: the rate is multiplied by it at each milestone (0.1 divides it by 10), got {self.gamma:g}",
        )
        schedules = ("onecycle", "cosine", "multistep", "constant")
        _check(self.schedule in schedules, "optim.schedule", f"must be one of {schedules}")
        _check(all(0 < m < 1 for m in self.milestones), "optim.milestones", "must be fractions in (0, 1)")
        _check(self.grad_clip >= 0, "optim.grad_clip", "must be >= 0")
        _check(0 <= self.warmup < 1, "optim.warmup", "must be a fraction of training in [0, 1)")
        _check(
            self.warmup == 0 or self.schedule != "onecycle",
            "optim.warmup",
            "one-cycle warms up by itself; set warmup only with cosine, multistep or constant",
        )


@dataclass(frozen=True)
class MethodConfig:
    """The training objective (a task) and its hyper-parameters."""

    name: str = "at"
    """``at``, ``trades``, ``ard``, ``rslad``, ``akd``, ``adaad``, ``iad`` or ``saad`` (see ``akd-edge methods``)."""
    alpha: float = 0.9
    """AKD/ARD/IAD: weight of the teacher's probabilities against the one-hot labels (IAD as ARD; its
    paper's code used 1.0)."""
    temperature: float = 1.0
    """Softmax temperature of teacher and student in the distillation term (AKD, ARD, IAD)."""
    teacher_input: str = "adv"
    """AKD: the teacher sees the student's adversarial example (``adv``, as in the paper) or ``clean``."""
    beta: float = 6.0
    """TRADES: weight of the robustness (KL) term."""
    adaad_alpha: float = 1.0
    """AdaAD: weight of ``KL(T(x') || S(x'))``; ``1 - adaad_alpha`` weighs ``KL(T(x) || S(x))`` (1.0 in the
    paper's code: adversarial term only)."""
    iad_beta: float = 0.1
    """IAD: the student trusts the teacher by ``p_T(y | x')^iad_beta`` (0.1 in the paper); 0 trusts it fully."""
    iad_warmup: float = 0.3
    """IAD: fraction of the epochs trained before the introspection term starts (60 of 200 in the paper)."""
    saad_weight: str = "entropy"
    """SAAD-style: the per-sample transferability score, the teacher's ``entropy`` on x' (the SAAD code's
    proxy) or its cross-entropy ``loss`` on x' with the true label."""

    def __post_init__(self) -> None:
        _check_finite(self, "method")
        _check(0 <= self.alpha <= 1, "method.alpha", "must be in [0, 1]")
        _check(self.temperature > 0, "method.temperature", "must be > 0")
        _check(self.teacher_input in ("adv", "clean"), "method.teacher_input", "must be adv or clean")
        _check(self.beta >= 0, "method.beta", "must be >= 0")
        _check(0 <= self.adaad_alpha <= 1, "method.adaad_alpha", "must be in [0, 1]")
        _check(0 <= self.iad_beta < math.inf, "method.iad_beta", "must be a finite number >= 0")
        _check(0 <= self.iad_warmup <= 1, "method.iad_warmup", "must be in [0, 1]")
        _check(self.saad_weight in ("entropy", "loss"), "method.saad_weight", "must be entropy or loss")


@dataclass(frozen=True)
class TrainConfig:
    """Length, optimiser and the training attack."""

    epochs: int = 10
    optim: OptimConfig = field(default_factory=OptimConfig)
    attack: AttackConfig = field(default_factory=lambda: AttackConfig(steps=5))
    """The attack the model is trained against; for AKD, weaker than the evaluation threat model."""
    amp: str = "auto"
    """Autocast precision of the student's attack and step: ``auto``, ``none`` (float32), ``bf16`` or ``fp16``.

    ``auto`` takes bf16 on GPUs with bf16 and on CPUs with AMX-BF16 (where it measured 2-4x faster at the
    same accuracy), float32 elsewhere; it is decided by the hardware, not by a timing, so a seed
    reproduces a run. fp16 is for GPUs only. The choice is recorded in every checkpoint, kept on resume."""
    channels_last: str = "auto"
    """Student weights and batches in channels_last memory format: ``auto`` (on for GPUs and AVX-512 CPUs,
    where it measured faster; kept on resume), ``on`` or ``off``."""
    compile: bool = False
    """Wrap the student in ``torch.compile`` (inductor); pays off on long GPU runs, costs minutes on CPUs."""
    compile_mode: str = "default"
    """``torch.compile`` mode of the student (with ``compile = true``): ``default``, ``reduce-overhead`` (CUDA
    graphs: replays each step's kernels without launching them one by one, for small launch-bound batches on
    GPUs; no effect on CPUs), ``max-autotune`` or ``max-autotune-no-cudagraphs`` (longer compiles)."""
    fast_teacher: bool = True
    """Run frozen teachers with BatchNorm folded into their convolutions, in the student's layout and (for
    bf16) precision, without autograd; ``false`` runs them as loaded."""
    keep_epoch_checkpoints: bool = True
    """Keep the weights of every epoch (``epochs/epoch-NNN.pt``), so any epoch can serve as a teacher."""
    checkpoint_every: int = 200
    """Also save a resumable checkpoint every this many batches (0 = only at epoch ends)."""
    record_dynamics: bool = False
    """Record, per training sample and epoch, whether it is classified correctly (clean and adversarial)."""
    sync_bn: bool = False
    """Under torchrun: BatchNorm statistics over the whole global batch (PyTorch's SyncBatchNorm, GPUs only).
    ``false`` keeps per-rank statistics: each rank normalises with its own shard's, and the running statistics
    saved are rank 0's. No effect on a single-process run."""

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "train.epochs", "must be >= 1")
        _check(self.amp in ("auto", "none", "bf16", "fp16"), "train.amp", "must be auto, none, bf16 or fp16")
        _check(self.channels_last in ("auto", "on", "off"), "train.channels_last", "must be auto, on or off")
        _check(self.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0")
        _check(self.compile_mode in COMPILE_MODES, "train.compile_mode", f"must be one of {', '.join(COMPILE_MODES)}")
        _check(
            self.compile or self.compile_mode == "default",
            "train.compile_mode",
            f"is {self.compile_mode!r} but train.compile is false; set train.compile = true to compile the student",
        )


@dataclass(frozen=True)
class EvalConfig:
    """The threat model the model is judged against, and the validation that drives early stopping."""

    attack: AttackConfig = field(default_factory=lambda: AttackConfig(steps=10))
    """Threat model and validation attack (PGD)."""
    val_samples: int = 1000
    """Validation images attacked after each epoch (0 = the whole validation split)."""

    def __post_init__(self) -> None:
        _check(self.val_samples >= 0, "eval.val_samples", "must be >= 0")


@dataclass(frozen=True)
class TeacherSpec:
    """One teacher of a distillation: where it comes from, and its ensemble weight."""

    path: str = ""
    """Where the teacher comes from: an akd-edge run directory or ``.pt`` checkpoint; ``builtin:fmnist-teacher``
    (the shipped teacher); ``onnx:PATH.onnx`` (any framework's classifier exported to ONNX, run by onnxruntime,
    images NCHW float32 in [0, 1] with a dynamic batch axis); or a plain weights file (a ``state_dict`` in
    ``.pt``/``.pth``/``.bin``, or ``.safetensors``) built by ``factory``."""
    which: str = "best"
    """For a run directory: ``best`` (early-stopped, default), ``last`` or an epoch number."""
    weight: float = 1.0
    """Weight of this teacher's probabilities in the ensemble average (weights are normalised)."""
    factory: str = ""
    """``package.module:factory`` of a teacher of your own architecture, imported to rebuild it (this runs
    the module's code, so name only code you trust); empty for a registered architecture. A checkpoint's
    own ``module:factory`` name is never imported without it. A plain weights file needs it: the teacher is
    ``factory(num_classes, input_shape=(C, H, W), **kwargs)`` (taking images in [0, 1]) with the file's
    ``state_dict`` loaded into it."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of ``factory`` for a plain weights file (for example ``{depth = 28, width = 10}``)."""

    def __post_init__(self) -> None:
        _check_finite(self, "teachers")
        _check(bool(self.path), "teachers.path", "is required")
        module, colon, attr = self.factory.partition(":")
        _check(
            not self.factory or bool(colon and module and attr and ":" not in attr),
            "teachers.factory",
            f"must be 'package.module:factory' (one colon, both parts non-empty), got {self.factory!r}",
        )
        _check(
            self.which in ("best", "last") or self.which.isdigit(),
            "teachers.which",
            f"must be best, last or an epoch number, got {self.which!r}",
        )
        _check(self.weight > 0, "teachers.weight", "must be > 0")
        onnx = self.path.startswith("onnx:")
        _check(
            not onnx or bool(self.path.removeprefix("onnx:")), "teachers.path", "onnx: needs a file, as onnx:PATH.onnx"
        )
        _check(
            not (onnx and (self.factory or self.kwargs)),
            "teachers.factory",
            f"an onnx: teacher carries its own graph; factory and kwargs are for weights files ({self.path})",
        )
        _check(
            not self.path.endswith(".safetensors") or bool(self.factory),
            "teachers.factory",
            f"{self.path} holds weights only: give factory = 'package.module:factory' (and kwargs) to build it",
        )
        _check(
            not self.kwargs or bool(self.factory), "teachers.kwargs", "are the factory's arguments: give factory too"
        )


@dataclass(frozen=True)
class Recipe:
    """A whole recipe: one field per TOML section."""

    description: str = ""
    """One line shown by ``akd-edge recipes``."""
    expected: dict[str, Any] = field(default_factory=dict)
    """What the recipe reaches and how long it takes on which machine (informative only)."""
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    teachers: list[TeacherSpec] = field(default_factory=list)
    """Teachers for distillation methods (ard, rslad, akd); their probabilities are averaged."""

    def __post_init__(self) -> None:
        registry.validate_names(self)

    @property
    def code_names(self) -> list[str]:
        """The ``package.module:factory`` names this recipe imports to build models: its own, its teachers'."""
        return [name for name in (self.model.name, *(t.factory for t in self.teachers)) if ":" in name]
