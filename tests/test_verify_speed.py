"""Verify's speed levers change no result: each is checked against the path it replaced.

- Square draws from a generator of its own: the examples of pyautoattack's ``SquareAttack.perturb``, bit for bit,
  and a batch attacked alone gives what it gives inside the whole set.
- The transfer examples, one task per AutoAttack batch (on the attack copy, micro-batched forward passes): the
  examples of :func:`run_autoattack_report` on the whole set.
- Worker processes: the same report as one process; a tiny export verified end to end matches the old path
  (whole-set AutoAttack, then the official Square per batch).
- Bit-identical files are attacked once and say with which file they share results; several exports verified
  in one call share the transfer examples of their common checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_verify import SHAPE, SYNTH, save_checkpoint, train_tiny  # tests/ is on sys.path
from torch import nn

from akd_edge.attacks.autoattack import run_autoattack_report, run_square
from akd_edge.core.files import sha256_file
from akd_edge.core.ort import OrtClassifier
from akd_edge.export import export_checkpoint
from akd_edge.verify import attacks as verify_attacks
from akd_edge.verify import transfer as verify_transfer
from akd_edge.verify.command import verify_export, verify_exports
from akd_edge.verify.pool import PoolTask, run_jobs


def official_square(predict: Any, x: torch.Tensor, y: torch.Tensor, batch_size: int, **settings: Any) -> torch.Tensor:
    """The path run_square replaced: pyautoattack's SquareAttack.perturb per batch, on torch's global RNG."""
    from pyautoattack.square import SquareAttack

    norms = {"linf": "Linf", "l2": "L2"}
    attack = SquareAttack(predict, **{**settings, "norm": norms[settings["norm"]]}, verbose=False, device=x.device)
    x_adv = x.clone()
    with torch.random.fork_rng(), torch.no_grad():
        for lo in range(0, len(x), batch_size):
            xb, yb = x[lo : lo + batch_size], y[lo : lo + batch_size]
            correct = predict(xb).argmax(1) == yb
            if correct.any():
                x_adv[lo : lo + batch_size] = attack.perturb(xb, yb)
    return x_adv


def linear(seed: int = 0) -> Any:
    weights = torch.randn(64, 4, generator=torch.Generator().manual_seed(seed)) * 0.5
    return lambda x: x.flatten(1) @ weights


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 1.5)])
def test_square_draws_from_its_own_generator_with_the_official_examples(norm: str, eps: float) -> None:
    predict = linear()
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = predict(x).argmax(1)
    settings = {"eps": eps, "norm": norm, "n_queries": 150, "p_init": 0.8, "seed": 3, "n_restarts": 2}
    torch.manual_seed(7)
    state = torch.get_rng_state()
    ours = run_square(predict, x, y, batch_size=16, **settings)
    assert torch.equal(torch.get_rng_state(), state), "torch's global RNG is neither read nor reseeded"
    reference = official_square(predict, x, y, 16, **settings)
    assert torch.equal(ours.x_adv, reference) and not torch.equal(ours.x_adv, x)
    alone = run_square(predict, x[16:32], y[16:32], batch_size=16, **settings)  # the second batch by itself
    assert torch.equal(alone.x_adv, ours.x_adv[16:32])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """A briefly trained cnn-student on synthetic 12x12 images: (model, checkpoint)."""
    model = train_tiny(epochs=3)
    return model, save_checkpoint(model, tmp_path_factory.mktemp("speed") / "tiny.pt")


def test_transfer_batches_rebuild_the_whole_cascade(
    tiny: tuple[nn.Module, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of 16 (the last one short) as tasks, forward passes 5 images at a time, on the attack copy:
    the examples AutoAttack gives on the whole set at once on that copy."""
    model, _ = tiny
    monkeypatch.setattr(verify_transfer, "MICRO_BATCH", 5)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, *SHAPE), dtype=np.uint8)
    labels = model(torch.from_numpy(images / 255.0).float()).argmax(1).numpy()
    labels[:3] = (labels[:3] + 1) % 10  # a few misclassified: left alone by both
    settings = {"norm": "linf", "eps": 0.03, "version": "fast", "seed": 2, "batch_size": 16}
    job = verify_transfer.transfer_job(model, images, labels, **settings)
    results, timings = run_jobs({"transfer": ("transfer", job, 1)}, workers=1)
    x_adv, info = results["transfer"]
    assert timings["transfer"].tasks >= 4, "apgd-ce and apgd-t, each in batches of 16"
    whole = run_autoattack_report(
        verify_transfer.attack_copy(model),
        torch.from_numpy(images / np.float32(255)),
        torch.from_numpy(labels.astype(np.int64)),
        **settings,
    )
    assert np.array_equal(x_adv, whole.x_adv.numpy())
    assert info["torch_robust_acc"] == pytest.approx(float(whole.robust.float().mean()))
    assert all(p.requires_grad for p in model.parameters()), "the model itself is left as it was"


def test_the_attack_copy_computes_the_model_with_its_batchnorms_folded(tiny: tuple[nn.Module, Path]) -> None:
    """What the transfer attack differentiates: the same logits and input gradients as the model (up to float
    rounding), no BatchNorm left after a convolution, channels_last weights, nothing trainable; the model is
    untouched."""
    import copy

    model = copy.deepcopy(tiny[0]).eval()
    for module in model.modules():  # statistics far from the identity, so a wrong fold would show
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = verify_transfer.attack_copy(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    convs = [m for m in fast.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not any(p.requires_grad for p in fast.parameters())
    x = torch.rand(32, *SHAPE, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)
    grads = []
    for net in (model, fast):
        xa = x.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(net(xa), y)
        grads.append(torch.autograd.grad(loss, xa)[0])
    torch.testing.assert_close(fast(x), model(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-4)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.fixture(scope="module")
def export(tiny: tuple[nn.Module, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder, _ = export_checkpoint(tiny[1], tmp_path_factory.mktemp("speed-export") / "export", calib=200, web=False)
    return folder


def copy_export(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


def test_workers_and_one_process_give_the_old_path_results(
    export: Path, tiny: tuple[nn.Module, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two worker processes, one process, and the path verify took before (the whole cascade in one call,
    then the official Square per batch of 256): the same accuracies, the same worst-case examples."""
    monkeypatch.setattr(verify_attacks, "MIN_PARALLEL_IMAGES", 0)
    monkeypatch.setattr(verify_attacks, "SQUARE_BATCH", 32)  # 60 images: two Square batches per model
    common = {"data_dir": SYNTH, "n": 60, "square_queries": 60, "latency": False, "checkpoint": str(tiny[1])}
    folders = {threads: copy_export(export, tmp_path / f"threads-{threads}") for threads in (1, 2)}
    sections = {threads: verify_export(folder, threads=threads, **common) for threads, folder in folders.items()}
    assert sections[2]["settings"]["workers"] == 2 and sections[1]["settings"]["workers"] == 1
    assert sections[1]["models"] == sections[2]["models"]
    replays = {t: np.load(folder / "replay.npz") for t, folder in folders.items()}
    assert np.array_equal(replays[1]["examples"], replays[2]["examples"])

    from akd_edge.data import load_test_split

    test, _ = load_test_split("synthetic", SYNTH, 60)
    x = torch.from_numpy(test.images.astype(np.float32) / 255)
    y = torch.from_numpy(test.labels.astype(np.int64))
    fast = verify_transfer.attack_copy(tiny[0])
    transferred = run_autoattack_report(fast, x, y, norm="linf", eps=0.08, version="fast", batch_size=250).x_adv
    for name, entry in sections[2]["models"].items():
        session = OrtClassifier.load(export / name)
        square = official_square(
            session.torch_predict(), x, y, 32, eps=0.08, norm="linf", n_queries=60, p_init=0.8, seed=0
        )
        clean = session.correct(x.numpy(), test.labels)
        flags = {"square": session.correct(square.numpy(), test.labels)}
        flags["transfer"] = session.correct(transferred.numpy(), test.labels)
        for key, correct in flags.items():
            assert entry[f"{key}_acc"] == pytest.approx(correct.mean()), (name, key)
        assert entry["robust_n"] == int((clean & flags["square"] & flags["transfer"]).sum())


def test_bit_identical_files_are_attacked_once_and_say_so(
    export: Path, tiny: tuple[nn.Module, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder whose int8 file is a copy of its fp32 one, and a copy of the whole folder, verified in one call:
    Square runs once per distinct file, the transfer once per checkpoint, and each report names the file or
    folder whose results it shares."""
    first = copy_export(export, tmp_path / "first")
    shutil.copyfile(first / "model.onnx", first / "model.int8.onnx")
    report = json.loads((first / "report.json").read_text())
    report["files"]["model.int8.onnx"]["sha256"] = sha256_file(first / "model.int8.onnx")
    (first / "report.json").write_text(json.dumps(report))
    second = copy_export(first, tmp_path / "second")
    calls: dict[str, int] = {"square": 0, "transfer": 0}
    real_square, real_transfer = verify_attacks.square_task, verify_transfer.transfer_job

    def square_task(*args: Any) -> Any:
        calls["square"] += 1
        return real_square(*args)

    def transfer_job(*args: Any, **kwargs: Any) -> Any:
        calls["transfer"] += 1
        return (yield from real_transfer(*args, **kwargs))

    monkeypatch.setattr(verify_attacks, "square_task", square_task)
    monkeypatch.setattr(verify_transfer, "transfer_job", transfer_job)
    common = {"data_dir": SYNTH, "n": 40, "square_queries": 30, "latency": False, "checkpoint": str(tiny[1])}
    a, b = verify_exports([first, second], **common)
    assert calls == {"square": 1, "transfer": 1}, "one file, one checkpoint: one Square batch, one transfer"
    assert a["models"]["model.int8.onnx"]["same_file_as"] == "model.onnx"
    assert b["models"]["model.onnx"]["same_file_as"] == str(first / "model.onnx")
    assert b["settings"]["transfer"]["shared_with"] == str(first)
    accuracies = {k: v for k, v in a["models"]["model.onnx"].items() if k != "same_file_as"}
    for section in (a, b):
        for entry in section["models"].values():
            assert {k: v for k, v in entry.items() if k != "same_file_as"} == accuracies
    saved = json.loads((second / "report.json").read_text())["verify"]
    assert saved["models"]["model.int8.onnx"]["same_file_as"] == str(first / "model.onnx")
    from click.testing import CliRunner

    from akd_edge.cli.verify_cmd import verify_cmd

    args = [str(first), "--data-dir", SYNTH, "-n", "40", "--square-queries", "5", "--transfer", "none", "--no-latency"]
    printed = CliRunner().invoke(verify_cmd, args, env={"COLUMNS": "200"})
    assert printed.exit_code == 0, printed.output
    assert "model.int8.onnx is bit-identical to model.onnx: attacked once" in printed.output
    assert "attacks: " in printed.output and "in one process" in printed.output


def counting_task(value: int, fail: bool, progress: Any) -> int:
    """A task for the pool test (workers import it from this module): reports progress, maybe fails."""
    progress(1)
    if fail:
        raise ValueError(f"task {value} failed on purpose")
    return value * 10


def two_steps(values: list[int], fail_at: int | None) -> Any:
    first = yield [PoolTask(counting_task, (v, v == fail_at), 2) for v in values]
    second = yield [PoolTask(counting_task, (sum(first), False), 2)]
    return first, second


def children() -> list[str]:
    path = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    return path.read_text().split() if path.exists() else []


def test_worker_pool_runs_steps_in_order_and_stops_on_a_failure() -> None:
    """Results come back in task order, a job's next step starts when its last one is done, progress ends at the
    total; a task's exception is raised here and no worker process is left behind."""
    ticks: list[tuple[str, int, int]] = []
    results, timings = run_jobs(
        {"a": ("a", two_steps([1, 2, 3], None), 8), "b": ("b", two_steps([4], None), 4)},
        workers=2,
        on_progress=lambda *tick: ticks.append(tick),
    )
    assert results == {"a": ([10, 20, 30], [600]), "b": ([40], [400])}
    assert timings["a"].tasks == 4 and timings["b"].tasks == 2
    assert ("a", 8, 8) in ticks and ("b", 4, 4) in ticks
    with pytest.raises(ValueError, match="task 2 failed on purpose"):
        run_jobs({"a": ("a", two_steps([1, 2, 3], 2), 8)}, workers=2)
    assert children() == [], "the workers are stopped"
