"""web/ in an export: the onnxruntime-web page, its samples, and headless Chromium's logits against onnxruntime's.

The browser tests need Debian's ``chromium``, Playwright's Python package (driving that chromium through
``executable_path``; no browser download) and onnxruntime-web from npm (``make web-deps`` installs all
three; onnxruntime-web goes into ``tests/web/node_modules``, pinned by ``tests/web/package-lock.json``).
Without them they are skipped, unless ``AKD_EDGE_REQUIRE_BROWSER`` is set (``make test`` and so CI set
it): then they fail, so CI can never pass by skipping them.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_export import SYNTH, save_checkpoint, synthetic_splits, train_tiny  # tests/ is on sys.path

from akd_edge.core.errors import UsageError
from akd_edge.core.ort import MAX_ACCURACY_GAP, OrtClassifier
from akd_edge.export import export_checkpoint
from akd_edge.export.web import RUNTIME_ENV, RUNTIME_FILES, TOLERANCE, find_runtime, pick_samples
from akd_edge.models import create_model
from akd_edge.verify.command import ONNX_MODELS, verify_export
from akd_edge.verify.replay import read_replay

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
NPM_RUNTIME = REPO / "tests" / "web" / "node_modules" / "onnxruntime-web"
REQUIRE = "AKD_EDGE_REQUIRE_BROWSER"
MODELS = ["model.onnx", "model.int8.onnx"]
REPLAYED = 256
"""Test images verify attacks for the browser's replay (the issue asks for at least 200)."""
HOSTILE = ['<img src=x onerror="window.pwned=1">', "</script><script>window.pwned=2</script>", "a&amp;b"]
CLASS_NAMES = [*HOSTILE, *(f"class-{k}" for k in range(3, 10))]
CHROMIUM_ARGS = [  # a closed network: no background connections, no component downloads
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]


def _test_runtime() -> Path | None:
    """onnxruntime-web's dist/ for the tests: from $AKD_EDGE_WEB_RUNTIME, else tests/web/node_modules; or None."""
    try:
        found = find_runtime(os.environ.get(RUNTIME_ENV) or NPM_RUNTIME, environ={})
    except UsageError:
        return None
    return None if found is None else found.dist


def _browser_parts() -> tuple[str, Path]:
    """Chromium's executable and onnxruntime-web's folder; skip without them, or fail when they are required."""
    missing = []
    chromium = os.environ.get("AKD_EDGE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        missing.append("chromium (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("playwright (pip install playwright)")
    runtime = _test_runtime()
    if runtime is None:
        where = os.environ.get(RUNTIME_ENV) or NPM_RUNTIME
        missing.append(f"onnxruntime-web in {where} (make web-deps: npm ci in tests/web)")
    if missing:
        message = "browser test needs " + ", ".join(missing)
        if os.environ.get(REQUIRE, "") not in ("", "0"):
            pytest.fail(f"{message}; {REQUIRE} is set, so it may not be skipped")
        pytest.skip(message)
    assert chromium is not None and runtime is not None
    return chromium, runtime


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained student whose class names try to inject markup into the page."""
    torch.manual_seed(0)
    train_x, train_y, _, _ = synthetic_splits()
    model = create_model("cnn-student", num_classes=10, input_shape=(1, 16, 16), mean=[0.5], std=[0.25])
    train_tiny(model, train_x, train_y, epochs=2)
    data = {"name": "synthetic", "class_names": CLASS_NAMES, "data_dir": SYNTH}
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "web.pt", "cnn-student", data=data)


@pytest.fixture(scope="module")
def exported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The export, with onnxruntime-web copied into web/ort/ when the tests have it."""
    folder = tmp_path_factory.mktemp("web") / "tiny"
    # a tiny model: its int8 twin agrees on 99% of the test split, below the default threshold of a real one
    return export_checkpoint(checkpoint, folder, calib=128, min_int8_agreement=0.98, web_runtime=_test_runtime())


@pytest.fixture(scope="module")
def verified(exported: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the export verified on REPLAYED test images (Square on each session): it holds replay.npz."""
    folder = Path(shutil.copytree(exported[0], tmp_path_factory.mktemp("verified") / "tiny"))
    verify_export(folder, data_dir=SYNTH, n=REPLAYED, square_queries=100, transfer="none", latency=False)
    return folder


def _python_logits(folder: Path, samples: dict[str, Any]) -> dict[str, np.ndarray]:
    """Each model's logits on the page's images, computed now by onnxruntime in Python."""
    images = np.array([s["pixels"] for s in samples["samples"]], dtype=np.float32) / samples["pixel_scale"]
    images = images.reshape(-1, *samples["input_shape"])
    return {name: OrtClassifier.load(folder / name).predict(images) for name in samples["models"]}


def assert_logits_match(browser: dict[str, Any], python: dict[str, np.ndarray]) -> dict[str, float]:
    """The browser's logits against onnxruntime's: the same argmax everywhere, max |difference| < 1e-3."""
    assert set(browser) == set(python), (sorted(browser), sorted(python))
    diffs = {}
    for name, reference in python.items():
        logits = np.array(browser[name]["logits"], dtype=np.float64)
        assert logits.shape == reference.shape, (name, logits.shape, reference.shape)
        diffs[name] = float(np.abs(logits - reference).max())
        assert (logits.argmax(1) == reference.argmax(1)).all(), f"{name}: browser argmax differs from onnxruntime's"
        assert diffs[name] < TOLERANCE, f"{name}: max |browser - onnxruntime| = {diffs[name]:.3g}"
    return diffs


def test_pick_samples_takes_one_image_per_class_first() -> None:
    labels = np.array([3, 3, 1, 0, 1, 2, 0])
    assert pick_samples(np.zeros((7, 1, 2, 2)), labels, 5).tolist() == [3, 2, 5, 0, 1]
    assert pick_samples(np.zeros((7, 1, 2, 2)), labels, 2).tolist() == [3, 2]
    assert pick_samples(np.zeros((3, 1, 2, 2)), None, 5).tolist() == [0, 1, 2]


def test_web_folder_holds_page_samples_and_reference_logits(exported: tuple[Path, dict[str, Any]]) -> None:
    folder, report = exported
    web = folder / "web"
    assert {"index.html", "npz.js", "app.js", "README.md", "samples.json"} <= {p.name for p in web.iterdir()}
    samples = json.loads((web / "samples.json").read_text())
    assert samples["format"] == "akd-edge-web-samples/1" and samples["models"] == MODELS
    assert samples["class_names"] == CLASS_NAMES and samples["input_shape"] == [1, 16, 16]
    # one test image of each class first, exactly as the test split holds it
    _, _, test_x, test_y = synthetic_splits()
    labels = [s["label"] for s in samples["samples"]]
    assert sorted(labels) == list(range(10)) and samples["pixel_scale"] == 255
    first = [int(np.flatnonzero(test_y == label)[0]) for label in labels]
    assert np.array_equal(np.array([s["pixels"] for s in samples["samples"]]), test_x[first].reshape(10, -1))
    # the reference logits are onnxruntime's on those images, and int8 is a different model from fp32
    python = _python_logits(folder, samples)
    for name in MODELS:
        np.testing.assert_array_equal(np.array(samples["reference"][name], dtype=np.float32), python[name])
    np.testing.assert_allclose(python["model.onnx"], OrtClassifier.load(folder / "model.onnx").predict(test_x[first]))
    assert np.abs(python["model.onnx"] - python["model.int8.onnx"]).max() > 0
    # the page loads scripts from its own folder only, and puts no name from the export into HTML
    page = (web / "index.html").read_text() + (web / "app.js").read_text()
    assert re.findall(r'src="([^"]+)"', page) == ["ort/ort.wasm.min.js", "npz.js", "app.js"]
    assert "innerHTML" not in page and "insertAdjacentHTML" not in page and "document.write" not in page
    assert report["web"]["samples"] == 10 and report["web"]["models"] == MODELS
    assert set(report["files"]) == {"model.onnx", "model.int8.onnx", "model.ort", "model.int8.ort"}


def test_page_assets_ship_in_the_wheel() -> None:
    """Every file of akd_edge/assets/web is matched by a package-data glob (tests/test_wheel.py builds the wheel)."""
    import tomllib

    package = REPO / "akd_edge"
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["akd_edge"]
    shipped = {path for pattern in patterns for path in package.glob(pattern)}
    assets = set((package / "assets" / "web").iterdir())
    assert assets and assets <= shipped, sorted(str(p) for p in assets - shipped)


def _fake_runtime(root: Path, version: str = "9.9.9") -> Path:
    package = root / "node_modules" / "onnxruntime-web"
    (package / "dist").mkdir(parents=True)
    for name in RUNTIME_FILES:
        (package / "dist" / name).write_text(f"// {name}\n")
    (package / "package.json").write_text(json.dumps({"name": "onnxruntime-web", "version": version}))
    return package


def test_find_runtime_from_option_environment_or_node_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert find_runtime(None, environ={}) is None  # nothing given and no ./node_modules: the README says how
    package = _fake_runtime(tmp_path)
    dist = (package / "dist").resolve()
    for given in (package, package / "dist", tmp_path / "node_modules"):
        found = find_runtime(given, environ={})
        assert found is not None and found.dist == dist and found.version == "9.9.9" and found.origin == "--web-runtime"
    by_env = find_runtime(None, environ={RUNTIME_ENV: str(package)})
    assert by_env is not None and by_env.origin == f"${RUNTIME_ENV}"
    default = find_runtime(None, environ={})
    assert default is not None and default.dist == dist and "node_modules" in default.origin
    with pytest.raises(UsageError, match="--web-runtime"):
        find_runtime(tmp_path / "nope", environ={})
    with pytest.raises(UsageError, match=re.escape(f"${RUNTIME_ENV}")):
        find_runtime(None, environ={RUNTIME_ENV: str(tmp_path)})


def _words(text: str) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(text.split())


def test_export_cli_web_options(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from akd_edge.cli.export_cmd import export_cmd

    monkeypatch.delenv(RUNTIME_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # no ./node_modules/onnxruntime-web here
    runner = CliRunner()
    package = _fake_runtime(tmp_path / "npm", version="1.2.3")
    base = [str(checkpoint), "--no-int8", "--n", "32"]
    copied = runner.invoke(export_cmd, [*base, "--out", str(tmp_path / "a"), "--web-runtime", str(package)])
    assert copied.exit_code == 0, copied.output
    for name in RUNTIME_FILES:
        assert (tmp_path / "a" / "web" / "ort" / name).read_text() == f"// {name}\n"
    web = json.loads((tmp_path / "a" / "report.json").read_text())["web"]
    assert web["runtime"]["version"] == "1.2.3" and web["models"] == ["model.onnx"]
    assert "onnxruntime-web 1.2.3" in _words(copied.output)
    bad = runner.invoke(export_cmd, [*base, "--out", str(tmp_path / "b"), "--web-runtime", str(tmp_path / "nope")])
    assert bad.exit_code == 2 and "no onnxruntime-web there" in _words(bad.output) and not (tmp_path / "b").exists()
    none = runner.invoke(export_cmd, [*base, "--out", str(tmp_path / "c"), "--no-web"])
    assert none.exit_code == 0, none.output
    assert not (tmp_path / "c" / "web").exists() and "web" not in json.loads(
        (tmp_path / "c" / "report.json").read_text()
    )
    # no onnxruntime-web anywhere: the page is written without it, and its README says how to add it
    plain = runner.invoke(export_cmd, [*base, "--out", str(tmp_path / "d")])
    assert plain.exit_code == 0, plain.output
    assert not (tmp_path / "d" / "web" / "ort").exists() and "not copied" in _words(plain.output)
    assert json.loads((tmp_path / "d" / "report.json").read_text())["web"]["runtime"] is None
    assert "npm install onnxruntime-web" in (tmp_path / "d" / "web" / "README.md").read_text()


class _Quiet(SimpleHTTPRequestHandler):
    """Python's own static server, as web/README.md tells users to run it (it serves .mjs and .wasm right)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serving(folder: Path) -> Iterator[str]:
    """``folder`` over HTTP on 127.0.0.1 (a free port); the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright (no Playwright browser download)."""
    chromium, _ = _browser_parts()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def open_page(browser: Any, folder: Path) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Serve ``folder``, open its web/ page and wait for it: (window.akdResults, the page's text, what it did)."""
    seen: dict[str, Any] = {"elsewhere": [], "errors": [], "pwned": None}
    with serving(folder) as base:
        page = browser.new_page()
        try:

            def route(request_route: Any) -> None:
                if urlsplit(request_route.request.url).netloc == urlsplit(base).netloc:
                    request_route.continue_()
                else:  # the page must need nothing but its own folder
                    seen["elsewhere"].append(request_route.request.url)
                    request_route.abort()

            page.route("**/*", route)
            page.on("pageerror", lambda err: seen["errors"].append(str(err)))
            page.goto(f"{base}/web/index.html")
            page.wait_for_function("window.akdResults && window.akdResults.status !== 'running'", timeout=180_000)
            results = page.evaluate("window.akdResults")
            text = page.inner_text("body")
            seen["headline"] = page.evaluate("document.getElementById('status').className")
            seen["pwned"] = page.evaluate("window.pwned === undefined ? null : window.pwned")
            seen["images"] = page.evaluate("document.images.length")
        finally:
            page.close()
    return results, text, seen


def test_browser_logits_match_onnxruntime(browser: Any, exported: tuple[Path, dict[str, Any]]) -> None:
    folder, report = exported
    assert report["web"]["runtime"] is not None and report["web"]["runtime"]["version"]
    results, text, seen = open_page(browser, folder)
    assert results["status"] == "done", results.get("error")
    assert seen["elsewhere"] == [] and seen["errors"] == []
    samples = json.loads((folder / "web" / "samples.json").read_text())
    diffs = assert_logits_match(results["models"], _python_logits(folder, samples))
    log.info("browser vs onnxruntime, max |logit difference|: %s", diffs)
    assert all(res["matches"] for res in results["models"].values()) and results["matches"]
    assert "every model matches onnxruntime" in text
    # the class names were shown as text: no markup from them ran or became an element
    assert seen["pwned"] is None and seen["images"] == 0
    for name in HOSTILE:
        assert name in text


def test_browser_check_fails_when_the_browser_disagrees(
    browser: Any, exported: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """The same page with the two model files swapped: the page says MISMATCH, and the test's comparison fails."""
    folder, _ = exported
    swapped = tmp_path / "swapped"
    shutil.copytree(folder, swapped)
    (swapped / "model.onnx").replace(swapped / "tmp.onnx")
    (swapped / "model.int8.onnx").replace(swapped / "model.onnx")
    (swapped / "tmp.onnx").replace(swapped / "model.int8.onnx")
    results, text, _ = open_page(browser, swapped)
    assert results["status"] == "done", results.get("error")
    assert results["matches"] is False and "MISMATCH" in text
    samples = json.loads((folder / "web" / "samples.json").read_text())
    with pytest.raises(AssertionError):
        assert_logits_match(results["models"], _python_logits(folder, samples))


def test_browser_replays_the_verified_examples_within_a_point(browser: Any, verified: Path) -> None:
    """The worst-case examples verify kept, replayed in onnxruntime-web: robust accuracy within 1 point of
    Python onnxruntime's, for fp32 and int8, and no red headline while the models agree within tolerance."""
    results, text, seen = open_page(browser, verified)
    assert results["status"] == "done", results.get("error")
    assert seen["elsewhere"] == [] and seen["errors"] == []
    report = json.loads((verified / "report.json").read_text())
    replay = read_replay(verified, report, ONNX_MODELS)
    assert results["replay"]["sha256_checked"] is True and results["replay"]["n"] == REPLAYED
    gaps = {}
    for index, name in enumerate(MODELS):
        browser_res = results["replay"]["models"][name]
        model = OrtClassifier.load(verified / name)  # Python onnxruntime, recomputed here
        clean = model.predict(replay.images).argmax(1) == replay.labels
        python_robust = float((clean & (model.predict(replay.examples[index]).argmax(1) == replay.labels)).mean())
        assert python_robust == report["verify"]["models"][name]["robust_acc"] < float(clean.mean())
        assert browser_res["reference_robust_acc"] == pytest.approx(python_robust)
        gaps[name] = browser_res["robust_acc"] - python_robust
        assert abs(gaps[name]) <= MAX_ACCURACY_GAP, (name, browser_res)
        assert browser_res["verdict"] in ("matches", "within tolerance"), browser_res
        assert results["models"][name]["ms"] > 0 and results["models"][name]["timing_runs"] >= 3
    log.info("browser - Python robust accuracy on %d replayed examples: %s", REPLAYED, gaps)
    assert seen["headline"] in ("ok", "warn") and "MISMATCH" not in text
    assert f"{REPLAYED} replayed worst-case examples" in text


def test_browser_refuses_a_replay_file_changed_since_verify(browser: Any, verified: Path, tmp_path: Path) -> None:
    changed = Path(shutil.copytree(verified, tmp_path / "changed"))
    data = bytearray((changed / "replay.npz").read_bytes())
    data[-40] ^= 1
    (changed / "replay.npz").write_bytes(bytes(data))
    results, _, _ = open_page(browser, changed)
    assert results["status"] == "error" and "does not match the SHA-256" in results["error"]


def test_page_opened_from_a_file_says_how_to_serve_it(browser: Any, exported: tuple[Path, dict[str, Any]]) -> None:
    folder, _ = exported
    page = browser.new_page()
    try:
        page.goto((folder / "web" / "index.html").as_uri())
        page.wait_for_function("window.akdResults && window.akdResults.status !== 'running'", timeout=60_000)
        results = page.evaluate("window.akdResults")
        text = " ".join(page.inner_text("#status").split())
    finally:
        page.close()
    assert results["status"] == "error" and "Failed to fetch" not in text
    assert f"python3 -m http.server --bind 127.0.0.1 --directory {folder} 8000" in text
    assert "http://127.0.0.1:8000/web/" in text and "file://" in text


def _shifted_replay(verified: Path, folder: Path, model: str, shift: float) -> None:
    """A copy of the verified export whose reference logits of ``model`` are ``shift`` higher (re-hashed): as if
    Python onnxruntime had run kernels that round differently from the browser's."""
    from akd_edge.export.card import file_record
    from akd_edge.verify.replay import write_replay

    shutil.copytree(verified, folder)
    report = json.loads((folder / "report.json").read_text())
    replay = read_replay(folder, report, ONNX_MODELS)
    index = replay.models.index(model)
    replay.clean_logits[index] += shift
    replay.example_logits[index] += shift
    report["files"]["replay.npz"] = file_record(write_replay(folder, replay))
    (folder / "report.json").write_text(json.dumps(report))


def test_headline_is_red_only_beyond_the_tolerance_of_each_precision(
    browser: Any, verified: Path, tmp_path: Path
) -> None:
    """int8 logits off by half the int8 bound: within tolerance, an amber headline that says so; fp32 logits off
    by 0.01: a red MISMATCH (fp32 has no int8 allowance)."""
    report = json.loads((verified / "report.json").read_text())
    int8_bound = max(res["logit_bound"] for res in report["verify"]["replay"]["runtimes"].popitem()[1].values())
    _shifted_replay(verified, tmp_path / "int8", "model.int8.onnx", int8_bound / 2)
    results, text, seen = open_page(browser, tmp_path / "int8")
    assert results["status"] == "done", results.get("error")
    assert results["replay"]["models"]["model.int8.onnx"]["verdict"] == "within tolerance"
    assert results["matches"] is False and results["within_tolerance"] is True
    assert seen["headline"] == "warn" and "within tolerance" in text and "MISMATCH" not in text
    _shifted_replay(verified, tmp_path / "fp32", "model.onnx", 0.01)
    results, text, seen = open_page(browser, tmp_path / "fp32")
    assert results["replay"]["models"]["model.onnx"]["verdict"] == "mismatch"
    assert seen["headline"] == "bad" and "MISMATCH" in text and results["within_tolerance"] is False
