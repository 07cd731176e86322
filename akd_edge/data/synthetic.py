"""Synthetic data for tests and dry runs: deterministic, learnable, no files.

Each class has a fixed random prototype (blocky, so convolutions can see it); an image is its class
prototype plus Gaussian pixel noise, clipped to [0, 1] and stored as uint8. The same spec always gives
the same images. The spec is given as ``data_dir``: comma-separated ``key=value`` pairs, for example
``n=512,test=128,shape=3x32x32,classes=4,noise=0.3,seed=1``; missing keys take the defaults below.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

import numpy as np

from akd_edge.core.errors import DataError
from akd_edge.data.base import DATASETS, ImageDataset, LoadedData

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate."""

    n: int = 10000
    """Training images (enough for the default ``data.val_size`` of 5000)."""
    test: int = 2000
    """Test images."""
    shape: tuple[int, int, int] = (1, 28, 28)
    """``(C, H, W)``, written ``CxHxW``."""
    classes: int = 10
    noise: float = 0.3
    """Standard deviation of the pixel noise, for images in [0, 1]."""
    seed: int = 0
    """Seed of the prototypes and samples (not the run's seed: the data stay fixed across runs)."""

    def __post_init__(self) -> None:
        if self.n < 1 or self.test < 1:
            raise DataError("synthetic: n and test must be >= 1")
        if self.classes < 2:
            raise DataError("synthetic: classes must be >= 2")
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise DataError(f"synthetic: shape must be CxHxW with positive sizes, got {self.shape}")
        if self.noise < 0:
            raise DataError("synthetic: noise must be >= 0")
        if self.seed < 0:
            raise DataError("synthetic: seed must be >= 0")


def parse_spec(text: str) -> SyntheticSpec:
    """Parse ``key=value,key=value`` (empty: all defaults); unknown keys and bad values raise DataError."""
    known = {f.name for f in fields(SyntheticSpec)}
    values: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or key not in known:
            raise DataError(
                f"synthetic: bad spec item {item!r} in data_dir={text!r}; expected key=value pairs with keys "
                f"{', '.join(sorted(known))} (e.g. n=512,test=128,shape=3x32x32,classes=4)"
            )
        try:
            if key == "shape":
                values[key] = tuple(int(v) for v in raw.lower().split("x"))
            elif key == "noise":
                values[key] = float(raw)
            else:
                values[key] = int(raw)
        except ValueError:
            raise DataError(
                f"synthetic: cannot read {key}={raw!r} (shape is CxHxW, noise a float, others ints)"
            ) from None
    return SyntheticSpec(**values)  # type: ignore[arg-type]


def _prototypes(spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    """One blocky random pattern per class, float32 [K, C, H, W] in [0.1, 0.9]."""
    c, h, w = spec.shape
    block = max(1, min(h, w) // 4)
    coarse = rng.uniform(0.1, 0.9, size=(spec.classes, c, -(-h // block), -(-w // block))).astype(np.float32)
    return coarse.repeat(block, axis=2).repeat(block, axis=3)[:, :, :h, :w]


def _sample(protos: np.ndarray, count: int, noise: float, rng: np.random.Generator) -> ImageDataset:
    labels = rng.permutation(np.arange(count) % protos.shape[0]).astype(np.int64)
    pixels = protos[labels] + noise * rng.standard_normal((count, *protos.shape[1:]), dtype=np.float32)
    images = np.rint(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
    return ImageDataset(images, labels)


def generate(spec: SyntheticSpec, parts: tuple[str, ...] = ("train", "test")) -> LoadedData:
    """The synthetic dataset of ``spec``; train and test come from independent streams of ``spec.seed``."""
    proto_seq, train_seq, test_seq = np.random.SeedSequence(spec.seed).spawn(3)
    protos = _prototypes(spec, np.random.default_rng(proto_seq))
    loaded = {}
    if "train" in parts:
        loaded["train"] = _sample(protos, spec.n, spec.noise, np.random.default_rng(train_seq))
    if "test" in parts:
        loaded["test"] = _sample(protos, spec.test, spec.noise, np.random.default_rng(test_seq))
    names = tuple(f"class-{k}" for k in range(spec.classes))
    return LoadedData(names, source=f"synthetic {spec}", **loaded)


@DATASETS.register(
    "synthetic", help="Generated class patterns plus noise (data_dir: n=,test=,shape=CxHxW,classes=,noise=,seed=)"
)
def synthetic(data_dir: str = "", *, parts: tuple[str, ...] = ("train", "test"), download: bool = False) -> LoadedData:
    return generate(parse_spec(data_dir), parts)
