"""Few labels and unlabelled images (``data.labeled``, ``data.unlabeled``, ``data.labeled_fraction``)."""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_train import _KillAt, _same, _weights, _write, tiny  # tests/ is on sys.path

from akd_edge.cli.main import cli
from akd_edge.config import load_recipe
from akd_edge.core.errors import ConfigError, DataError
from akd_edge.data import ImageDataset, load_dataset, mixed_order
from akd_edge.data.unlabeled import _LABELED_STREAM, NO_LABEL, choose_labeled, load_unlabeled
from akd_edge.models.checkpoint import load_checkpoint
from akd_edge.teachers import TeacherEnsemble
from akd_edge.train.loop import Trainer, train_run


def _labels(n: int, classes: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, n)


def test_labelled_images_are_class_balanced_and_fixed_by_the_seed() -> None:
    labels = _labels(5000, 10)
    chosen = choose_labeled(labels, 200, seed=1, num_classes=10)
    assert len(set(chosen.tolist())) == 200
    assert np.bincount(labels[chosen], minlength=10).tolist() == [20] * 10
    assert np.array_equal(chosen, choose_labeled(labels, 200, seed=1, num_classes=10))
    assert not np.array_equal(np.sort(chosen), np.sort(choose_labeled(labels, 200, seed=2, num_classes=10)))


def test_choosing_reads_only_the_labels_it_scans() -> None:
    labels = _labels(5000, 10)
    chosen = choose_labeled(labels, 100, seed=4, num_classes=10)
    order = np.random.default_rng([_LABELED_STREAM, 4]).permutation(len(labels))
    rank = np.argsort(order)
    unread = order[rank[chosen].max() + 1 :]  # after the last chosen image the scan stopped
    assert len(unread) > 4000
    shuffled = labels.copy()
    shuffled[unread] = _labels(len(unread), 10, seed=9)
    assert np.array_equal(chosen, choose_labeled(shuffled, 100, seed=4, num_classes=10))


def test_a_class_smaller_than_its_quota_gives_all_it_has() -> None:
    labels = np.array([0] * 3 + [1] * 50)
    chosen = choose_labeled(labels, 10, seed=0, num_classes=2)
    assert len(chosen) == 10 and np.bincount(labels[chosen]).tolist() == [3, 7]


def _recipe(**data: object) -> object:
    return load_recipe(tiny(**{f"data__{k}": v for k, v in data.items()}))


def test_rest_holds_the_pool_outside_the_labelled_images_without_labels() -> None:
    recipe = _recipe(labeled=30, unlabeled="rest", train_subset=120)
    splits = load_dataset(recipe.data, recipe.run.seed)
    assert len(splits.train) == 30 and len(splits.unlabeled) == 90 and len(splits.val) == 48
    assert (splits.unlabeled.labels == NO_LABEL).all()
    pool = load_dataset(dataclasses.replace(recipe.data, labeled=0, unlabeled="none"), recipe.run.seed, stratify=False)
    as_rows = {bytes(img) for img in pool.train.images}
    assert {bytes(img) for img in splits.train.images} | {bytes(img) for img in splits.unlabeled.images} == as_rows


def test_labeled_without_unlabeled_trains_on_the_n_labels_only() -> None:
    recipe = _recipe(labeled=30)
    splits = load_dataset(recipe.data, recipe.run.seed)
    assert len(splits.train) == 30 and splits.unlabeled is None


@pytest.mark.parametrize(
    ("over", "key"),
    [
        ({"unlabeled": "rest"}, "data.unlabeled"),
        ({"labeled": -1}, "data.labeled"),
        ({"labeled_fraction": 1.0}, "data.labeled_fraction"),
        ({"labeled_fraction": float("nan")}, "data.labeled_fraction"),
    ],
)
def test_bad_few_label_settings_name_the_key(over: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        _recipe(**over)


def test_more_labels_than_images_is_a_data_error() -> None:
    recipe = _recipe(labeled=500)
    with pytest.raises(DataError, match="data.labeled=500"):
        load_dataset(recipe.data, recipe.run.seed)


# -- the user's own unlabelled images ------------------------------------------------------------------


def _grey(n: int, size: int = 12) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size), dtype=np.uint8)


def test_unlabelled_images_from_npz_idx_and_a_folder(tmp_path: Path) -> None:
    from PIL import Image

    images = _grey(5)
    np.savez(tmp_path / "u.npz", x=images)
    header = b"\0\0\x08\x03" + b"".join(d.to_bytes(4, "big") for d in images.shape)
    (tmp_path / "u-idx3-ubyte.gz").write_bytes(gzip.compress(header + images.tobytes()))
    (tmp_path / "frames" / "day1").mkdir(parents=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / "frames" / "day1" / f"{i}.png")
    for source in ("u.npz", "u-idx3-ubyte.gz", "frames"):
        loaded = load_unlabeled(str(tmp_path / source), (1, 12, 12))
        assert np.array_equal(loaded.images[:, 0], images), source
        assert (loaded.labels == NO_LABEL).all()


@pytest.mark.parametrize(
    ("array", "needle"),
    [
        (np.zeros((4, 10, 10), np.uint8), r"shape \[4, 10, 10\]; expected \[N, 1, 12, 12\]"),
        (np.zeros((4, 3, 12, 12), np.uint8), r"shape \[4, 3, 12, 12\]"),
        (np.zeros((4, 12, 12), np.float32), "float32 values"),
    ],
)
def test_unlabelled_images_of_another_shape_are_refused(tmp_path: Path, array: np.ndarray, needle: str) -> None:
    np.savez(tmp_path / "u.npz", x=array)
    with pytest.raises(DataError, match=needle):
        load_unlabeled(str(tmp_path / "u.npz"), (1, 12, 12))


def test_cli_names_the_file_and_shapes_of_bad_unlabelled_images(tmp_path: Path) -> None:
    np.savez(tmp_path / "u.npz", x=np.zeros((4, 10, 10), np.uint8))
    teacher = _train_teacher(tmp_path)
    recipe = tiny(method__name="akd", data__unlabeled=str(tmp_path / "u.npz"))
    recipe["teachers"] = [{"path": str(teacher)}]
    result = CliRunner().invoke(
        cli, ["distill", "-r", str(_write(tmp_path / "r.toml", recipe)), "--out", str(tmp_path / "s")]
    )
    assert result.exit_code == 2, result.output
    assert "u.npz" in result.output and "[4, 10, 10]" in result.output and "Traceback" not in result.output


# -- batches and training ------------------------------------------------------------------------------


def test_mixed_batches_take_the_labelled_share_and_pass_once_over_the_unlabelled() -> None:
    order = mixed_order(10, 110, 16, 0.25, seed=0, epoch=3)
    batches = [order[i : i + 16] for i in range(0, len(order), 16)]
    assert all((b < 10).sum() == 4 for b in batches)
    unlabelled = np.concatenate([b[b >= 10] for b in batches])
    assert sorted(unlabelled.tolist()) == list(range(10, 110))
    assert np.array_equal(order, mixed_order(10, 110, 16, 0.25, seed=0, epoch=3))
    assert not np.array_equal(order, mixed_order(10, 110, 16, 0.25, seed=0, epoch=4))


def _train_teacher(tmp_path: Path) -> Path:
    out = tmp_path / "teacher"
    if not out.exists():
        train_run(load_recipe(tiny(run__name="teacher", train__epochs=1)), out, role="teacher")
    return out


def _few(tmp_path: Path, method: str = "akd", **data: object) -> dict:
    recipe = tiny(method__name=method, data__labeled=24, data__unlabeled="rest", data__train_subset=96, train__epochs=1)
    for key, value in data.items():
        recipe["data"][key] = value
    recipe["teachers"] = [{"path": str(_train_teacher(tmp_path))}]
    return recipe


def test_unlabelled_images_get_the_teachers_labels(tmp_path: Path) -> None:
    recipe = load_recipe(_few(tmp_path, "at"))
    trainer = Trainer(recipe, tmp_path / "run", "student")
    splits = trainer.splits
    assert len(trainer.train_set) == 96 and np.array_equal(trainer.train_set.labels[:24], splits.train.labels)
    with torch.no_grad():
        teacher_says = trainer.teacher.probs(torch.from_numpy(splits.unlabeled.images).float() / 255).argmax(1)
    assert np.array_equal(trainer.train_set.labels[24:], teacher_says.numpy())


@pytest.mark.parametrize("method", ["akd", "rslad", "adaad", "trades", "at"])
def test_hidden_labels_are_never_read(tmp_path: Path, method: str) -> None:
    recipe = load_recipe(_few(tmp_path, method, labeled_fraction=0.25))
    splits = load_dataset(recipe.data, recipe.run.seed)
    weights = []
    for seed in (1, 2):
        random = ImageDataset(splits.unlabeled.images, _labels(len(splits.unlabeled), 3, seed))
        train_run(recipe, tmp_path / f"{method}{seed}", data=dataclasses.replace(splits, unlabeled=random))
        weights.append(_weights(tmp_path / f"{method}{seed}"))
    assert _same(*weights)


def test_unlabelled_images_need_a_teacher(tmp_path: Path) -> None:
    recipe = tiny(data__labeled=24, data__unlabeled="rest")
    result = CliRunner().invoke(
        cli, ["distill", "-r", str(_write(tmp_path / "r.toml", recipe)), "--out", str(tmp_path / "s")]
    )
    assert result.exit_code == 2 and "data.unlabeled='rest' needs teachers" in result.output


def test_mixed_run_resumes_bit_identically_and_counts_its_images(tmp_path: Path) -> None:
    recipe = load_recipe(_few(tmp_path, "akd", labeled_fraction=0.5, batch_size=16))
    full = train_run(recipe, tmp_path / "full")
    assert full["images"] == {"labeled": 24, "unlabeled": 72}
    with pytest.raises(RuntimeError, match="killed"):
        train_run(recipe, tmp_path / "killed", callbacks=_KillAt(None, epoch=1, batch=5))
    assert load_checkpoint(tmp_path / "killed", "last")["batch"] == 4
    train_run(recipe, tmp_path / "killed", resume=True)
    assert _same(_weights(tmp_path / "full"), _weights(tmp_path / "killed"))


def test_train_teacher_on_the_labelled_images_only(tmp_path: Path) -> None:
    recipe = tiny(run__name="t", data__labeled=24, train__epochs=1)
    result = CliRunner().invoke(
        cli, ["train-teacher", "-r", str(_write(tmp_path / "t.toml", recipe)), "--out", str(tmp_path / "t")]
    )
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "t", "last")["recipe"]["data"]["labeled"] == 24


def test_teacher_ensemble_type_is_what_the_trainer_labels_with(tmp_path: Path) -> None:
    trainer = Trainer(load_recipe(_few(tmp_path)), tmp_path / "run", "student")
    assert isinstance(trainer.teacher, TeacherEnsemble)
