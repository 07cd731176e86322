"""Your own images: a folder with ``train/`` and ``test/``, each holding one subfolder of images per class.

Rules, so that train and test (and a deployed model) agree:

- Classes are the subfolder names of ``train/``, sorted; label ``i`` is the ``i``-th name. ``test/`` may
  lack classes but may not add any. Files are read in sorted order.
- Images are read with Pillow (png, jpg/jpeg, bmp, gif, webp, tif/tiff). If every image is greyscale they
  are kept as 1 channel (mode ``L``), otherwise all are converted to RGB (3 channels).
- All images take the size of the first training image (first class, first file); others are resized to
  it (bilinear) and a warning says how many were. Resize your data beforehand to control how.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from akd_edge.core.errors import DataError
from akd_edge.data import locate
from akd_edge.data.base import DATASETS, ImageDataset, LoadedData

log = logging.getLogger(__name__)

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")

LAYOUT = "DIR/train/<class>/*.png and DIR/test/<class>/*.png (one subfolder per class)"

MAX_PIXELS = 4096 * 4096
"""Largest image decoded (width x height); checked from the header, so a decompression bomb is never decoded."""


@contextlib.contextmanager
def open_image(path: Path) -> Iterator[Any]:
    """``PIL.Image.open(path)`` after checking its header size; any unreadable or oversized image is a DataError.

    PIL's own decompression-bomb warning becomes an error here, without touching its global settings.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise DataError(
                        f"image {path} is {width}x{height} pixels, more than the limit of {MAX_PIXELS:,} "
                        "(a decompression bomb, or far larger than a model takes); resize it"
                    )
                yield img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DataError(f"image {path} refused as a decompression bomb: {err}") from None
    except OSError as err:  # PIL.UnidentifiedImageError is an OSError
        raise DataError(f"cannot read image {path}: {err}") from None


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(class_dir: Path) -> list[Path]:
    return sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)


def _list_split(split_dir: Path, class_names: list[str]) -> tuple[list[Path], list[int]]:
    files, labels = [], []
    for label, name in enumerate(class_names):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue
        found = _image_files(class_dir)
        files += found
        labels += [label] * len(found)
    return files, labels


def _read_images(files: list[Path], mode: str, size: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Decode ``files`` into uint8 [N, C, H, W]; returns the array and how many were resized."""
    from PIL import Image

    channels = 1 if mode == "L" else 3
    out = np.empty((len(files), channels, size[1], size[0]), dtype=np.uint8)
    resized = 0
    for i, path in enumerate(files):
        with open_image(path) as img:
            img = img.convert(mode)
            if img.size != size:
                img = img.resize(size, Image.Resampling.BILINEAR)
                resized += 1
            pixels = np.asarray(img, dtype=np.uint8)
        out[i] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return out, resized


def _probe(files: list[Path]) -> tuple[bool, tuple[int, int]]:
    """Whether every image is greyscale, and the size of the first one (headers only, no decoding)."""
    grey, first_size = True, (0, 0)
    for i, path in enumerate(files):
        with open_image(path) as img:
            if i == 0:
                first_size = img.size
            if img.mode not in _GREY_MODES:
                grey = False
    return grey, first_size


@DATASETS.register("imagefolder", help="Your images: DIR/train/<class>/*.png and DIR/test/<class>/*.png")
def imagefolder(
    data_dir: str = "", *, parts: tuple[str, ...] = ("train", "test"), download: bool = False
) -> LoadedData:
    if download:
        log.warning("imagefolder: --download does nothing, the images are your own")
    folder = locate.resolve(
        "imagefolder",
        [(f"{part}/",) for part in parts],
        data_dir=data_dir,
        how_to_get=f"Arrange your images as {LAYOUT} and pass the folder as data.data_dir (--data-dir).",
    )
    class_source = folder / "train" if (folder / "train").is_dir() else folder / parts[0]
    class_names = _class_dirs(class_source)
    if not class_names:
        raise DataError(f"{class_source} has no class subfolders; expected {LAYOUT}")
    listed = {}
    for part in parts:
        extra = sorted(set(_class_dirs(folder / part)) - set(class_names))
        if extra:
            raise DataError(f"{folder / part} has classes {extra} that {class_source} lacks; labels would not match")
        files, labels = _list_split(folder / part, class_names)
        if not files:
            raise DataError(f"no images ({', '.join(EXTENSIONS)}) in the class folders of {folder / part}")
        listed[part] = (files, labels)
    if class_source.name != "train":
        log.warning("imagefolder: %s/train is missing; class names (label order) come from %s", folder, class_source)
    start = time.perf_counter()
    reference = _list_split(class_source, class_names)[0][:1] or listed[parts[0]][0][:1]
    _, size = _probe(reference)
    grey = all(_probe(files)[0] for files, _ in listed.values())
    mode = "L" if grey else "RGB"
    loaded, total_resized = {}, 0
    for part, (files, labels) in listed.items():
        images, resized = _read_images(files, mode, size)
        total_resized += resized
        loaded[part] = ImageDataset(images, np.asarray(labels, dtype=np.int64))
    if total_resized:
        log.warning(
            "imagefolder: resized %d images to %dx%d (the first training image's size)", total_resized, size[0], size[1]
        )
    log.info(
        "imagefolder: read %s images (%s, %dx%d, %d classes) from %s in %.2f s",
        {p: len(d) for p, d in loaded.items()},
        mode,
        size[0],
        size[1],
        len(class_names),
        folder,
        time.perf_counter() - start,
    )
    return LoadedData(tuple(class_names), source=str(folder), **loaded)
