"""The data layer: every file format, the search order, splits and resumable batches (tiny files in tmp_path)."""

from __future__ import annotations

import gzip
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from akd_edge.config import DataConfig
from akd_edge.core.errors import ConfigError, DataError
from akd_edge.data import (
    ImageDataset,
    augment_batch,
    channel_stats,
    get_loader,
    iterate_batches,
    list_datasets,
    load_dataset,
    load_test_split,
    locate,
    num_batches,
    split_train_val,
)
from akd_edge.data.cifar import safe_unpickle
from akd_edge.data.idx import FASHION_CLASSES, read_idx
from akd_edge.data.synthetic import generate, parse_spec

FMNIST_OS_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No real dataset folders: env vars unset, cache under tmp_path, OS location pointed into tmp_path."""
    monkeypatch.delenv(locate.ENV_DATA, raising=False)
    monkeypatch.delenv("AKD_EDGE_MIRROR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(locate, "OS_LOCATIONS", {"fashion-mnist": (str(tmp_path / "os" / "fashion-mnist"),)})
    return tmp_path


# ------------------------------------------------------------------------------------------------
# writers of each format


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def make_idx_dataset(folder: Path, n_train: int = 30, n_test: int = 12, gz: bool = True, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for stem, array in arrays.items():
        write_idx(folder / stem, array, gz=gz if stem.startswith("train") else not gz)  # mix gz and raw
    return arrays


def py2_pickle(batch: dict) -> bytes:
    """A Python 2 style pickle (protocol 2, str opcodes, numpy.core names), as the real CIFAR files are."""

    def text(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    def integer(v: int) -> bytes:
        return b"J" + struct.pack("<i", v)

    out = bytearray(b"\x80\x02}(")
    for key, value in batch.items():
        out += text(key.encode())
        if isinstance(value, np.ndarray):
            out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + integer(0) + b"\x85" + text(b"b")
            out += b"\x87R(" + integer(1) + integer(value.shape[0]) + integer(value.shape[1]) + b"\x86"
            out += b"cnumpy\ndtype\n" + text(b"u1") + integer(0) + integer(1) + b"\x87R"
            out += b"(" + integer(3) + text(b"|") + b"NNN" + integer(-1) + integer(-1) + integer(0) + b"tb"
            out += b"\x89" + text(value.tobytes()) + b"tb"
        else:
            out += b"]("
            for v in value:
                out += integer(v) if isinstance(v, int) else text(v.encode())
            out += b"e"
    out += b"u."
    return bytes(out)


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_cifar10(folder: Path, per_batch: int = 6, n_test: int = 5) -> dict:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        batch = {
            "batch_label": name,
            "labels": [int(v) for v in rng.integers(0, 10, n)],
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "filenames": [f"img{i}.png" for i in range(n)],
        }
        batches[name] = batch
        # batch 1 as the genuine Python 2 files are; the rest as Python 3 writes them (protocols 2 and 4)
        raw = py2_pickle(batch) if name == "data_batch_1" else pickle.dumps(batch, protocol=2 if name < "t" else 4)
        (folder / name).write_bytes(raw)
    (folder / "batches.meta").write_bytes(
        py2_pickle({"num_cases_per_batch": [per_batch], "label_names": CIFAR10_NAMES, "num_vis": [3072]})
    )
    return batches


class Exploit:
    """A pickle payload that would run a shell command when unpickled by plain pickle.load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        import os

        return (os.system, (f"touch {self.marker}",))


def write_png_tree(root: Path, spec: dict[str, dict[str, list[tuple[str, tuple[int, int], int]]]]) -> None:
    """spec[split][class] = [(mode, (w, h), value), ...]."""
    from PIL import Image

    for split, classes in spec.items():
        for cls, images in classes.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i, (mode, size, value) in enumerate(images):
                fill = value if mode == "L" else (value, 255 - value, value // 2)
                Image.new(mode, size, fill).save(root / split / cls / f"{i:03d}.png")


# ------------------------------------------------------------------------------------------------
# registry and imports


def test_import_does_not_pull_torch_or_heavy_libraries() -> None:
    code = "import sys, akd_edge.data; print(sorted(m for m in ('torch', 'scipy', 'PIL') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_registry_lists_every_dataset_with_a_description() -> None:
    names = dict(list_datasets())
    assert set(names) == {"fashion-mnist", "mnist", "cifar10", "cifar100", "svhn", "imagefolder", "synthetic"}
    assert all(names.values())


def test_unknown_dataset_is_a_config_error_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match="did you mean 'cifar10'|Did you mean 'cifar10'"):
        get_loader("cifar-10")


# ------------------------------------------------------------------------------------------------
# IDX


def test_idx_gz_and_raw_files_load_with_shapes_labels_and_names(isolated: Path) -> None:
    arrays = make_idx_dataset(isolated / "fm")
    data = get_loader("fashion-mnist")(str(isolated / "fm"), parts=("train", "test"), download=False)
    assert data.train.images.shape == (30, 1, 28, 28) and data.train.images.dtype == np.uint8
    assert data.test.images.shape == (12, 1, 28, 28)
    assert data.train.labels.dtype == np.int64
    np.testing.assert_array_equal(data.train.images[:, 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(data.test.labels, arrays["t10k-labels-idx1-ubyte"])
    assert data.class_names == FASHION_CLASSES
    digits = get_loader("mnist")(str(isolated / "fm"), parts=("test",), download=False)
    assert digits.class_names == tuple("0123456789") and digits.train is None


def test_read_idx_rejects_bad_magic_and_truncated_files(isolated: Path) -> None:
    bad = isolated / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + b"\0" * 8)
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(bad)
    write_idx(isolated / "short", np.zeros((4, 5), np.uint8), gz=True)
    path = isolated / "short.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-3]))
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_search_order_data_dir_then_env_then_os_location_then_cache(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one dataset per place, told apart by their sizes
    make_idx_dataset(isolated / "given", n_test=1)
    make_idx_dataset(isolated / "env" / "fashion-mnist", n_test=2)  # the dataset-named subfolder of $AKD_EDGE_DATA
    make_idx_dataset(isolated / "os" / "fashion-mnist", n_test=3)
    make_idx_dataset(isolated / "xdg-cache" / "akd-edge" / "data" / "fashion-mnist", n_test=4)
    monkeypatch.setenv(locate.ENV_DATA, str(isolated / "env"))

    def found(data_dir: str = "") -> int:
        return len(load_test_split("fashion-mnist", data_dir)[0])

    assert found(str(isolated / "given")) == 1
    assert found() == 2
    monkeypatch.delenv(locate.ENV_DATA)
    assert found() == 3
    monkeypatch.setattr(locate, "OS_LOCATIONS", {})
    assert found() == 4
    # the dataset-named subfolder of data_dir counts too
    make_idx_dataset(isolated / "parent" / "fashion-mnist", n_test=5)
    assert found(str(isolated / "parent")) == 5


def test_missing_files_error_lists_every_place_and_how_to_get_them(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(locate.ENV_DATA, str(isolated / "env"))
    (isolated / "given").mkdir()
    write_idx(isolated / "given" / "train-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8), gz=True)
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(name="fashion-mnist", data_dir=str(isolated / "given")), seed=0)
    message = str(info.value)
    given = [isolated / "given", isolated / "given" / "fashion-mnist"]
    elsewhere = [
        isolated / "env",
        isolated / "env" / "fashion-mnist",
        isolated / "os" / "fashion-mnist",
        isolated / "xdg-cache" / "akd-edge" / "data" / "fashion-mnist",
    ]
    assert all(f"- {place} (" in message for place in given)
    assert not any(f"- {place} (" in message for place in elsewhere), "an explicit data_dir is the only place"
    assert "only it is searched" in message
    assert f"- {isolated / 'given'} (missing train-labels-idx1-ubyte.gz" in message  # partial folder: what lacks
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(name="fashion-mnist"), seed=0)
    message = str(info.value)
    assert all(f"- {place} (" in message for place in elsewhere)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--set data.download=true" in message
    assert "fashion-mnist.s3-website.eu-central-1.amazonaws.com" in message
    with pytest.raises(DataError) as info:
        load_test_split("mnist")
    assert "apt-get" not in str(info.value) and "ossci-datasets" in str(info.value)
    assert "$AKD_EDGE_DATA not set" not in str(info.value)


# ------------------------------------------------------------------------------------------------
# CIFAR


def test_cifar10_batches_load_from_the_archive_folder(isolated: Path) -> None:
    batches = make_cifar10(isolated / "c10" / "cifar-10-batches-py")
    data = get_loader("cifar10")(str(isolated / "c10"), parts=("train", "test"), download=False)
    assert data.train.images.shape == (30, 3, 32, 32) and data.test.images.shape == (5, 3, 32, 32)
    assert data.class_names == tuple(CIFAR10_NAMES)
    expected = np.concatenate([batches[f"data_batch_{i}"]["data"] for i in range(1, 6)])
    np.testing.assert_array_equal(data.train.images.reshape(30, -1), expected)
    # channel-major: the first 1024 values of a row are the red plane
    np.testing.assert_array_equal(data.train.images[0, 0].reshape(-1), expected[0, :1024])
    labels = sum((batches[f"data_batch_{i}"]["labels"] for i in range(1, 6)), [])
    np.testing.assert_array_equal(data.train.labels, labels)
    np.testing.assert_array_equal(data.test.labels, batches["test_batch"]["labels"])


def test_cifar100_uses_fine_labels_and_names(isolated: Path) -> None:
    folder = isolated / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(2)
    names = [f"c{k}" for k in range(100)]
    for split, n in (("train", 8), ("test", 4)):
        batch = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "fine_labels": [int(v) for v in rng.integers(0, 100, n)],
            "coarse_labels": [int(v) for v in rng.integers(0, 20, n)],
        }
        (folder / split).write_bytes(pickle.dumps(batch, protocol=2))
        if split == "test":
            test_labels = batch["fine_labels"]
    (folder / "meta").write_bytes(py2_pickle({"fine_label_names": names, "coarse_label_names": names[:20]}))
    test, meta = load_test_split("cifar100", str(isolated))
    assert meta["num_classes"] == 100 and meta["class_names"] == tuple(names)
    assert meta["input_shape"] == (3, 32, 32)
    np.testing.assert_array_equal(test.labels, test_labels)


def test_malicious_pickle_is_refused_and_never_runs(isolated: Path) -> None:
    marker = isolated / "pwned"
    evil = isolated / "evil"
    evil.write_bytes(pickle.dumps({"data": Exploit(marker)}, protocol=2))
    with pytest.raises(DataError, match="refusing to unpickle (posix|os|nt).system"):
        safe_unpickle(evil)
    assert not marker.exists()
    # and through the loader: a tampered test_batch stops the load
    folder = isolated / "c10"
    make_cifar10(folder)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": Exploit(marker), "labels": []}))
    with pytest.raises(DataError, match="not a genuine CIFAR batch"):
        load_test_split("cifar10", str(folder))
    assert not marker.exists()
    # other dangerous globals are refused too, including _codecs.encode with a non-latin-1 codec
    for module, name in [("builtins", "eval"), ("subprocess", "Popen"), ("numpy", "load")]:
        payload = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"."
        evil.write_bytes(payload)
        with pytest.raises(DataError, match=f"refusing to unpickle {module}.{name}"):
            safe_unpickle(evil)
    evil.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x04\x00\x00\x00zlib\x86R.")
    with pytest.raises(DataError, match="only latin-1"):
        safe_unpickle(evil)


def test_garbled_pickle_is_a_data_error(isolated: Path) -> None:
    path = isolated / "garbled"
    path.write_bytes(b"\x80\x02}q\x00(X")
    with pytest.raises(DataError, match="cannot read"):
        safe_unpickle(path)


# ------------------------------------------------------------------------------------------------
# SVHN


def test_svhn_mat_files_are_nchw_with_label_10_as_digit_0(isolated: Path) -> None:
    from scipy.io import savemat

    rng = np.random.default_rng(3)
    arrays = {}
    for split, n in (("train", 7), ("test", 5)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = np.array([[10], [1], [2], [10], [9], [3], [4]][:n], dtype=np.uint8)
        savemat(isolated / f"{split}_32x32.mat", {"X": x, "y": y})
        arrays[split] = (x, y)
    data = get_loader("svhn")(str(isolated), parts=("train", "test"), download=False)
    x, y = arrays["train"]
    assert data.train.images.shape == (7, 3, 32, 32) and data.train.images.dtype == np.uint8
    np.testing.assert_array_equal(data.train.labels, [0, 1, 2, 0, 9, 3, 4])
    assert data.train.images[4, 2, 5, 7] == x[5, 7, 2, 4]  # [n, c, h, w] == X[h, w, c, n]
    np.testing.assert_array_equal(data.train.images.transpose(2, 3, 1, 0), x)
    assert data.class_names == tuple("0123456789")


# ------------------------------------------------------------------------------------------------
# image folder


def test_imagefolder_greyscale_pngs_stay_one_channel_and_classes_are_sorted(isolated: Path) -> None:
    write_png_tree(
        isolated / "imgs",
        {
            "train": {"zebra": [("L", (6, 5), 10), ("L", (6, 5), 20)], "ant": [("L", (6, 5), 30)]},
            "test": {"zebra": [("L", (6, 5), 40)]},  # a class may be absent from test
        },
    )
    data = get_loader("imagefolder")(str(isolated / "imgs"), parts=("train", "test"), download=False)
    assert data.class_names == ("ant", "zebra")
    assert data.train.images.shape == (3, 1, 5, 6)  # [N, C, H, W] with H=5, W=6
    np.testing.assert_array_equal(data.train.labels, [0, 1, 1])
    np.testing.assert_array_equal(data.train.images[:, 0, 0, 0], [30, 10, 20])
    np.testing.assert_array_equal(data.test.labels, [1])


def test_imagefolder_mixed_modes_become_rgb_and_sizes_follow_the_first_image(isolated: Path) -> None:
    write_png_tree(
        isolated / "imgs",
        {
            "train": {"a": [("L", (8, 8), 50), ("RGB", (8, 8), 100)], "b": [("RGB", (16, 12), 200)]},
            "test": {"a": [("RGB", (4, 4), 0)], "b": [("L", (8, 8), 255)]},
        },
    )
    splits = load_dataset(DataConfig(name="imagefolder", data_dir=str(isolated / "imgs"), val_size=0), seed=0)
    assert splits.input_shape == (3, 8, 8) and splits.test.images.shape == (2, 3, 8, 8)
    # a greyscale image converted to RGB repeats its value in every channel; a resized flat image keeps its colour
    grey = splits.train.images[splits.train.images[:, 0, 0, 0] == 50][0]
    assert (grey == 50).all()
    big = splits.train.images[splits.train.labels == 1][0]
    assert tuple(big[:, 3, 3]) == (200, 55, 100)


def test_imagefolder_rejects_extra_test_classes_and_a_wrong_layout(isolated: Path) -> None:
    write_png_tree(
        isolated / "imgs",
        {"train": {"a": [("L", (4, 4), 1)]}, "test": {"a": [("L", (4, 4), 1)], "b": [("L", (4, 4), 2)]}},
    )
    with pytest.raises(DataError, match=r"classes \['b'\]"):
        get_loader("imagefolder")(str(isolated / "imgs"), parts=("train", "test"), download=False)
    (isolated / "flat").mkdir()
    with pytest.raises(DataError, match="train/<class>"):
        get_loader("imagefolder")(str(isolated / "flat"), parts=("train", "test"), download=False)


# ------------------------------------------------------------------------------------------------
# synthetic


def test_synthetic_is_deterministic_configurable_and_learnable() -> None:
    spec = parse_spec("n=400, test=200, shape=3x12x10, classes=4, noise=0.3, seed=5")
    a, b = generate(spec), generate(spec)
    np.testing.assert_array_equal(a.train.images, b.train.images)
    np.testing.assert_array_equal(a.test.labels, b.test.labels)
    assert a.train.images.shape == (400, 3, 12, 10) and a.test.images.shape == (200, 3, 12, 10)
    assert np.bincount(a.train.labels).tolist() == [100] * 4
    assert a.class_names == ("class-0", "class-1", "class-2", "class-3")
    other = generate(parse_spec("n=400,test=200,shape=3x12x10,classes=4,noise=0.3,seed=6"))
    assert not np.array_equal(a.train.images, other.train.images)
    # changing n leaves the test set alone (independent streams)
    np.testing.assert_array_equal(
        generate(parse_spec("n=50,test=200,shape=3x12x10,classes=4,seed=5")).test.images, a.test.images
    )
    # learnable: nearest class mean of the training images classifies most test images; noise is present
    x_train = a.train.images.reshape(400, -1).astype(np.float32)
    centroids = np.stack([x_train[a.train.labels == k].mean(0) for k in range(4)])
    x_test = a.test.images.reshape(200, -1).astype(np.float32)
    predicted = np.argmin(((x_test[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (predicted == a.test.labels).mean() > 0.9
    assert x_train[a.train.labels == 0].std(0).mean() > 10  # not identical copies
    defaults = parse_spec("")
    assert defaults.shape == (1, 28, 28) and defaults.classes == 10


@pytest.mark.parametrize("spec", ["n=abc", "colour=3", "shape=3x32", "classes=1", "noise=-1", "just-a-path"])
def test_synthetic_bad_specs_are_data_errors(spec: str) -> None:
    with pytest.raises(DataError, match="synthetic"):
        parse_spec(spec)


# ------------------------------------------------------------------------------------------------
# splits


def test_split_is_deterministic_disjoint_complete_and_stratified() -> None:
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    train, val = split_train_val(labels, 20, seed=3)
    again_train, again_val = split_train_val(labels, 20, seed=3)
    np.testing.assert_array_equal(train, again_train)
    np.testing.assert_array_equal(val, again_val)
    assert len(val) == 20 and len(train) == 80
    assert not set(train) & set(val)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(100))
    assert np.bincount(labels[val], minlength=4).tolist() == [10, 6, 3, 1]  # proportional
    other_train, other_val = split_train_val(labels, 20, seed=4)
    assert set(other_val) != set(val)
    _, plain_val = split_train_val(labels, 20, seed=3, stratify=False)
    assert len(plain_val) == 20
    # uneven proportions: largest remainders still give exactly val_size
    _, odd_val = split_train_val(np.repeat(np.arange(3), [7, 7, 7]), 10, seed=0)
    assert len(odd_val) == 10 and max(np.bincount(np.repeat(np.arange(3), [7, 7, 7])[odd_val])) == 4


def test_split_rejects_a_validation_set_as_large_as_the_training_set() -> None:
    with pytest.raises(ConfigError, match="data.val_size=100"):
        split_train_val(np.zeros(100, np.int64), 100, seed=0)


def test_load_dataset_splits_subsets_and_keeps_test_untouched() -> None:
    spec = "n=300,test=60,classes=3,shape=1x8x8"
    cfg = DataConfig(name="synthetic", data_dir=spec, val_size=30, train_subset=100)
    splits = load_dataset(cfg, seed=1)
    full = generate(parse_spec(spec))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (100, 30, 60)
    assert splits.num_classes == 3 and splits.input_shape == (1, 8, 8) and len(splits.class_names) == 3
    np.testing.assert_array_equal(splits.test.images, full.test.images)
    assert (splits.mean, splits.std) == channel_stats(full.train.images)  # from the whole training set
    again = load_dataset(cfg, seed=1)
    np.testing.assert_array_equal(again.val.images, splits.val.images)
    np.testing.assert_array_equal(again.train.labels, splits.train.labels)
    # train and val images come from disjoint training samples: no val image equals a train image
    train_rows = {row.tobytes() for row in splits.train.images}
    assert not any(row.tobytes() in train_rows for row in splits.val.images)
    empty_val = load_dataset(DataConfig(name="synthetic", data_dir=spec, val_size=0), seed=1)
    assert empty_val.val.images.shape == (0, 1, 8, 8) and len(empty_val.train) == 300


def test_channel_stats_match_numpy() -> None:
    images = np.random.default_rng(0).integers(0, 256, (37, 3, 5, 4), dtype=np.uint8)
    mean, std = channel_stats(images, chunk=8)
    scaled = images.astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, scaled.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, scaled.std(axis=(0, 2, 3)), rtol=1e-9)


def test_load_test_split_needs_only_the_test_files_and_keeps_the_first_n(isolated: Path) -> None:
    folder = isolated / "only-test"
    arrays = make_idx_dataset(folder)
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        for path in folder.glob(stem + "*"):
            path.unlink()
    test, meta = load_test_split("fashion-mnist", str(folder), n=5)
    assert len(test) == 5 and test.images.shape == (5, 1, 28, 28)
    np.testing.assert_array_equal(test.labels, arrays["t10k-labels-idx1-ubyte"][:5])
    assert meta == {
        "name": "fashion-mnist",
        "num_classes": 10,
        "input_shape": (1, 28, 28),
        "class_names": FASHION_CLASSES,
    }
    assert len(load_test_split("fashion-mnist", str(folder), n=1000)[0]) == 12
    with pytest.raises(DataError):  # the training files are needed by load_dataset
        load_dataset(DataConfig(name="fashion-mnist", data_dir=str(folder), val_size=1), seed=0)


def test_image_dataset_validates_its_arrays() -> None:
    with pytest.raises(DataError, match="uint8"):
        ImageDataset(np.zeros((2, 1, 4, 4), np.float32), np.zeros(2, np.int64))
    with pytest.raises(DataError, match="labels"):
        ImageDataset(np.zeros((2, 1, 4, 4), np.uint8), np.zeros(3, np.int64))
    ds = ImageDataset(np.arange(32, dtype=np.uint8).reshape(2, 1, 4, 4), np.array([1, 0], np.int32))
    assert ds.labels.dtype == np.int64 and len(ds) == 2 and ds.input_shape == (1, 4, 4)
    assert ds.subset([1]).images[0, 0, 0, 0] == 16


# ------------------------------------------------------------------------------------------------
# batches


@pytest.fixture
def small_ds() -> ImageDataset:
    return generate(parse_spec("n=53,test=4,shape=3x8x8,classes=5,seed=2")).train


def collect(ds: ImageDataset, **kwargs) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return list(iterate_batches(ds, 10, **kwargs))


def test_batches_cover_the_data_once_with_matching_labels(small_ds: ImageDataset) -> None:
    batches = collect(small_ds, shuffle=True, seed=1, epoch=0)
    assert len(batches) == num_batches(53, 10) == 6 and len(batches[-1][0]) == 3
    idx = torch.cat([b[2] for b in batches]).numpy()
    assert sorted(idx.tolist()) == list(range(53)) and idx.tolist() != list(range(53))
    for x, y, i in batches:
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and i.dtype == torch.int64
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        np.testing.assert_allclose(x.numpy(), small_ds.images[i.numpy()] / 255.0, rtol=0, atol=1e-7)
        np.testing.assert_array_equal(y.numpy(), small_ds.labels[i.numpy()])
    plain = torch.cat([b[2] for b in collect(small_ds)]).tolist()
    assert plain == list(range(53))
    assert len(collect(small_ds, drop_last=True)) == num_batches(53, 10, drop_last=True) == 5


def test_order_depends_on_seed_and_epoch_only(small_ds: ImageDataset) -> None:
    def order(**kw) -> list[int]:
        return torch.cat([b[2] for b in collect(small_ds, shuffle=True, **kw)]).tolist()

    assert order(seed=1, epoch=2) == order(seed=1, epoch=2)
    assert order(seed=1, epoch=2) != order(seed=1, epoch=3)
    assert order(seed=1, epoch=2) != order(seed=2, epoch=2)


def test_resume_mid_epoch_yields_the_same_later_batches(small_ds: ImageDataset) -> None:
    full = collect(small_ds, shuffle=True, augment=True, seed=7, epoch=4)
    resumed = collect(small_ds, shuffle=True, augment=True, seed=7, epoch=4, start_batch=3)
    assert len(resumed) == len(full) - 3
    for (x, y, i), (rx, ry, ri) in zip(full[3:], resumed, strict=True):
        assert torch.equal(x, rx) and torch.equal(y, ry) and torch.equal(i, ri)
    assert collect(small_ds, start_batch=99) == []


def test_augmentation_is_a_padded_crop_or_flip_of_the_image(small_ds: ImageDataset) -> None:
    plain = collect(small_ds, shuffle=True, seed=7, epoch=1)
    augmented = collect(small_ds, shuffle=True, augment=True, seed=7, epoch=1)
    changed = 0
    for (x, _, i), (ax, _, ai) in zip(plain, augmented, strict=True):
        assert torch.equal(i, ai) and ax.shape == x.shape
        assert float(ax.min()) >= 0.0 and float(ax.max()) <= 1.0
        changed += int((ax != x).flatten(1).any(1).sum())
        for k in range(len(i)):  # each image equals one of the 81 crops x 2 flips of its zero-padded original
            padded = np.pad(small_ds.images[int(i[k])], ((0, 0), (4, 4), (4, 4)))
            target = np.rint(ax[k].numpy() * 255).astype(np.uint8)
            crops = [padded[:, t : t + 8, s : s + 8] for t in range(9) for s in range(9)]
            assert any(np.array_equal(target, c) or np.array_equal(target, c[:, :, ::-1]) for c in crops)
    assert changed > 40  # most of the 53 images moved
    assert not torch.equal(augmented[0][0], collect(small_ds, shuffle=True, augment=True, seed=7, epoch=2)[0][0])


def test_batches_for_another_device_are_converted_there(small_ds: ImageDataset) -> None:
    # the non-CPU branch (uint8 shipped, converted on the device), run on torch's data-less "meta" device
    x, y, i = next(iterate_batches(small_ds, 4, augment=True, device="meta"))
    assert x.device.type == y.device.type == i.device.type == "meta"
    assert x.dtype == torch.float32 and x.shape == (4, 3, 8, 8) and y.dtype == torch.int64


def test_augment_batch_keeps_dtype_and_shape() -> None:
    images = np.full((4, 1, 6, 6), 200, np.uint8)
    out = augment_batch(images, np.random.default_rng(0))
    assert out.shape == images.shape and out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, 200}


# ------------------------------------------------------------------------------------------------
# the real Fashion-MNIST


@pytest.mark.integration
@pytest.mark.skipif(
    not (FMNIST_OS_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"real Fashion-MNIST not installed in {FMNIST_OS_DIR} (sudo apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(locate, "OS_LOCATIONS", {"fashion-mnist": (str(FMNIST_OS_DIR),)})
    splits = load_dataset(DataConfig(name="fashion-mnist"), seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (55000, 5000, 10000)
    assert splits.input_shape == (1, 28, 28) and splits.class_names == FASHION_CLASSES
    assert np.bincount(splits.test.labels).tolist() == [1000] * 10
    assert np.bincount(splits.val.labels).tolist() == [500] * 10  # stratified
    assert abs(splits.mean[0] - 0.2860) < 1e-3 and abs(splits.std[0] - 0.3530) < 1e-3
    x, y, _ = next(iterate_batches(splits.test, 256))
    assert x.shape == (256, 1, 28, 28) and int(y.max()) <= 9
