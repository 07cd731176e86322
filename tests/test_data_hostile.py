"""Hostile data: an explicit data_dir that is not there, crafted IDX headers, decompression bombs, fake .npz."""

from __future__ import annotations

import gzip
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from akd_edge.core.errors import DataError
from akd_edge.data import locate
from akd_edge.data.idx import read_idx
from akd_edge.data.imagefolder import MAX_PIXELS
from akd_edge.data.splits import get_loader, load_test_split


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A valid Fashion-MNIST test split in $AKD_EDGE_DATA: what an ignored data_dir used to fall back to."""
    env = tmp_path / "env"
    env.mkdir()
    _idx(env / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    _idx(env / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))
    monkeypatch.setenv(locate.ENV_DATA, str(env))
    monkeypatch.setattr(locate, "OS_LOCATIONS", {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def _idx(path: Path, array: np.ndarray, dims: tuple[int, ...] | None = None) -> None:
    dims = array.shape if dims is None else dims
    path.write_bytes(
        struct.pack(">BBBB", 0, 0, 0x08, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + array.tobytes()
    )


def test_the_fallback_still_works_without_a_data_dir() -> None:
    assert len(load_test_split("fashion-mnist")[0]) == 3


@pytest.mark.parametrize("kind", ["missing", "file", "empty", "unrelated"])
def test_an_explicit_data_dir_is_used_or_is_an_error_naming_it(isolated: Path, kind: str) -> None:
    given = isolated / "given"
    if kind == "file":
        given.write_text("not a folder")
    elif kind in ("empty", "unrelated"):
        given.mkdir()
    if kind == "unrelated":
        (given / "notes.txt").write_text("x")
    with pytest.raises(DataError) as err:
        load_test_split("fashion-mnist", str(given))
    message = str(err.value)
    assert str(given) in message and "t10k-images-idx3-ubyte" in message
    expected = {"missing": "does not exist", "file": "is a file", "empty": "is empty", "unrelated": "missing t10k"}
    assert expected[kind] in message
    assert str(isolated / "env") not in message, "an explicit data_dir is the only place searched"


def test_an_explicit_imagefolder_that_is_a_file_is_an_error(isolated: Path) -> None:
    (isolated / "imgs").write_text("x")
    with pytest.raises(DataError, match="imgs is a file"):
        get_loader("imagefolder")(str(isolated / "imgs"), parts=("train", "test"), download=False)


@pytest.mark.parametrize("gz", [False, True])
def test_crafted_idx_dimensions_are_refused_before_allocating(isolated: Path, gz: bool) -> None:
    path = isolated / "bomb"
    _idx(path, np.zeros(16, np.uint8), dims=(100_000, 1_000, 1_000))  # 93 GiB announced, 16 bytes present
    if gz:
        path = path.rename(isolated / "bomb.raw")
        (isolated / "bomb.gz").write_bytes(gzip.compress(path.read_bytes()))
        path = isolated / "bomb.gz"
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"announces shape \(100000, 1000, 1000\)"):
        read_idx(path)
    assert time.perf_counter() - start < 2


def _png_tree(root: Path, size: tuple[int, int]) -> None:
    from PIL import Image

    for part in ("train", "test"):
        (root / part / "a").mkdir(parents=True)
        Image.new("L", size).save(root / part / "a" / "0.png")


def test_an_oversized_png_is_refused_from_its_header(isolated: Path) -> None:
    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    _png_tree(isolated / "imgs", (4097, 4097))  # zeros: a few kB on disk, 16.8 MB decoded
    assert MAX_PIXELS < 4097 * 4097
    with pytest.raises(DataError, match="4097x4097 pixels, more than the limit"):
        get_loader("imagefolder")(str(isolated / "imgs"), parts=("train", "test"), download=False)
    assert before == Image.MAX_IMAGE_PIXELS, "the global PIL limit is left alone"


@pytest.mark.parametrize("limit", [100, 60])  # 144 pixels: PIL warns above the limit and errors above twice it
def test_pil_decompression_bomb_warnings_and_errors_are_data_errors(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    from PIL import Image

    _png_tree(isolated / "imgs", (12, 12))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(DataError, match="decompression bomb"):
        get_loader("imagefolder")(str(isolated / "imgs"), parts=("train", "test"), download=False)


def test_a_file_that_is_not_an_npz_is_a_data_error(isolated: Path) -> None:
    from akd_edge.verify.command import load_npz

    for name, content in [("fake.npz", b"not a zip at all"), ("pickle.npz", b"\x80\x04K\x01.")]:
        (isolated / name).write_bytes(content)
        with pytest.raises(DataError, match=name):
            load_npz(isolated / name)
