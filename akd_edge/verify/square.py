"""Square Attack (Andriushchenko et al., 2020) in numpy: a query-only attack on any ``predict_fn``.

A port of ``pyautoattack/square.py`` (Linf and L2, margin or cross-entropy loss, one restart) that needs
only numpy, so ``akd-edge verify`` can attack an onnxruntime session without torch installed. Like the
reference, each iteration draws one square window (and, for Linf, one sign per channel) shared by the
batch; unlike it, the window position is drawn over every valid offset (the reference never uses the
last row and column of offsets).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from akd_edge.verify.runtime import as_float_images

log = logging.getLogger(__name__)

PredictFn = Callable[[np.ndarray], np.ndarray]
"""``predict_fn(x float32 [N, C, H, W] in [0, 1]) -> logits float [N, classes]``."""
ProgressFn = Callable[[int, int], None]
"""``progress(queries_done, queries_total)``, called once per iteration."""


@dataclass
class SquareResult:
    """Adversarial images and what it took to find them."""

    x_adv: np.ndarray
    """float32 [N, C, H, W]: the adversarial image where the attack succeeded, else the clean image."""
    fooled: np.ndarray
    """bool [N]: misclassified at ``x_adv`` (includes samples misclassified without attack)."""
    queries: np.ndarray
    """int [N]: model queries spent on each sample (0 for samples misclassified without attack)."""


def _margin_and_loss(logits: np.ndarray, y: np.ndarray, loss: str) -> tuple[np.ndarray, np.ndarray]:
    """Margin ``z_y - max_{k != y} z_k`` (<= 0 means fooled) and the loss the attack minimises."""
    logits = logits.astype(np.float64, copy=True)
    rows = np.arange(len(y))
    correct = logits[rows, y].copy()
    if loss == "ce":
        shifted = logits - logits.max(1, keepdims=True)
        xent = np.log(np.exp(shifted).sum(1)) - shifted[rows, y]
    logits[rows, y] = -np.inf
    margin = correct - logits.max(1)
    if loss == "ce":
        return margin, -xent
    return margin, margin


def _p_selection(p_init: float, it: int, n_queries: int, rescale: bool) -> float:
    """Fraction of the image the square covers: halves on the reference schedule (per 10000 queries)."""
    if rescale:
        it = int(it / n_queries * 10000)
    for bound, divisor in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128)):
        if it <= bound:
            return p_init / divisor
    return p_init / (256 if it <= 8000 else 512)


def _eta_rectangles(rows: int, cols: int) -> np.ndarray:
    """L2 building block: concentric rectangles weighted 1/(k+1)^2, unit L2 norm."""
    delta = np.zeros((rows, cols))
    center = [rows // 2, cols // 2]
    for k in range(max(rows // 2 + 1, cols // 2 + 1)):
        delta[
            max(center[0], 0) : min(center[0] + 2 * k + 1, rows), max(center[1], 0) : min(center[1] + 2 * k + 1, cols)
        ] += 1.0 / (k + 1) ** 2
        center[0] -= 1
        center[1] -= 1
    return delta / np.sqrt((delta**2).sum())


def _eta(size: int, rng: np.random.Generator) -> np.ndarray:
    """L2 square perturbation: two opposite-sign halves of rectangles, randomly transposed, unit L2 norm."""
    delta = np.zeros((size, size))
    delta[: size // 2] = _eta_rectangles(size // 2, size)
    delta[size // 2 :] = -_eta_rectangles(size - size // 2, size)
    delta /= np.sqrt((delta**2).sum())
    return delta.T if rng.random() > 0.5 else delta


def _signs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0)


def _l2(x: np.ndarray) -> np.ndarray:
    """Per-sample L2 norm, shaped [N, 1, 1, 1] for broadcasting."""
    return np.sqrt((x.reshape(len(x), -1) ** 2).sum(1)).reshape(-1, 1, 1, 1)


def _update(
    state: dict[str, np.ndarray], idx: np.ndarray, x_new: np.ndarray, margin: np.ndarray, loss: np.ndarray
) -> None:
    """Keep a candidate where it lowers the loss or fools the model (the reference's acceptance rule)."""
    improved = (loss < state["loss"][idx]) | (margin <= 0)
    state["loss"][idx] = np.where(loss < state["loss"][idx], loss, state["loss"][idx])
    state["margin"][idx] = np.where(improved, margin, state["margin"][idx])
    state["x_best"][idx] = np.where(improved.reshape(-1, 1, 1, 1), x_new, state["x_best"][idx])
    state["queries"][idx] += 1


def _run_linf(
    predict: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    x: np.ndarray,
    y: np.ndarray,
    eps: float,
    n_queries: int,
    p_init: float,
    rescale: bool,
    rng: np.random.Generator,
    progress: ProgressFn | None,
) -> dict[str, np.ndarray]:
    n, c, h, w = x.shape
    x_best = np.clip(x + eps * _signs(rng, (n, c, 1, w)), 0.0, 1.0)  # vertical stripes, as the paper
    margin, loss = predict(x_best, y)
    state = {"x_best": x_best, "margin": margin, "loss": loss, "queries": np.ones(n, dtype=np.int64)}
    for it in range(n_queries):
        idx = np.flatnonzero(state["margin"] > 0)
        if len(idx) == 0:
            break
        p = _p_selection(p_init, it, n_queries, rescale)
        size = min(max(int(round(math.sqrt(p * h * w))), 1), h, w)
        vh, vw = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
        x_curr, best_curr = x[idx], state["x_best"][idx]
        delta = np.zeros((c, h, w))
        delta[:, vh : vh + size, vw : vw + size] = 2.0 * eps * _signs(rng, (c, 1, 1))
        x_new = np.clip(np.clip(best_curr + delta, x_curr - eps, x_curr + eps), 0.0, 1.0)
        margin, loss = predict(x_new, y[idx])
        _update(state, idx, x_new, margin, loss)
        if progress is not None:
            progress(it + 1, n_queries)
    return state


def _run_l2(
    predict: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    x: np.ndarray,
    y: np.ndarray,
    eps: float,
    n_queries: int,
    p_init: float,
    rescale: bool,
    rng: np.random.Generator,
    progress: ProgressFn | None,
) -> dict[str, np.ndarray]:
    n, c, h, w = x.shape
    tile = max(h // 5, 1)
    start = (h - tile * 5) // 2
    delta_init = np.zeros_like(x, dtype=np.float64)
    for row in range(h // tile):  # a grid of L2 squares with random signs, as the paper
        for col in range(w // tile):
            vh, vw = start + row * tile, start + col * tile
            delta_init[:, :, vh : vh + tile, vw : vw + tile] += _eta(tile, rng).reshape(1, 1, tile, tile) * _signs(
                rng, (n, c, 1, 1)
            )
    x_best = np.clip(x + delta_init / (_l2(delta_init) + 1e-12) * eps, 0.0, 1.0)
    margin, loss = predict(x_best, y)
    state = {"x_best": x_best, "margin": margin, "loss": loss, "queries": np.ones(n, dtype=np.int64)}
    for it in range(n_queries):
        idx = np.flatnonzero(state["margin"] > 0)
        if len(idx) == 0:
            break
        x_curr, best_curr = x[idx], state["x_best"][idx]
        delta = best_curr - x_curr
        p = _p_selection(p_init, it, n_queries, rescale)
        size = max(int(round(math.sqrt(p * h * w))), 3)
        size = min(size + (size % 2 == 0), h, w)
        vh, vw = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
        vh2, vw2 = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
        window = (slice(None), slice(None), slice(vh, vh + size), slice(vw, vw + size))
        window2 = (slice(None), slice(None), slice(vh2, vh2 + size), slice(vw2, vw2 + size))
        norm_window1 = np.sqrt((delta[window] ** 2).sum((-2, -1), keepdims=True))
        mask = np.zeros_like(x_curr, dtype=np.float64)
        mask[window] = 1.0
        mask[window2] = 1.0
        norm_image = _l2(delta)
        norm_windows = np.sqrt(((delta * mask) ** 2).sum((-2, -1), keepdims=True))
        new = _eta(size, rng).reshape(1, 1, size, size) * _signs(rng, (len(idx), c, 1, 1))
        new = new + delta[window] / (1e-12 + norm_window1)
        budget = np.maximum(eps**2 - norm_image**2, 0.0) / c + norm_windows**2
        new = new / (1e-12 + np.sqrt((new**2).sum((-2, -1), keepdims=True))) * np.sqrt(budget)
        delta[window2] = 0.0
        delta[window] = new
        x_new = np.clip(x_curr + delta / (_l2(delta) + 1e-12) * eps, 0.0, 1.0)
        margin, loss = predict(x_new, y[idx])
        _update(state, idx, x_new, margin, loss)
        if progress is not None:
            progress(it + 1, n_queries)
    return state


def square_attack(
    predict_fn: PredictFn,
    x: np.ndarray,
    y: np.ndarray,
    *,
    eps: float,
    norm: str = "linf",
    n_queries: int = 1000,
    p_init: float = 0.8,
    seed: int = 0,
    loss: str = "margin",
    rescale_schedule: bool = True,
    progress: ProgressFn | None = None,
) -> SquareResult:
    """Untargeted Square attack on images ``x`` in [0, 1] with labels ``y``, using only model outputs.

    Samples the model already misclassifies are left alone. ``rescale_schedule`` stretches the reference
    schedule of square sizes (tuned for 10000 queries) over ``n_queries``; AutoAttack's standard version
    runs 5000 queries without rescaling.
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"square attack norm must be 'linf' or 'l2', got {norm!r}")
    if loss not in ("margin", "ce"):
        raise ValueError(f"square attack loss must be 'margin' or 'ce', got {loss!r}")
    if eps < 0 or n_queries < 0 or not 0 < p_init <= 1:
        raise ValueError("square attack needs eps >= 0, n_queries >= 0 and 0 < p_init <= 1")
    x = as_float_images(np.asarray(x))  # uint8 images are scaled to [0, 1]: eps is relative to that range
    y = np.asarray(y, dtype=np.int64)
    if x.ndim != 4 or len(x) != len(y):
        raise ValueError(f"expected images [N, C, H, W] and N labels, got {x.shape} and {y.shape}")
    rng = np.random.default_rng(seed)

    def margin_and_loss(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _margin_and_loss(np.asarray(predict_fn(images.astype(np.float32))), labels, loss)

    x_adv = x.copy()
    queries = np.zeros(len(x), dtype=np.int64)
    correct = np.asarray(predict_fn(x)).argmax(1) == y
    todo = np.flatnonzero(correct)
    if len(todo) and eps > 0 and n_queries > 0:
        run = _run_linf if norm == "linf" else _run_l2
        state = run(
            margin_and_loss,
            x[todo].astype(np.float64),
            y[todo],
            eps,
            n_queries,
            p_init,
            rescale_schedule,
            rng,
            progress,
        )
        x_adv[todo] = state["x_best"].astype(np.float32)
        queries[todo] = state["queries"]
    # The float32 cast can step a hair outside the ball; project so the bound holds exactly.
    if norm == "linf":
        x_adv = np.clip(np.clip(x_adv, x - eps, x + eps), 0.0, 1.0)
    else:
        diff = x_adv - x
        scale = np.minimum(1.0, eps / (_l2(diff.astype(np.float64)) + 1e-12)).astype(np.float32)
        x_adv = np.clip(x + diff * scale, 0.0, 1.0)
    fooled = np.asarray(predict_fn(x_adv)).argmax(1) != y
    log.debug("square %s eps=%g: fooled %d/%d", norm, eps, int(fooled.sum()), len(y))
    return SquareResult(x_adv=x_adv, fooled=fooled, queries=queries)
