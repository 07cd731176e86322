"""akd-edge's training loop against a plain PyTorch loop on identical models, data and settings.

The plain loop has the structure of the published AKD/ARD/RSLAD code: for each batch, PGD against the student
(in eval mode), the teacher in eval mode on x', CE against ``alpha * softmax(T(x')) + (1 - alpha) * onehot(y)``,
an SGD step. Both train cnn-student with AKD alpha 0.9 from ``builtin:fmnist-teacher``, PGD-5 Linf 0.1, batch
128, SGD + one-cycle, on the same N Fashion-MNIST training images, in whole passes. Each variant runs in a
fresh process, variants alternate (plain, akd-edge, plain, akd-edge, ...), and the script prints images/s of
the training passes alone and of the whole command (start-up, data, validation, checkpoints), with ratios.

``plain-accel`` is the plain loop with akd_edge.train.accel's options (decided on this machine at start:
channels_last, bf16 autocast where measured faster, folded teacher): the speed attainable before the loop
uses them. ``--accuracy`` trains plain fp32 and plain-accel for ``--epochs`` and evaluates both (clean and
PGD-20 on test images), to check bf16 does not cost accuracy.

    python benchmarks/loop_vs_plain.py [--n 12800] [--rounds 2] [--threads 0] [--modes plain,akd-edge,plain-accel]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START = time.perf_counter()
ALPHA, EPS, STEPS, BATCH, LR = 0.9, 0.1, 5, 128, 0.1
STEP_SIZE = 2.5 * EPS / STEPS  # akd-edge's default step size, used by both loops
MODES = ("plain", "akd-edge", "plain-accel")


# -- the plain loop ------------------------------------------------------------------------------
def plain_pgd(model, x, y, autocast):  # noqa: ANN001, ANN201 - kept as bare as the published code
    import torch
    import torch.nn.functional as F

    x_adv = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1)
    for _ in range(STEPS):
        x_adv.requires_grad_(True)
        with autocast():
            loss = F.cross_entropy(model(x_adv).float(), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + STEP_SIZE * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS).clamp(0, 1)
    return x_adv.detach()


def run_plain(args: argparse.Namespace, accel_on: bool) -> dict:
    import contextlib

    import torch
    import torch.nn.functional as F

    from akd_edge.config import DataConfig, TeacherSpec
    from akd_edge.data import load_dataset
    from akd_edge.models import create_model
    from akd_edge.teachers import load_teachers

    torch.manual_seed(args.seed)
    splits = load_dataset(DataConfig(name="fashion-mnist", train_subset=args.n), args.seed)
    images = torch.from_numpy(splits.train.images).float().div_(255)
    labels = torch.from_numpy(splits.train.labels)
    s = splits
    student = create_model("cnn-student", num_classes=10, input_shape=s.input_shape, mean=s.mean, std=s.std)
    teacher = load_teachers([TeacherSpec(path="builtin:fmnist-teacher")], "cpu", s.input_shape, 10)
    plan = None
    autocast = contextlib.nullcontext
    if accel_on:
        from akd_edge.train import accel

        plan = accel.resolve_speed_plan(
            student, images[:BATCH], labels[:BATCH], teacher=teacher, precision=args.accel_precision
        )
        student = accel.prepare_student(student, plan)
        teacher = accel.accelerate_teacher(teacher, plan)

        def autocast() -> contextlib.AbstractContextManager:
            return accel.autocast("cpu", plan.precision)

    optimizer = torch.optim.SGD(student.parameters(), lr=LR, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = args.epochs * -(-len(images) // BATCH)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LR, total_steps=steps, cycle_momentum=False)
    train_s, loss_sum = 0.0, 0.0
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        order = torch.randperm(len(images))
        for start in range(0, len(images), BATCH):
            idx = order[start : start + BATCH]
            x, y = images[idx], labels[idx]
            if plan is not None and plan.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            student.eval()
            x_adv = plain_pgd(student, x, y, autocast)
            student.train()
            with torch.no_grad():
                teacher_probs = teacher.probs(x_adv)
            with autocast():
                logits = student(x_adv)
            target = ALPHA * teacher_probs + (1 - ALPHA) * F.one_hot(y, 10).float()
            loss = -(target * F.log_softmax(logits.float(), 1)).sum(1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item()
        train_s += time.perf_counter() - t0
    out = Path(tempfile.mkdtemp(prefix="plain-"))
    torch.save(student.state_dict(), out / "student.pt")
    result = {"train_s": train_s, "images": args.epochs * len(images), "loss": loss_sum / steps}
    if plan is not None:
        result["plan"] = {k: v for k, v in plan.to_dict().items() if k != "measured"}
    if args.accuracy:
        result |= evaluate(student, args)
    return result


def evaluate(model, args: argparse.Namespace) -> dict:  # noqa: ANN001
    import torch

    from akd_edge.attacks import pgd
    from akd_edge.config import DataConfig
    from akd_edge.data import load_dataset
    from akd_edge.models.mode import eval_mode

    test = load_dataset(DataConfig(name="fashion-mnist"), args.seed).test
    x = torch.from_numpy(test.images[: args.test_n]).float().div_(255)
    y = torch.from_numpy(test.labels[: args.test_n])
    x = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
    clean = adv = 0
    with eval_mode(model):
        model = model.float()
        for i in range(0, len(x), 500):
            xb, yb = x[i : i + 500], y[i : i + 500]
            with torch.no_grad():
                clean += int((model(xb).argmax(1) == yb).sum())
            xa = pgd(model, xb, yb, eps=EPS, steps=20, step_size=EPS / 8)
            with torch.no_grad():
                adv += int((model(xa).argmax(1) == yb).sum())
    return {"clean_acc": clean / len(x), "pgd20_acc": adv / len(x)}


# -- akd-edge's loop -----------------------------------------------------------------------------
def run_akd_edge(args: argparse.Namespace) -> dict:
    from akd_edge.config import load_recipe
    from akd_edge.train.loop import Callbacks, train_run

    class PassTimer(Callbacks):
        """Times each training pass: from the start of the epoch to the start of its validation."""

        def __init__(self) -> None:
            self.train_s, self.t0 = 0.0, 0.0

        def on_epoch_start(self, *_: object) -> None:
            self.t0 = time.perf_counter()

        def on_validate(self, epoch: int) -> None:
            self.train_s += time.perf_counter() - self.t0

    overrides = [
        "run.device=cpu",
        f"run.seed={args.seed}",
        f"run.threads={args.threads}",
        f"data.train_subset={args.n}",
        f"data.batch_size={BATCH}",
        f"train.epochs={args.epochs}",
        f"train.attack.eps={EPS}",
        f"train.attack.steps={STEPS}",
        f"method.alpha={ALPHA}",
    ]
    recipe = load_recipe("fmnist-akd", overrides)
    timer = PassTimer()
    summary = train_run(recipe, Path(tempfile.mkdtemp(prefix="akd-edge-")) / "run", callbacks=timer)
    return {"train_s": timer.train_s, "images": args.epochs * args.n, "val": summary.get("last", {})}


def worker(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    accel_on = args.worker == "plain-accel"
    result = run_akd_edge(args) if args.worker == "akd-edge" else run_plain(args, accel_on=accel_on)
    result["process_s"] = time.perf_counter() - START
    print("RESULT " + json.dumps(result))


# -- the driver ----------------------------------------------------------------------------------
def spawn(mode: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--n", str(args.n), "--epochs", str(args.epochs)]
    cmd += ["--threads", str(args.threads), "--seed", str(args.seed), "--test-n", str(args.test_n)]
    cmd += ["--accel-precision", args.accel_precision] + (["--accuracy"] if args.accuracy else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads)) if args.threads else None
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t0
    line = next((row for row in proc.stdout.splitlines() if row.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(line[7:]), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12800, help="training images (the first N after the split)")
    parser.add_argument("--epochs", type=int, default=1, help="whole passes over the N images per run")
    parser.add_argument("--rounds", type=int, default=2, help="times each mode runs, alternated")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per process (0 = torch's default)")
    parser.add_argument("--modes", default="plain,akd-edge,plain-accel", help=f"comma-separated, from {MODES}")
    parser.add_argument("--accel-precision", default="auto", help="plain-accel student precision: auto, fp32, bf16")
    parser.add_argument("--accuracy", action="store_true", help="also evaluate each trained student")
    parser.add_argument("--test-n", type=int, default=2000, help="test images for --accuracy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from akd_edge.train.accel import machine_summary

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose from {MODES}")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_summary()
    print(
        f"Machine: {machine['cpu']}, flags {' '.join(machine['cpu_flags']) or '-'} "
        f"(torch capability {machine['cpu_capability']}, oneDNN bf16 {machine['cpu_bf16']}), "
        f"{os.cpu_count()} CPUs, {args.threads or torch.get_num_threads()} torch threads per process, "
        f"torch {machine['torch']}"
    )
    print(f"cnn-student AKD alpha {ALPHA}, PGD-{STEPS} Linf {EPS}, batch {BATCH}, {args.n} images x {args.epochs}")
    results: dict[str, list[dict]] = {m: [] for m in modes}
    for rnd in range(args.rounds):
        for mode in modes:
            res = spawn(mode, args)
            results[mode].append(res)
            extra = {k: res[k] for k in ("plan", "clean_acc", "pgd20_acc", "val") if k in res}
            print(
                f"round {rnd + 1} {mode:12s} train {res['images'] / res['train_s']:7.0f} img/s, "
                f"whole command {res['images'] / res['wall_s']:7.0f} img/s ({res['wall_s']:.0f} s) {extra}",
                flush=True,
            )
    print("\n| mode | training passes, img/s | whole command, img/s | vs plain (train) | vs plain (whole) |")
    print("|---|---:|---:|---:|---:|")
    total = {m: sum(r["images"] for r in rs) for m, rs in results.items()}
    train = {m: total[m] / sum(r["train_s"] for r in rs) for m, rs in results.items()}
    whole = {m: total[m] / sum(r["wall_s"] for r in rs) for m, rs in results.items()}
    for mode in modes:
        ratio_t = f"{train[mode] / train['plain']:.2f}x" if "plain" in train else "-"
        ratio_w = f"{whole[mode] / whole['plain']:.2f}x" if "plain" in whole else "-"
        print(f"| {mode} | {train[mode]:.0f} | {whole[mode]:.0f} | {ratio_t} | {ratio_w} |")


if __name__ == "__main__":
    main()
