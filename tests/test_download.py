"""--download against a local http.server on 127.0.0.1 serving generated files; never the internet."""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import tarfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from test_data import make_cifar10, make_idx_dataset  # the format writers (tests/ is on sys.path)

from akd_edge.config import DataConfig
from akd_edge.core.errors import DataError
from akd_edge.data import download as dl
from akd_edge.data import load_dataset, load_test_split, locate


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server: returns (base URL, folder it serves)."""
    root = tmp_path / "served"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(locate.ENV_DATA, raising=False)
    monkeypatch.delenv(dl.ENV_MIRROR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(locate, "OS_LOCATIONS", {})


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_good_download_is_verified_and_renamed_into_place(server: tuple[str, Path], tmp_path: Path) -> None:
    base, root = server
    payload = np.random.default_rng(0).bytes(300_000)
    (root / "blob.bin").write_bytes(payload)
    dest = tmp_path / "dest"
    path = dl.fetch_file([base], "blob.bin", sha256(payload), dest)
    assert path == dest / "blob.bin" and path.read_bytes() == payload
    assert leftovers(dest) == ["blob.bin"]  # no temp file left
    md5 = "md5:" + hashlib.md5(payload).hexdigest()
    assert dl.fetch_file([base], "blob.bin", md5, tmp_path / "md5").read_bytes() == payload


def test_corrupt_download_deletes_the_temp_file_and_raises(server: tuple[str, Path], tmp_path: Path) -> None:
    base, root = server
    (root / "blob.bin").write_bytes(b"tampered contents")
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="checksum mismatch") as info:
        dl.fetch_file([base], "blob.bin", sha256(b"genuine contents"), dest)
    assert f"{base}/blob.bin" in str(info.value)
    assert leftovers(dest) == []


def test_404_names_the_url_and_tries_the_next_base(server: tuple[str, Path], tmp_path: Path) -> None:
    base, root = server
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="HTTP 404") as info:
        dl.fetch_file([base], "absent.bin", sha256(b""), dest)
    assert f"{base}/absent.bin" in str(info.value) and "AKD_EDGE_MIRROR" in str(info.value)
    assert leftovers(dest) == []
    (root / "second").mkdir()
    (root / "second" / "absent.bin").write_bytes(b"found")
    path = dl.fetch_file([base, f"{base}/second"], "absent.bin", sha256(b"found"), dest)
    assert path.read_bytes() == b"found"


def test_an_existing_file_with_a_wrong_checksum_is_reported_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "x.gz").write_bytes(b"local")
    with pytest.raises(DataError, match="delete it"):
        dl.verify_file(tmp_path / "x.gz", sha256(b"other"))
    assert (tmp_path / "x.gz").read_bytes() == b"local"


def serve_idx_dataset(root: Path, monkeypatch: pytest.MonkeyPatch, name: str = "fashion-mnist") -> None:
    """Write small IDX .gz files under root/NAME (the mirror layout) and patch the checksum table to them."""
    make_idx_dataset(root / name, n_train=20, n_test=8, gz=True)
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):  # make_idx_dataset writes test raw
        raw = root / name / stem
        raw.with_name(stem + ".gz").write_bytes(gzip.compress(raw.read_bytes()))
        raw.unlink()
    files = {p.name: sha256(p.read_bytes()) for p in (root / name).iterdir()}
    monkeypatch.setitem(dl.SOURCES, name, dl.Source(urls=("http://127.0.0.1:9/unused",), files=files))


def test_load_dataset_downloads_missing_files_from_the_mirror(
    server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, root = server
    serve_idx_dataset(root, monkeypatch)
    monkeypatch.setenv(dl.ENV_MIRROR, base)
    target = tmp_path / "mine"
    cfg = DataConfig(name="fashion-mnist", data_dir=str(target), download=True, val_size=4)
    splits = load_dataset(cfg, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (16, 4, 8)
    assert sorted(leftovers(target)) == sorted(p.name for p in (root / "fashion-mnist").iterdir())
    # present now: found without --download, even with the server gone from the picture
    monkeypatch.setenv(dl.ENV_MIRROR, "http://127.0.0.1:9")
    assert len(load_dataset(DataConfig(name="fashion-mnist", data_dir=str(target), val_size=4), seed=0).test) == 8


def test_download_goes_to_env_folder_or_cache_and_only_fetches_the_parts_needed(
    server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, root = server
    serve_idx_dataset(root, monkeypatch, name="mnist")
    monkeypatch.setenv(dl.ENV_MIRROR, base)
    test, _ = load_test_split("mnist", download=True)
    cache = tmp_path / "xdg-cache" / "akd-edge" / "data" / "mnist"
    assert len(test) == 8
    assert leftovers(cache) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    monkeypatch.setenv(locate.ENV_DATA, str(tmp_path / "env"))
    load_dataset(DataConfig(name="mnist", download=True, val_size=2), seed=0)
    assert len(leftovers(tmp_path / "env" / "mnist")) == 4


def test_cifar_archive_is_downloaded_verified_and_unpacked(
    server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, root = server
    make_cifar10(tmp_path / "build" / "cifar-10-batches-py")
    archive = root / "cifar10" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "build" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    files = {archive.name: sha256(archive.read_bytes())}
    monkeypatch.setitem(
        dl.SOURCES, "cifar10", dl.Source(urls=(base + "/cifar10",), files=files, archives=(archive.name,))
    )
    target = tmp_path / "c10"
    splits = load_dataset(DataConfig(name="cifar10", data_dir=str(target), download=True, val_size=5), seed=0)
    assert len(splits.train) == 25 and splits.input_shape == (3, 32, 32)
    assert (target / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert not [p for p in target.iterdir() if p.name.startswith(".")]  # no temp folders left


def evil_tar(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "members, links",
    [
        ({"../escaped.txt": b"x"}, None),
        ({}, {"cifar-10-batches-py/link": "../../outside"}),
    ],
)
def test_unsafe_archives_are_refused(tmp_path: Path, members: dict[str, bytes], links: dict[str, str] | None) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    archive = dest / "evil.tar.gz"
    archive.write_bytes(evil_tar(members, links))
    with pytest.raises(DataError, match="cannot unpack"):
        dl.extract_tar(archive, dest)
    assert not (tmp_path / "escaped.txt").exists()
    assert leftovers(dest) == ["evil.tar.gz"]


def test_absolute_archive_paths_land_inside_the_folder(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    archive = dest / "abs.tar.gz"
    outside = tmp_path / "outside.txt"
    archive.write_bytes(evil_tar({str(outside): b"x"}))
    dl.extract_tar(archive, dest)  # the data filter strips the leading "/"
    assert not outside.exists()
    assert (dest / str(outside).lstrip("/")).read_bytes() == b"x"


def test_mirror_argument_and_env_replace_the_official_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    assert dl.source_urls("svhn") == dl.SOURCES["svhn"].urls
    assert dl.source_urls("svhn", mirror="http://m/") == ("http://m/svhn",)
    monkeypatch.setenv(dl.ENV_MIRROR, "http://env-mirror")
    assert dl.source_urls("cifar100") == ("http://env-mirror/cifar100",)


def test_the_checksum_table_covers_every_downloadable_file() -> None:
    from akd_edge.data.cifar import cifar10  # noqa: F401  (registers loaders)
    from akd_edge.data.idx import IDX_FILES
    from akd_edge.data.svhn import SVHN_FILES

    for name in ("fashion-mnist", "mnist"):
        assert set(dl.SOURCES[name].files) == {f"{s}.gz" for stems in IDX_FILES.values() for s in stems}
    assert set(dl.SOURCES["svhn"].files) == set(SVHN_FILES.values())
    for source in dl.SOURCES.values():
        for checksum in source.files.values():
            algo, digest = checksum.split(":")
            assert len(digest) == {"md5": 32, "sha256": 64}[algo] and int(digest, 16) >= 0
        assert set(source.archives) <= set(source.files)
