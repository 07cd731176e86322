"""The export's browser check: ``web/``, a page that runs the ONNX models under onnxruntime-web.

``web/`` holds ``index.html``, ``npz.js`` and ``app.js`` (from ``akd_edge/assets/web``), a README, and
``samples.json``: a handful of test images (one per class first), the class names, and the logits
onnxruntime computed for them in Python. The page loads ``../model.onnx`` and ``../model.int8.onnx``,
classifies the images, shows the predictions and says whether each logit matches the Python one. Once
``akd-edge verify`` has run, it also replays the worst-case examples verify kept (``../replay.npz``, checked
against the SHA-256 in ``../report.json``) and shows the browser's clean and robust accuracy beside Python
onnxruntime's, with the tolerances verify's replay applies (:func:`akd_edge.core.ort.tolerances`). Opened from
``file://`` it says how to serve it over HTTP instead.

The page reads nothing from the network: onnxruntime-web's files go in ``web/ort/``, copied from an
onnxruntime-web package the user has (``--web-runtime``, ``$AKD_EDGE_WEB_RUNTIME`` or
``./node_modules/onnxruntime-web``); without one, the README says how to add them. Names from the
checkpoint (run, class names) reach the page only through ``samples.json`` and are set as text, never
as HTML, so no name can inject markup or script.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from akd_edge.core import files
from akd_edge.core.errors import UsageError
from akd_edge.core.ort import FP32_LOGIT_BOUND, tolerances

WEB_DIR = "web"
RUNTIME_DIR = "ort"
"""onnxruntime-web's files go in ``web/ort/``."""
RUNTIME_ENV = "AKD_EDGE_WEB_RUNTIME"
RUNTIME_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
"""What the page needs of onnxruntime-web's ``dist/``: the WebAssembly-only build, its loader and its binary."""
DEFAULT_RUNTIME = Path("node_modules") / "onnxruntime-web"
PAGE_FILES = ("index.html", "npz.js", "app.js", "README.md")
SAMPLES_FORMAT = "akd-edge-web-samples/1"
TOLERANCE = FP32_LOGIT_BOUND
"""The largest absolute logit difference between the browser and onnxruntime in Python for an fp32 model; the
page applies :func:`akd_edge.core.ort.tolerances` (int8 has a bound of its own)."""
WEB_ASSETS = Path(__file__).resolve().parent.parent / "assets" / "web"
"""The page's own files (:data:`PAGE_FILES`), shipped in the package and copied into each export's web/."""


@dataclass(frozen=True)
class WebRuntime:
    """An onnxruntime-web ``dist/`` folder holding :data:`RUNTIME_FILES`."""

    dist: Path
    version: str | None
    origin: str
    """Where it was found: ``--web-runtime``, ``$AKD_EDGE_WEB_RUNTIME`` or ``./node_modules/onnxruntime-web``."""


def _dist_folder(path: Path) -> Path | None:
    """The folder holding :data:`RUNTIME_FILES`: ``path`` itself, its ``dist/``, or inside a node_modules folder."""
    for candidate in (path, path / "dist", path / "onnxruntime-web" / "dist"):
        if all((candidate / name).is_file() for name in RUNTIME_FILES):
            return candidate
    return None


def _version(dist: Path) -> str | None:
    """The version in the package.json beside ``dist/``, when that is onnxruntime-web's."""
    try:
        package = json.loads((dist.parent / "package.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(package, dict) or package.get("name") != "onnxruntime-web":
        return None
    version = package.get("version")
    return version if isinstance(version, str) else None


def find_runtime(given: str | Path | None = None, environ: Mapping[str, str] | None = None) -> WebRuntime | None:
    """onnxruntime-web for the page: ``given``, else ``$AKD_EDGE_WEB_RUNTIME``, else ``./node_modules/onnxruntime-web``.

    A path that is given (as argument or environment variable) and holds no onnxruntime-web is a
    UsageError; the default location is only looked at, and None is returned when it is not there.
    """
    environ = os.environ if environ is None else environ
    if given is not None and str(given) != "":
        path, origin = Path(given), "--web-runtime"
    elif environ.get(RUNTIME_ENV):
        path, origin = Path(environ[RUNTIME_ENV]), f"${RUNTIME_ENV}"
    else:
        dist = _dist_folder(DEFAULT_RUNTIME)
        return None if dist is None else WebRuntime(dist.resolve(), _version(dist), f"./{DEFAULT_RUNTIME}")
    dist = _dist_folder(path)
    if dist is None:
        raise UsageError(
            f"{origin} {path}: no onnxruntime-web there (expected {', '.join(RUNTIME_FILES)} in it or in its dist/ "
            "folder); run `npm install onnxruntime-web` and give node_modules/onnxruntime-web"
        )
    return WebRuntime(dist.resolve(), _version(dist), origin)


def pick_samples(images: np.ndarray, labels: np.ndarray | None, n: int) -> np.ndarray:
    """Indices of ``n`` images: the first of each class in class order, then the next ones in order."""
    if labels is None:
        return np.arange(min(n, len(images)))
    firsts = [int(np.flatnonzero(labels == label)[0]) for label in np.unique(labels)]
    taken = set(firsts)
    rest = [i for i in range(len(images)) if i not in taken]
    return np.array((firsts + rest)[:n], dtype=np.int64)


def _pixels(images: np.ndarray) -> tuple[list[list[Any]], int]:
    """Each image's values, channel-major, and what to divide them by for [0, 1]: exactly what the model sees."""
    if images.dtype == np.uint8:
        return [image.reshape(-1).tolist() for image in images], 255
    floats = np.ascontiguousarray(images, dtype=np.float32)
    return [[float(v) for v in image.reshape(-1)] for image in floats], 1


@dataclass(frozen=True)
class Samples:
    """What the page shows: images (uint8 [0, 255] or float [0, 1], NCHW), their labels, the class names."""

    images: np.ndarray
    labels: np.ndarray | None
    """int [N], or None for images without labels."""
    class_names: list[str]
    title: str
    """The page's title: the run's name."""


def samples_document(folder: Path, models: list[str], samples: Samples) -> dict[str, Any]:
    """``samples.json``: the images, their labels, and each model's logits from onnxruntime in Python (CPU)."""
    from akd_edge.core.ort import OrtClassifier, as_float_images

    pixels, scale = _pixels(samples.images)
    x = as_float_images(samples.images)
    reference = {name: OrtClassifier.load(folder / name).predict(x) for name in models}
    labels = [None] * len(pixels) if samples.labels is None else [int(label) for label in samples.labels]
    return {
        "format": SAMPLES_FORMAT,
        "title": samples.title,
        "input_name": "images",
        "output_name": "logits",
        "input_shape": [int(v) for v in samples.images.shape[1:]],
        "pixel_scale": scale,
        "class_names": [str(name) for name in samples.class_names],
        "samples": [{"label": label, "pixels": values} for values, label in zip(pixels, labels, strict=True)],
        "models": models,
        "reference": {name: logits.tolist() for name, logits in reference.items()},
        "tolerance": TOLERANCE,
        "tolerances": tolerances(),
    }


def write_web(folder: Path, models: list[str], samples: Samples, runtime: WebRuntime | None) -> dict[str, Any]:
    """Write ``folder/web/`` for the ONNX ``models`` in ``folder``; the report's ``web`` section."""
    web = folder / WEB_DIR
    web.mkdir(mode=files.dir_mode())
    for name in PAGE_FILES:
        files.copy_atomic(WEB_ASSETS / name, web / name)
    document = samples_document(folder, models, samples)
    text = json.dumps(files.json_ready(document), separators=(",", ":"), allow_nan=False)
    files.write_text_atomic(web / "samples.json", text + "\n")
    section: dict[str, Any] = {
        "folder": WEB_DIR,
        "page": "web/index.html",
        "models": models,
        "samples": len(samples.images),
        "tolerance": TOLERANCE,
        "tolerances": tolerances(),
        "runtime": None,
    }
    if runtime is None:
        section["runtime_missing"] = f"no onnxruntime-web given: {WEB_DIR}/README.md says how to add it"
        return section
    (web / RUNTIME_DIR).mkdir(mode=files.dir_mode())
    for name in RUNTIME_FILES:
        files.copy_atomic(runtime.dist / name, web / RUNTIME_DIR / name)
    section["runtime"] = {
        "package": "onnxruntime-web",
        "version": runtime.version,
        "from": str(runtime.dist),
        "found_by": runtime.origin,
        "files": {name: (web / RUNTIME_DIR / name).stat().st_size for name in RUNTIME_FILES},
    }
    return section
