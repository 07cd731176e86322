"""Measure a model for the before/after report of ``akd-edge compress``: size, speed and robustness.

Clean, PGD and AutoAttack accuracy come from the one evaluation engine (:mod:`akd_edge.evaluation.engine`),
so compress, validation and ``akd-edge eval`` count a sample as robust the same way. Every accuracy comes
with its 95% Wilson interval (``clean_ci95``, ``pgd_ci95``, ``aa_ci95``), and AutoAttack defaults to
:data:`~akd_edge.core.interval.REPORTED_N` images: on 200 a 50% channel cut once measured as costing 1.0 point
of AutoAttack, on 1,000 the same model lost 2.6.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from akd_edge.attacks.suite import AA_NAME, AttackSpec, ConfigAttack
from akd_edge.config import AttackConfig
from akd_edge.core.env import forked_rng, model_device
from akd_edge.core.interval import REPORTED_N
from akd_edge.evaluation.engine import evaluate_dataset
from akd_edge.models.mode import eval_mode

log = logging.getLogger(__name__)


def latency_ms(model: nn.Module, input_shape: Sequence[int], *, repeats: int = 30) -> float:
    """Median wall time (ms) of one forward pass on a single image, timed as ``akd-edge verify`` times."""
    from akd_edge.core.ort import measure_latency

    device = model_device(model)

    def run(x: Any) -> torch.Tensor:
        with eval_mode(model), torch.inference_mode():
            out = model(torch.from_numpy(x).to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    return measure_latency(run, tuple(input_shape), warmup=5, repeats=repeats, throughput_batch=0)["batch1_p50_ms"]


def pgd_accuracy(
    model: nn.Module, dataset: Any, attack_cfg: AttackConfig, *, seed: int, batch_size: int
) -> dict[str, Any]:
    """Clean and ``attack_cfg`` accuracy with 95% intervals, its random starts seeded by ``seed`` (the same
    before and after pruning)."""
    device = model_device(model)
    attack = ConfigAttack(attack_cfg)
    with forked_rng(device):
        torch.manual_seed(seed)
        run = evaluate_dataset(
            model, dataset, [attack], batch_size=batch_size, device=device, calibration=False, checks=False
        )
    return {
        "clean_acc": run.acc("clean"),
        "clean_ci95": run.results["clean"]["ci95"],
        "pgd_acc": run.acc(attack.name),
        "pgd_ci95": run.results["attacks"][attack.name]["ci95"],
        "n": run.results["clean"]["n"],
    }


def autoattack_accuracy(
    model: nn.Module,
    dataset: Any,
    *,
    norm: str,
    eps: float,
    version: str = "fast",
    n: int = REPORTED_N,
    seed: int = 0,
    batch_size: int = 250,
) -> dict[str, Any] | None:
    """AutoAttack robust accuracy (and its 95% interval) on the first ``n`` images of ``dataset`` (0 = all);
    None when it cannot run.

    The targeted attacks of ``fast`` and ``standard`` need at least 4 classes; with fewer the figure is
    skipped with a warning rather than failing the whole compression.
    """
    import numpy as np

    from akd_edge.attacks.autoattack import min_classes
    from akd_edge.data import iterate_batches

    subset = dataset.subset(np.arange(min(n, len(dataset)))) if n else dataset
    device = model_device(model)
    first, _, _ = next(iterate_batches(subset, 1, device=device))
    with eval_mode(model), torch.no_grad():
        classes = model(first).shape[1]
    if classes < min_classes(version):
        log.warning(
            "AutoAttack %s needs >= %d classes (the model has %d): AutoAttack accuracy skipped",
            version,
            min_classes(version),
            classes,
        )
        return None
    spec = AttackSpec(AA_NAME[version], norm=norm, eps=eps, seed=seed)
    run = evaluate_dataset(model, subset, [spec], batch_size=batch_size, device=device, calibration=False, checks=False)
    return {
        "aa_acc": run.acc(spec.name),
        "aa_ci95": run.results["attacks"][spec.name]["ci95"],
        "aa_n": run.results["clean"]["n"],
        "aa_version": version,
    }


def measure(
    model: nn.Module,
    dataset: Any,
    attack_cfg: AttackConfig,
    *,
    autoattack: str = "fast",
    aa_n: int = REPORTED_N,
    seed: int = 0,
    batch_size: int = 250,
) -> dict[str, Any]:
    """Parameters, MACs, single-image latency, clean / PGD accuracy and (optionally) AutoAttack accuracy on the
    first ``aa_n`` images (0 = all), each accuracy with its 95% interval."""
    from akd_edge.models import model_info

    start = time.perf_counter()
    result: dict[str, Any] = dict(model_info(model, dataset.input_shape))
    result["latency_ms"] = latency_ms(model, dataset.input_shape)
    result |= pgd_accuracy(model, dataset, attack_cfg, seed=seed, batch_size=batch_size)
    result |= {"aa_acc": None, "aa_ci95": [None, None], "aa_n": 0, "aa_version": None}
    if autoattack != "none":
        aa = autoattack_accuracy(
            model,
            dataset,
            norm=attack_cfg.norm,
            eps=attack_cfg.eps,
            version=autoattack,
            n=aa_n,
            seed=seed,
            batch_size=batch_size,
        )
        result |= aa or {}
    result["eval_s"] = time.perf_counter() - start
    return result
