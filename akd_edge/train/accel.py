"""Speed options of a training run, each decided on the machine at hand: by a capability check, and where
that cannot decide, by a short measurement alternating the candidates at run start.

Nothing here is assumed from one CPU to the next (AVX2-only, AVX-512, AVX512-BF16/AMX and GPUs differ), so
every ``"auto"`` resolves to a plain :class:`SpeedPlan` whose fields a run records and reuses on resume:
a measurement may flip between runs, a resumed run must not (bit-identical resume).

* :func:`resolve_speed_plan` turns the requested options (``"auto"``, ``"on"``, ``"off"``, ...) into a plan.
* :func:`prepare_student` applies the plan to the student (channels_last, optional ``torch.compile``).
* :func:`accelerate_teacher` gives a frozen teacher ensemble its fast path (BatchNorm folded, channels_last,
  its own precision, ``torch.inference_mode``).
* :func:`step_autocast` and :func:`as_input` are what the step uses around the task and on each batch.
* :class:`DeviceSums` keeps running totals on the device, so a GPU step never waits for the host.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from akd_edge.teachers import TeacherEnsemble

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MARGIN = 1.10
"""A measured candidate replaces the default only when this many times faster (noise on a busy machine)."""


# -- capabilities ---------------------------------------------------------------------------------
def cpu_bf16_supported() -> bool:
    """oneDNN runs bf16 kernels natively here (AVX512-BF16 or AMX); false on AVX2-only CPUs."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_supported(device: torch.device) -> bool:
    """bf16 autocast is worth considering on ``device`` (fast kernels exist; speed is still measured on CPU)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_bf16_supported()


def cpu_flags() -> list[str]:
    """The speed-relevant CPU flags of this machine (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            line = next((row for row in fh if row.startswith("flags")), "")
    except OSError:
        return []
    flags = set(line.split(":", 1)[-1].split())
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")
    return [name for name in wanted if name in flags]


def machine_summary() -> dict[str, Any]:
    """CPU model, flags, threads, torch version and GPU: printed beside every speed figure."""
    import platform

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((row.split(":", 1)[1].strip() for row in fh if row.startswith("model name")), model)
    except OSError:
        pass
    return {
        "cpu": model,
        "cpu_flags": cpu_flags(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_bf16": cpu_bf16_supported(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


# -- measurement ----------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_alternating(
    candidates: Mapping[str, Callable[[], object]],
    device: torch.device | str = "cpu",
    repeats: int = 5,
    warmup: int = 1,
) -> dict[str, float]:
    """Median seconds per call of each candidate, called in turn (a, b, a, b, ...) so load changes hit all."""
    device = torch.device(device)
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _pick(times: Mapping[str, float], default: str, margin: float = MARGIN) -> str:
    """The fastest candidate if it beats ``default`` by ``margin``, else ``default``."""
    best = min(times, key=times.__getitem__)
    return best if times[default] >= margin * times[best] else default


# -- model transforms -----------------------------------------------------------------------------
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with each BatchNorm that follows a convolution folded into it.

    Uses torch's fx fusion (``torch.fx.experimental.optimization.fuse``, built on
    ``torch.nn.utils.fusion.fuse_conv_bn_eval``); a model fx cannot trace falls back to folding adjacent
    ``Conv2d, BatchNorm2d`` pairs inside ``nn.Sequential`` containers. BatchNorms that precede their
    convolution (pre-activation WRN/ResNet blocks) stay. The original model is left untouched.
    """
    from torch.fx.experimental.optimization import fuse
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    try:
        return fuse(model, inplace=True)
    except Exception as err:  # noqa: BLE001 - any tracing failure means: use the structural fallback
        log.info("fx cannot trace %s (%s); folding Conv2d-BatchNorm2d pairs in Sequential blocks", type(model), err)
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, bn = module._modules[first], module._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                module._modules[first] = fuse_conv_bn_eval(conv, bn)
                module._modules[second] = nn.Identity()
    return model


def as_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``x`` in the memory format the model was prepared for (no copy when it already is)."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``bf16``/``fp16`` on ``device``; a no-op context for ``fp32``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=DTYPES[precision])


def compile_model(model: nn.Module, mode: str = "default", backend: str = "inductor") -> nn.Module:
    """``torch.compile`` of ``model`` (inductor) in ``mode`` (a :data:`akd_edge.config.COMPILE_MODES` name); the
    first calls pay the compile time (seconds to minutes)."""
    return torch.compile(model, mode=None if mode == "default" else mode, backend=backend)


def configure_cuda(benchmark: bool = True) -> None:
    """cudnn autotuning for fixed batch shapes (the training batches); no effect without CUDA."""
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = benchmark


# -- the plan -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpeedPlan:
    """The resolved speed options of one run (plain values: store it in the checkpoint, reuse on resume)."""

    channels_last: bool = False
    """Student weights and batches in channels_last memory format."""
    precision: str = "fp32"
    """Autocast precision of the student's attack and training step: fp32, bf16 or fp16."""
    compile: bool = False
    """Student wrapped in ``torch.compile`` (inductor)."""
    compile_mode: str = "default"
    """Its ``torch.compile`` mode (``reduce-overhead``: CUDA graphs)."""
    teacher_fold: bool = True
    """Teacher BatchNorms folded into the convolutions (exact up to float rounding)."""
    teacher_channels_last: bool = False
    teacher_precision: str = "fp32"
    teacher_compile: bool = False
    cudnn_benchmark: bool = False
    flush_denormal: bool = False
    """Treat subnormal floats as zero on the CPU (denormal gradients of a young model slowed the fp32 step
    up to 2x here); set for the run only."""
    measured: dict[str, dict[str, float]] = field(default_factory=dict)
    """Seconds per call of each candidate measured to decide (informative; empty when nothing was measured)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpeedPlan:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @property
    def cuda_graphs(self) -> bool:
        """The compiled student replays CUDA graphs (on a GPU): each step must be marked as a new one."""
        return self.compile and self.compile_mode in ("reduce-overhead", "max-autotune")


def _student_candidates(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, variants: Mapping[str, tuple[bool, str]]
) -> dict[str, Callable[[], object]]:
    """One attack-like step per variant: forward, backward to input and parameters, on a private copy."""
    candidates = {}
    for name, (channels_last, precision) in variants.items():
        trial = copy.deepcopy(model).train()
        if channels_last:
            trial = trial.to(memory_format=torch.channels_last)
        xin = as_input(x, channels_last)

        def step(trial: nn.Module = trial, xin: torch.Tensor = xin, precision: str = precision) -> None:
            xr = xin.detach().requires_grad_(True)
            with autocast(device, precision):
                loss = nn.functional.cross_entropy(trial(xr).float(), y)
            loss.backward()

        candidates[name] = step
    return candidates


def _teacher_candidates(
    member: nn.Module, x: torch.Tensor, device: torch.device, variants: Mapping[str, tuple[bool, str]]
) -> dict[str, Callable[[], object]]:
    candidates = {}
    for name, (channels_last, precision) in variants.items():
        trial = copy.deepcopy(member)
        if channels_last:
            trial = trial.to(memory_format=torch.channels_last)
        xin = as_input(x, channels_last)

        def forward(trial: nn.Module = trial, xin: torch.Tensor = xin, precision: str = precision) -> None:
            with torch.inference_mode(), autocast(device, precision):
                trial(xin)

        candidates[name] = forward
    return candidates


def _choices(option: str, name: str, allowed: tuple[str, ...]) -> str:
    if option not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {option!r}")
    return option


def resolve_speed_plan(
    model: nn.Module,
    sample_x: torch.Tensor,
    sample_y: torch.Tensor,
    *,
    teacher: nn.Module | None = None,
    channels_last: str = "auto",
    precision: str = "fp32",
    compile: bool = False,
    teacher_fold: bool = True,
    teacher_channels_last: str = "auto",
    teacher_precision: str = "auto",
    teacher_compile: bool = False,
    repeats: int = 5,
) -> SpeedPlan:
    """Decide every ``"auto"`` on this machine; ``sample_x``/``sample_y`` is one training batch (on the device).

    ``channels_last`` and ``teacher_channels_last``: ``auto``, ``on``, ``off``. ``precision`` and
    ``teacher_precision``: ``auto``, ``fp32``, ``bf16``, ``fp16``. ``auto`` considers bf16 only where the
    hardware has bf16 kernels (:func:`bf16_supported`), then measures the candidates alternately (forward and
    backward for the student, forward for a folded teacher member) and keeps fp32/NCHW unless another is at
    least :data:`MARGIN` times faster. On CUDA, channels_last ``auto`` is also measured, and bf16 ``auto`` is
    taken without measuring (tensor cores). A CPU measurement costs about 20 forward-backward passes.
    """
    device = sample_x.device
    _choices(channels_last, "channels_last", ("auto", "on", "off"))
    _choices(teacher_channels_last, "teacher_channels_last", ("auto", "on", "off"))
    _choices(precision, "precision", ("auto", *PRECISIONS))
    _choices(teacher_precision, "teacher_precision", ("auto", *PRECISIONS))
    measured: dict[str, dict[str, float]] = {}
    bf16_ok = bf16_supported(device)

    def variants(cl: str, prec: str) -> dict[str, tuple[bool, str]]:
        layouts = [False, True] if cl == "auto" else [cl == "on"]
        if prec != "auto":
            precs = [prec]
        elif device.type == "cuda" and bf16_ok:
            precs = ["bf16"]
        else:
            precs = ["fp32", "bf16"] if bf16_ok else ["fp32"]
        return {f"{'cl' if layout else 'nchw'}-{p}": (layout, p) for layout in layouts for p in precs}

    def decide(what: str, found: dict[str, tuple[bool, str]], make: Callable[..., dict]) -> tuple[bool, str]:
        if len(found) == 1:
            return next(iter(found.values()))
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            times = time_alternating(make(found), device, repeats=repeats)
        measured[what] = times
        default = next(iter(found))  # nchw first, fp32 (or the only precision) first
        chosen = _pick(times, default)
        log.info("%s: measured %s, chose %s", what, {k: f"{v * 1e3:.1f} ms" for k, v in times.items()}, chosen)
        return found[chosen]

    student_cl, student_prec = decide(
        "student",
        variants(channels_last, precision),
        lambda v: _student_candidates(model, sample_x, sample_y, device, v),
    )
    teacher_cl, teacher_prec = False, "fp32"
    members = list(getattr(teacher, "members", [])) if teacher is not None else []
    if members:
        member = fold_batchnorm(members[0]) if teacher_fold else copy.deepcopy(members[0]).eval()
        teacher_cl, teacher_prec = decide(
            "teacher",
            variants(teacher_channels_last, teacher_precision),
            lambda v: _teacher_candidates(member, sample_x, device, v),
        )
    return SpeedPlan(
        channels_last=student_cl,
        precision=student_prec,
        compile=compile,
        teacher_fold=teacher_fold,
        teacher_channels_last=teacher_cl,
        teacher_precision=teacher_prec,
        teacher_compile=teacher_compile,
        cudnn_benchmark=device.type == "cuda",
        measured=measured,
    )


def default_plan(
    device: torch.device,
    *,
    precision: str = "auto",
    channels_last: str = "auto",
    compile: bool = False,
    compile_mode: str = "default",
    fast_teacher: bool = True,
) -> SpeedPlan:
    """The plan a training run starts with: ``auto`` decided by what the hardware has, without timing.

    Rules (from benchmarks/loop_vs_plain.py and NOTES.md): channels_last is faster for these conv nets on
    CPUs with AVX-512 and on GPUs; bf16 autocast on GPUs with bf16 and on CPUs with AMX-BF16 (2.2x for the
    student step, 3.9x for the teacher forward, same accuracy), float32 elsewhere. Deciding by capability
    rather than by a timing keeps two runs of one recipe on one machine identical, so a seed reproduces
    a run. :func:`resolve_speed_plan` measures instead, for benchmarks.
    """
    _choices(channels_last, "channels_last", ("auto", "on", "off"))
    _choices(precision, "precision", ("auto", *PRECISIONS))
    flags = set(cpu_flags()) if device.type == "cpu" else set()
    auto_layout = device.type == "cuda" or "avx512f" in flags
    layout = auto_layout if channels_last == "auto" else channels_last == "on"
    if precision == "auto":
        fast_bf16 = torch.cuda.is_bf16_supported() if device.type == "cuda" else "amx_bf16" in flags
        precision = "bf16" if fast_bf16 and bf16_supported(device) else "fp32"
    return SpeedPlan(
        channels_last=layout,
        precision=precision,
        compile=compile,
        compile_mode=compile_mode,
        teacher_fold=fast_teacher,
        teacher_channels_last=fast_teacher and layout,
        teacher_precision=precision if fast_teacher and precision == "bf16" else "fp32",
        cudnn_benchmark=device.type == "cuda",
        flush_denormal=device.type == "cpu",
    )


# -- applying the plan ----------------------------------------------------------------------------
def prepare_student(model: nn.Module, plan: SpeedPlan, backend: str = "inductor") -> nn.Module:
    """The student as the step should call it: converted to channels_last in place, compiled if planned.

    The returned module may be a compiled wrapper; save and load ``state_dict`` through the original
    ``model`` (compiled modules prefix their keys with ``_orig_mod.``).
    """
    if plan.channels_last:
        model.to(memory_format=torch.channels_last)
    return compile_model(model, mode=plan.compile_mode, backend=backend) if plan.compile else model


def mark_step(plan: SpeedPlan, device: torch.device) -> None:
    """Tell ``torch.compile``'s CUDA graphs that a new training step begins (the previous step's outputs
    may be overwritten); nothing without CUDA graphs."""
    if plan.cuda_graphs and device.type == "cuda":
        torch.compiler.cudagraph_mark_step_begin()


def accelerate_teacher(teacher: TeacherEnsemble, plan: SpeedPlan, *, needs_grad: bool = False) -> TeacherEnsemble:
    """A new ensemble with the same weights whose members run the frozen-teacher fast path of ``plan``.

    ``needs_grad=True`` keeps autograd through the teacher (objectives that differentiate the teacher's
    output with respect to its input); BatchNorm folding, layout and precision still apply. Without it the
    teacher runs under ``torch.inference_mode``.
    """
    from akd_edge.teachers import TeacherEnsemble

    members = []
    for member in teacher.members:
        if not getattr(member, "differentiable", True):  # an ONNX teacher: its runtime optimises the graph
            members.append(member.fast_path(plan.teacher_precision, teacher.weights.device))
            continue
        fast = fold_batchnorm(member) if plan.teacher_fold else copy.deepcopy(member).eval()
        if plan.teacher_channels_last:
            fast = fast.to(memory_format=torch.channels_last)
        if plan.teacher_compile:
            fast = compile_model(fast)
        members.append(fast)
    fast_ensemble = TeacherEnsemble(members, teacher.weights.tolist())
    fast_ensemble.configure(
        channels_last=plan.teacher_channels_last, precision=plan.teacher_precision, needs_grad=needs_grad
    )
    fast_ensemble.provenance = teacher.provenance
    return fast_ensemble.to(teacher.weights.device)


@contextlib.contextmanager
def plan_settings(plan: SpeedPlan) -> Iterator[None]:
    """The process-wide switches of ``plan`` (cudnn autotuning, flushing subnormals) for the block only."""
    cudnn = torch.backends.cudnn.benchmark
    if plan.cudnn_benchmark:
        configure_cuda(True)
    if plan.flush_denormal:
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = cudnn
        if plan.flush_denormal:
            torch.set_flush_denormal(False)  # torch's default; it has no getter to restore from


@contextlib.contextmanager
def step_autocast(device: torch.device | str, plan: SpeedPlan) -> Iterator[None]:
    """The autocast context of the student's attack and loss (fp32: nothing)."""
    with autocast(device, plan.precision):
        yield


class DeviceSums:
    """Running totals kept as device tensors: adding never waits for the GPU; :meth:`read` does, once."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self._sums: dict[str, torch.Tensor] = {}

    def add(self, **values: torch.Tensor | float) -> None:
        for key, value in values.items():
            value = torch.as_tensor(value, device=self.device).detach().to(torch.float64)
            current = self._sums.get(key)
            self._sums[key] = value if current is None else current + value

    def read(self) -> dict[str, float]:
        """The totals as Python floats (one host sync for all of them)."""
        if not self._sums:
            return {}
        keys = list(self._sums)
        values = torch.stack([self._sums[k] for k in keys]).tolist()
        return dict(zip(keys, values, strict=True))
