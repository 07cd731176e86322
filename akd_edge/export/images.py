"""The images an export checks with: a seeded sample of the training split to calibrate int8, and the test split
to compare the runtimes on (numpy only)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from akd_edge.core.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class ExportData:
    """Images the export checks need: training images to calibrate int8, test images to compare on."""

    calibration: np.ndarray | None
    """uint8 or float [N, C, H, W] from the training split, or None (no int8)."""
    test_images: np.ndarray | None
    test_labels: np.ndarray | None
    source: str = ""


def calibration_sample(images: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` of ``images`` (all when fewer), drawn without replacement by ``seed``, in their original order."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(images), size=min(n, len(images)), replace=False)
    return images[np.sort(pick)]


def load_export_data(meta: dict[str, Any], data_dir: str | None, *, calib: int, n_test: int, seed: int) -> ExportData:
    """Calibration images (a seeded sample of the training split) and the test split of the checkpoint's dataset."""
    from akd_edge.data import get_loader

    data = meta.get("data") or {}
    name = data.get("name")
    if not name:
        raise DataError(f"checkpoint {meta.get('path')} does not record its dataset (meta['data']['name'])")
    directory = data.get("data_dir", "") if data_dir is None else data_dir
    parts = ("train", "test") if calib else ("test",)
    loaded = get_loader(name)(directory, parts=parts, download=False)
    calibration = None
    if calib:
        assert loaded.train is not None
        calibration = calibration_sample(loaded.train.images, calib, seed)
    assert loaded.test is not None
    test = loaded.test if not n_test or n_test >= len(loaded.test) else loaded.test.subset(np.arange(n_test))
    return ExportData(calibration, test.images, test.labels, source=f"{name} ({loaded.source or directory})")


def resolve_images(
    meta: dict[str, Any], data: ExportData | None, data_dir: str | None, int8: bool, calib: int, n_test: int, seed: int
) -> ExportData:
    """The calibration and test images an export checks with: ``data`` as given, or the checkpoint's dataset's."""
    if data is not None:
        return data
    try:
        return load_export_data(meta, data_dir, calib=calib if int8 else 0, n_test=n_test, seed=seed)
    except DataError as err:
        if int8:
            raise DataError(f"{err} (int8 calibration needs the training images; or export with --no-int8)") from None
        log.warning("no test data (%s): parity runs on random images, accuracy figures are skipped", err)
        return ExportData(None, None, None)
