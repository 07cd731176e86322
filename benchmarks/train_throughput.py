"""Training throughput of each objective on the Fashion-MNIST teacher/student pair, and share of peak.

Prints a markdown table: images/s for teacher AT and for the student trained with AT, TRADES, RSLAD and AKD
(1 and 3 teachers), the model FLOPs of one step (torch's FlopCounterMode, attack included) and the FLOP/s
reached as a share of a large matmul's FLOP/s measured in the same run on the same device (in the step's
precision). ``--suite cifar`` runs the CIFAR-shape configurations (WRN-34-10 teacher AT, ResNet-18 and
MobileNetV2 AKD students from WRN-34-10, PGD-10 Linf 8/255, batch 128 and 512); ``--device cuda`` runs on
the GPU (bf16 autocast by default there, cudnn.benchmark on). ``--plain`` adds, for every student, the same AKD step
written as a plain eager loop (the structure of the published AKD/ARD/RSLAD code: PGD on the student in eval
mode, the teacher on x' under no_grad, soft cross-entropy, SGD step; same precision and memory format, no
folding, no compile), timed in the same run, and prints akd-edge's ratio to it. ``--match TEXT`` (repeatable) keeps the
configurations whose label contains every TEXT. ``--tiny`` is a seconds-long smoke check of the code path (batch 4,
one step, PGD-1) whose numbers mean nothing.

    python benchmarks/train_throughput.py [--batches 10] [--batch-size 128] [--threads 0]
    python benchmarks/train_throughput.py --suite cifar --device cuda [--channels-last] [--compile] [--plain]
        [--compile-mode reduce-overhead]
    python benchmarks/train_throughput.py --suite cifar --device cpu --tiny
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from akd_edge.attacks import build_attack
from akd_edge.config import COMPILE_MODES, AttackConfig, MethodConfig, OptimConfig
from akd_edge.methods import METHODS
from akd_edge.models import create_model
from akd_edge.teachers import TeacherEnsemble
from akd_edge.train import accel
from akd_edge.train.schedule import build_optimizer

SHAPE = (1, 28, 28)
EPS = 0.1
CIFAR_SHAPE, CIFAR_EPS, CIFAR_STEPS = (3, 32, 32), 8 / 255, 10


def make(name: str, shape: tuple[int, ...] = SHAPE) -> torch.nn.Module:
    channels = shape[0]
    return create_model(name, num_classes=10, input_shape=shape, mean=[0.4] * channels, std=[0.25] * channels)


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker, whose backward hooks break autograd.grad on inputs."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def count_flops(fn: callable, *args: object) -> int:
    """Total FLOPs of ``fn(*args)`` (forward, backward and attack gradients) by torch's FLOP counter."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        fn(*args)
    return counter.get_total_flops()


def matmul_peak(n: int = 2048, repeats: int = 10, device: str = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of a large matmul in ``dtype``: the device's practical peak for these kernels."""
    if device != "cpu":
        n, repeats = 8192, 50
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    accel.time_alternating({"warm": lambda: a @ b}, device, repeats=1, warmup=0)
    seconds = accel.time_alternating({"matmul": lambda: [a @ b for _ in range(repeats)]}, device, repeats=1)
    return 2 * n**3 * repeats / seconds["matmul"]


def step_fn(
    model: torch.nn.Module, method: str, steps: int, teachers: int, args: argparse.Namespace, setting: dict
) -> callable:
    shape, teacher_name = setting["shape"], setting["teacher"]
    members = [make(teacher_name, shape).to(args.device) for _ in range(teachers)]
    teacher = TeacherEnsemble(members) if teachers else None
    plan = accel.SpeedPlan(
        channels_last=args.channels_last,
        precision=args.amp,
        compile=args.compile,
        compile_mode=args.compile_mode,
        teacher_channels_last=args.channels_last,
        teacher_precision=args.amp,
        cudnn_benchmark=args.device.startswith("cuda"),
    )
    if teacher is not None:
        teacher = accel.accelerate_teacher(teacher, plan)
    runnable = accel.prepare_student(model, plan)
    attack = build_attack(AttackConfig(eps=setting["eps"], steps=steps), check_range=False)
    task = METHODS.get(method)(runnable, attack, MethodConfig(name=method), teacher)
    optimizer = build_optimizer(model, OptimConfig())

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        model.train()
        accel.mark_step(plan, x.device)
        with accel.step_autocast(x.device, plan):
            loss = task(accel.as_input(x, plan.channels_last), y)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def plain_step_fn(
    model: torch.nn.Module, method: str, steps: int, teachers: int, args: argparse.Namespace, setting: dict
) -> callable:
    """The AKD step as the published code writes it (alpha 0.9, temperature 1), with no akd-edge code in it."""
    import torch.nn.functional as F

    if method != "akd" or teachers != 1:
        raise ValueError("the plain loop is written for AKD with one teacher")
    eps, alpha = setting["eps"], 0.9
    step_size = 2.5 * eps / steps
    memory = torch.channels_last if args.channels_last else torch.contiguous_format
    teacher = make(setting["teacher"], setting["shape"]).to(args.device, memory_format=memory).eval()
    model.to(memory_format=memory)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    dtype = accel.DTYPES.get(args.amp)
    device_type = torch.device(args.device).type

    def autocast() -> object:
        return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        x = x.contiguous(memory_format=memory)
        model.eval()
        x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with autocast():
                loss = F.cross_entropy(model(x_adv).float(), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + step_size * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
        model.train()
        with torch.no_grad(), autocast():
            soft = teacher(x_adv).float().softmax(1)
        target = alpha * soft + (1 - alpha) * F.one_hot(y, soft.shape[1]).float()
        with autocast():
            loss = torch.sum(-target * F.log_softmax(model(x_adv).float(), 1), 1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def measure(
    label: str,
    model_name: str,
    method: str,
    steps: int,
    teachers: int,
    args: argparse.Namespace,
    setting: dict,
    plain: bool = False,
) -> dict:
    torch.manual_seed(0)
    batch_size = setting.get("batch_size", args.batch_size)
    model = make(model_name, setting["shape"]).to(args.device)
    x = torch.rand(batch_size, *setting["shape"], device=args.device)
    y = torch.randint(0, 10, (batch_size,), device=args.device)
    compiled = not plain and args.compile
    # FLOPs counted on an eager copy of the step: a dispatch mode around a compiled (or CUDA-graphed) call
    # would count a different program
    eager = argparse.Namespace(**{**vars(args), "compile": False, "compile_mode": "default"})
    flops = count_flops(
        (plain_step_fn if plain else step_fn)(
            make(model_name, setting["shape"]).to(args.device), method, steps, teachers, eager, setting
        ),
        x,
        y,
    )
    step = (plain_step_fn if plain else step_fn)(model, method, steps, teachers, args, setting)
    for _ in range(3 if compiled else 1):
        step(x, y)  # warm-up (compilation, and CUDA graph recording takes a few calls)
    seconds = accel.time_alternating({"run": lambda: [step(x, y) for _ in range(args.batches)]}, args.device, 1, 0)
    seconds = seconds["run"]
    return {
        "label": label,
        "images_per_s": args.batches * batch_size / seconds,
        "gflop_per_step": flops / 1e9,
        "gflop_per_s": flops * args.batches / seconds / 1e9,
    }


def cifar_configs(tiny: bool) -> list[tuple]:
    """WRN-34-10 teacher AT and ResNet-18 / MobileNetV2 AKD students from it, batch 128 and 512."""
    steps = 1 if tiny else CIFAR_STEPS
    configs = []
    for batch in (4,) if tiny else (128, 512):
        setting = {"shape": CIFAR_SHAPE, "teacher": "wrn-34-10", "eps": CIFAR_EPS, "batch_size": batch}
        configs += [
            (f"teacher wrn-34-10, AT PGD-{steps}, batch {batch}", "wrn-34-10", "at", steps, 0, setting),
            (f"student resnet18, AKD PGD-{steps} from wrn-34-10, batch {batch}", "resnet18", "akd", steps, 1, setting),
            (
                f"student mobilenetv2, AKD PGD-{steps} from wrn-34-10, batch {batch}",
                "mobilenetv2",
                "akd",
                steps,
                1,
                setting,
            ),
        ]
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=10, help="timed batches per configuration")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size of the fmnist suite")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--suite", choices=("fmnist", "cifar"), default="fmnist")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--amp", choices=accel.PRECISIONS, help="step precision (default: bf16 on cuda, else fp32)")
    parser.add_argument("--channels-last", action="store_true", help="student, teacher and batches channels_last")
    parser.add_argument("--compile", action="store_true", help="torch.compile the student (inductor)")
    parser.add_argument(
        "--compile-mode",
        choices=COMPILE_MODES,
        default="default",
        help="torch.compile mode of the student (implies --compile; reduce-overhead: CUDA graphs)",
    )
    parser.add_argument("--plain", action="store_true", help="also time each AKD student step as a plain eager loop")
    parser.add_argument(
        "--match",
        action="append",
        default=[],
        help="only the configurations whose label contains this text (repeatable: all)",
    )
    parser.add_argument("--tiny", action="store_true", help="smoke check: batch 4, one step, PGD-1")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.amp = args.amp or ("bf16" if args.device.startswith("cuda") else "fp32")
    args.compile = args.compile or args.compile_mode != "default"  # a mode implies compiling
    accel.configure_cuda(args.device.startswith("cuda"))  # cudnn autotuning, as a training run has it (both loops)
    if args.tiny:
        args.batches, args.batch_size = 1, 4
    fmnist = {"shape": SHAPE, "teacher": "cnn-teacher", "eps": EPS}
    configs = [
        ("teacher cnn-teacher, AT PGD-3", "cnn-teacher", "at", 3, 0, fmnist),
        ("student cnn-student, AT PGD-5", "cnn-student", "at", 5, 0, fmnist),
        ("student cnn-student, TRADES PGD-5", "cnn-student", "trades", 5, 0, fmnist),
        ("student cnn-student, RSLAD PGD-5", "cnn-student", "rslad", 5, 1, fmnist),
        ("student cnn-student, AKD PGD-5, 1 teacher", "cnn-student", "akd", 5, 1, fmnist),
        ("student cnn-student, AKD PGD-5, 3 teachers", "cnn-student", "akd", 5, 3, fmnist),
    ]
    if args.suite == "cifar":
        configs = cifar_configs(args.tiny)
    configs = [c for c in configs if all(m in c[0] for m in args.match)]
    peak_dtype = accel.DTYPES.get(args.amp, torch.float32)
    peak = matmul_peak(device=args.device, dtype=peak_dtype)
    rows = []
    for config in configs:
        rows.append(measure(*config[:5], args, config[5]))
        if args.plain and config[2] == "akd" and config[4] == 1:
            plain = measure(f"plain eager loop: {config[0]}", *config[1:5], args, config[5], plain=True)
            rows.append({**plain, "ratio": rows[-1]["images_per_s"] / plain["images_per_s"]})
    peak = max(peak, matmul_peak(device=args.device, dtype=peak_dtype))  # before and after: the higher, vs noise
    machine = accel.machine_summary()
    where = machine["gpu"] if args.device.startswith("cuda") else machine["cpu"]
    print(
        f"Device: {where} ({args.device}); CPU flags {' '.join(machine['cpu_flags']) or '-'}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}; {args.amp}, "
        f"channels_last {args.channels_last}, compile {args.compile} "
        f"(mode {args.compile_mode}); "
        f"{args.amp if args.amp != 'fp32' else 'float32'} matmul peak {peak / 1e9:.0f} GFLOP/s\n"
    )
    print("| configuration | images/s | GFLOP per step | GFLOP/s | share of matmul peak | akd-edge / plain |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        share = row["gflop_per_s"] * 1e9 / peak
        ratio = f"{row['ratio']:.2f}x" if "ratio" in row else ""
        print(
            f"| {row['label']} | {row['images_per_s']:.0f} | {row['gflop_per_step']:.1f} | "
            f"{row['gflop_per_s']:.0f} | {share:.0%} | {ratio} |"
        )


if __name__ == "__main__":
    main()
