"""Speed options change speed, never results beyond float rounding: folded teachers, layouts, precisions,
the optional range check, the prefetching batch iterator and on-device running totals (no timed tests)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from akd_edge.attacks import build_attack, pgd
from akd_edge.config import AttackConfig
from akd_edge.core.errors import DataError
from akd_edge.data import iterate_batches
from akd_edge.data.synthetic import generate, parse_spec
from akd_edge.models import create_model
from akd_edge.teachers import TeacherEnsemble
from akd_edge.train import accel
from akd_edge.train.accel import SpeedPlan

SHAPE = (1, 28, 28)


def make(name: str, shape: tuple[int, int, int] = SHAPE) -> nn.Module:
    return create_model(name, num_classes=10, input_shape=shape, mean=[0.3] * shape[0], std=[0.3] * shape[0])


def randomize_batchnorm(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine weights, so folding has something to fold."""
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)
    return model.eval()


def count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


# -- folding ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "shape"), [("cnn-teacher", SHAPE), ("resnet18", (3, 16, 16))])
def test_folded_model_matches_the_original_in_fp32(name: str, shape: tuple[int, int, int]) -> None:
    model = randomize_batchnorm(make(name, shape))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = accel.fold_batchnorm(model)
    assert count_bn(folded) == 0 and count_bn(model) > 0
    x = torch.rand(8, *shape)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # original untouched


class _Untraceable(nn.Module):
    """Python control flow on a tensor value: fx cannot trace it, the Sequential fallback must fold."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x).mean((2, 3))
        return self.head(h) if bool(h.sum() > -1e9) else -self.head(h)


def test_fold_falls_back_to_sequential_pairs_when_fx_cannot_trace() -> None:
    model = randomize_batchnorm(_Untraceable())
    folded = accel.fold_batchnorm(model)
    assert count_bn(folded) == 0
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)


# -- the frozen teacher's fast path ----------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher() -> TeacherEnsemble:
    torch.manual_seed(3)
    return TeacherEnsemble([randomize_batchnorm(make("cnn-teacher")) for _ in range(2)], [1.0, 3.0])


def fast(teacher: TeacherEnsemble, **fields: object) -> TeacherEnsemble:
    return accel.accelerate_teacher(teacher, SpeedPlan(**fields))


def test_fast_teacher_fp32_matches_and_bf16_is_close_with_the_same_argmax(teacher: TeacherEnsemble) -> None:
    x = torch.rand(64, *SHAPE)
    reference = teacher.probs(x, 2.0)
    folded = fast(teacher, teacher_channels_last=True).probs(x, 2.0)
    torch.testing.assert_close(folded, reference, rtol=1e-4, atol=1e-5)
    low = fast(teacher, teacher_channels_last=True, teacher_precision="bf16").probs(x, 2.0)
    assert low.dtype == torch.float32
    assert (low - reference).abs().max() < 0.05
    torch.testing.assert_close(low.sum(1), torch.ones(64), rtol=0, atol=1e-4)
    agree = (low.argmax(1) == reference.argmax(1)).float().mean()
    assert agree >= 0.95


def test_fast_teacher_output_is_a_usable_loss_target_and_needs_grad_keeps_autograd(teacher: TeacherEnsemble) -> None:
    x = torch.rand(4, *SHAPE)
    target = fast(teacher).probs(x)
    assert not target.is_inference() and not target.requires_grad
    logits = torch.randn(4, 10, requires_grad=True)
    (-(target * F.log_softmax(logits, 1)).sum()).backward()  # would fail on an inference tensor
    assert logits.grad is not None
    differentiable = accel.accelerate_teacher(teacher, SpeedPlan(), needs_grad=True)
    x.requires_grad_(True)
    differentiable.probs(x)[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_teacher_configure_rejects_an_unknown_precision(teacher: TeacherEnsemble) -> None:
    with pytest.raises(ValueError, match="precision"):
        TeacherEnsemble([make("cnn-student")]).configure(precision="int8")


# -- resolving and applying a plan -----------------------------------------------------------------
def test_explicit_options_are_taken_without_measuring(teacher: TeacherEnsemble) -> None:
    model = make("cnn-student")
    x, y = torch.rand(8, *SHAPE), torch.randint(0, 10, (8,))
    plan = accel.resolve_speed_plan(
        model, x, y, teacher=teacher, channels_last="on", precision="fp32", teacher_channels_last="off",
        teacher_precision="fp32",
    )  # fmt: skip
    assert plan.measured == {}
    assert (plan.channels_last, plan.precision, plan.teacher_channels_last, plan.teacher_precision) == (
        True,
        "fp32",
        False,
        "fp32",
    )
    assert SpeedPlan.from_dict(plan.to_dict()) == plan
    with pytest.raises(ValueError, match="precision"):
        accel.resolve_speed_plan(model, x, y, precision="fast")


def test_auto_measures_and_never_picks_bf16_without_bf16_kernels(
    teacher: TeacherEnsemble, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accel, "cpu_bf16_supported", lambda: False)
    model = make("cnn-student")
    x, y = torch.rand(8, *SHAPE), torch.randint(0, 10, (8,))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    plan = accel.resolve_speed_plan(model, x, y, teacher=teacher, precision="auto", repeats=1)
    assert plan.precision == plan.teacher_precision == "fp32"
    assert set(plan.measured["student"]) == {"nchw-fp32", "cl-fp32"} and set(plan.measured["teacher"]) == {
        "nchw-fp32",
        "cl-fp32",
    }
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # trials ran on copies
    assert torch.equal(torch.get_rng_state(), rng)  # measuring leaves the run's random stream alone


def test_channels_last_student_trains_like_the_nchw_one() -> None:
    torch.manual_seed(0)
    plain = make("cnn-student")
    fast_model = accel.prepare_student(make("cnn-student"), SpeedPlan(channels_last=True))
    fast_model.load_state_dict(plain.state_dict())
    conv = next(m for m in fast_model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x, y = torch.rand(16, *SHAPE), torch.randint(0, 10, (16,))
    losses = []
    for model, xin in ((plain, x), (fast_model, accel.as_input(x, True))):
        loss = F.cross_entropy(model(xin), y)
        loss.backward()
        losses.append((loss.detach(), model.net.fc.weight.grad.clone()))
    torch.testing.assert_close(losses[0][0], losses[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(losses[0][1], losses[1][1], rtol=1e-4, atol=1e-5)


def test_bf16_step_autocast_runs_convolutions_in_bf16_and_keeps_the_loss_close() -> None:
    model = make("cnn-student")
    x, y = torch.rand(16, *SHAPE), torch.randint(0, 10, (16,))
    with accel.step_autocast("cpu", SpeedPlan(precision="bf16")):
        logits = model(x)
    assert logits.dtype == torch.bfloat16
    with accel.step_autocast("cpu", SpeedPlan()):
        reference = model(x)
    assert reference.dtype == torch.float32
    ce = F.cross_entropy(logits.float(), y)
    assert abs(ce.item() - F.cross_entropy(reference, y).item()) < 0.05


def test_compiled_student_matches_eager_and_keeps_its_state_dict_keys() -> None:
    # aot_eager traces forward and backward as inductor does, in a second; inductor itself compiles C++ for
    # about a minute here, so it runs only with AKD_EDGE_TEST_INDUCTOR=1 (benchmarks/loop_vs_plain.py times it)
    backend = "inductor" if os.environ.get("AKD_EDGE_TEST_INDUCTOR") == "1" else "aot_eager"
    model = make("cnn-student")
    compiled = accel.prepare_student(model, SpeedPlan(compile=True), backend=backend)
    x, y = torch.rand(4, *SHAPE), torch.randint(0, 10, (4,))
    F.cross_entropy(compiled(x), y).backward()
    assert model.net.fc.weight.grad is not None
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)
    assert set(model.state_dict()) == {k.removeprefix("_orig_mod.") for k in compiled.state_dict()}


def test_compile_mode_reaches_torch_compile_and_cuda_graph_steps_are_marked(monkeypatch: pytest.MonkeyPatch) -> None:
    modes: list[str | None] = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None, backend="inductor": modes.append(mode) or model)
    marks: list[int] = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    graphs = SpeedPlan(compile=True, compile_mode="reduce-overhead")
    for plan in (SpeedPlan(compile=True), graphs, SpeedPlan(compile=True, compile_mode="max-autotune-no-cudagraphs")):
        accel.prepare_student(make("cnn-student"), plan)
    assert modes == [None, "reduce-overhead", "max-autotune-no-cudagraphs"]
    assert graphs.cuda_graphs and not SpeedPlan(compile=True).cuda_graphs
    assert not SpeedPlan(compile_mode="reduce-overhead").cuda_graphs  # not compiled: nothing replays
    accel.mark_step(graphs, torch.device("cpu"))  # CPU tensors never go through CUDA graphs
    accel.mark_step(SpeedPlan(compile=True), torch.device("cuda"))
    assert marks == []
    accel.mark_step(graphs, torch.device("cuda"))
    assert marks == [1]


def test_a_run_with_cuda_graphs_compiles_in_that_mode_and_records_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from akd_edge.config import load_recipe
    from akd_edge.models.checkpoint import load_checkpoint
    from akd_edge.train.loop import Trainer

    modes: list[str | None] = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None, backend="inductor": modes.append(mode) or model)
    recipe = {
        "run": {"name": "graphs", "seed": 0, "device": "cpu"},
        "data": {"name": "synthetic", "data_dir": "n=128,test=32,shape=1x8x8,classes=3", "val_size": 32},
        "model": {"name": "cnn-student", "kwargs": {"width": 0.5}},
        "method": {"name": "at"},
        "train": {"epochs": 1, "compile": True, "compile_mode": "reduce-overhead", "keep_epoch_checkpoints": False},
        "eval": {"val_samples": 16, "attack": {"eps": 0.1, "steps": 1}},
    }
    summary = Trainer(load_recipe(recipe), tmp_path / "run", "student").run()
    assert modes == ["reduce-overhead"]
    assert load_checkpoint(tmp_path / "run", "last")["speed"]["compile_mode"] == "reduce-overhead"
    assert summary["speed"]["compile"] and summary["speed"]["compile_mode"] == "reduce-overhead"


def test_a_plan_saved_before_compile_modes_existed_loads_with_the_default_mode() -> None:
    saved = SpeedPlan(compile=True).to_dict()
    del saved["compile_mode"]
    assert SpeedPlan.from_dict(saved) == SpeedPlan(compile=True)


# -- the range check, once per dataset -------------------------------------------------------------
def test_range_check_can_be_skipped_per_call_and_is_on_by_default() -> None:
    model = make("cnn-student")
    x, y = torch.rand(4, *SHAPE) * 2, torch.randint(0, 10, (4,))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        pgd(model, x, y, eps=0.1, steps=1, step_size=0.1)
    out = pgd(model, x, y, eps=0.1, steps=1, step_size=0.1, check_range=False)
    assert out.shape == x.shape
    unchecked = build_attack(AttackConfig(steps=1), check_range=False)
    assert unchecked is not None and unchecked(model, x, y).shape == x.shape
    with pytest.raises(DataError):
        build_attack(AttackConfig(name="fgsm"))(model, x, y)


# -- prefetching batches -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_ds():
    return generate(parse_spec("n=53,test=4,shape=3x8x8,classes=5,seed=2")).train


def test_prefetched_batches_are_identical_to_plain_ones(small_ds) -> None:
    kwargs = {"shuffle": True, "augment": True, "seed": 7, "epoch": 3, "start_batch": 1}
    plain = list(iterate_batches(small_ds, 10, **kwargs))
    ahead = list(iterate_batches(small_ds, 10, prefetch=2, **kwargs))
    assert len(plain) == len(ahead) == 5
    for a, b in zip(plain, ahead, strict=True):
        assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


def test_stopping_early_ends_the_prefetch_thread_and_errors_reach_the_consumer(small_ds) -> None:
    import threading

    batches = iterate_batches(small_ds, 10, prefetch=1)
    next(batches)
    batches.close()
    assert not any(t.name == "akd-edge-batches" for t in threading.enumerate())
    broken = small_ds.subset(np.arange(10))
    object.__setattr__(broken, "images", None)  # the producer thread fails on its first batch
    with pytest.raises(AttributeError):
        next(iterate_batches(broken, 4, prefetch=1))


def test_device_sums_add_tensors_and_read_once() -> None:
    sums = accel.DeviceSums("cpu")
    sums.add(loss=torch.tensor(1.5), n=4)
    sums.add(loss=torch.tensor(0.5), n=4.0)
    assert sums.read() == {"loss": 2.0, "n": 8.0}
    assert accel.DeviceSums("cpu").read() == {}
