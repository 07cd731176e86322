"""Fetch dataset files from their official URLs (stdlib urllib), checksum-verified, written atomically.

Each file is streamed into a temp file next to its destination while hashed; on a checksum mismatch the
temp file is deleted and :class:`DataError` raised, otherwise it is renamed into place. The URL bases can be
replaced by a mirror (argument ``mirror`` or ``$AKD_EDGE_MIRROR``): file ``F`` of dataset ``D`` is then
fetched from ``{mirror}/D/F``. Archives are unpacked with ``tarfile``'s ``data`` filter (no absolute paths,
no ``..``, no links out of the folder, no device files).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from akd_edge.core.errors import DataError
from akd_edge.core.files import file_digest, write_atomic
from akd_edge.core.version import __version__

log = logging.getLogger(__name__)

ENV_MIRROR = "AKD_EDGE_MIRROR"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """Where a dataset's files are published and their checksums (``algo:hexdigest``)."""

    urls: tuple[str, ...]
    """Base URLs tried in order; a file's URL is ``base/filename``."""
    files: dict[str, str] = field(default_factory=dict)
    """File name -> ``sha256:...`` or ``md5:...`` (MD5 only where that is all the publisher gives)."""
    archives: tuple[str, ...] = ()
    """Files that are tar archives, unpacked into the download folder after the check."""


# Only MD5 sums are published for these files (dataset pages, and torchvision's copies of them).
SOURCES: dict[str, Source] = {
    "fashion-mnist": Source(
        urls=(
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
        ),
        files={
            "train-images-idx3-ubyte.gz": "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "md5:25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "md5:bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "md5:bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "mnist": Source(
        urls=("https://ossci-datasets.s3.amazonaws.com/mnist", "http://yann.lecun.com/exdb/mnist"),
        files={
            "train-images-idx3-ubyte.gz": "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "md5:d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "md5:9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "md5:ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "cifar10": Source(
        urls=("https://www.cs.toronto.edu/~kriz",),
        files={"cifar-10-python.tar.gz": "md5:c58f30108f718f92721af3b95e74349a"},
        archives=("cifar-10-python.tar.gz",),
    ),
    "cifar100": Source(
        urls=("https://www.cs.toronto.edu/~kriz",),
        files={"cifar-100-python.tar.gz": "md5:eb9058c3a382ffc7106e4002c42a8d85"},
        archives=("cifar-100-python.tar.gz",),
    ),
    "svhn": Source(
        urls=("http://ufldl.stanford.edu/housenumbers",),
        files={
            "train_32x32.mat": "md5:e26dedcc434d2e4c54c9b2d4a06d8373",
            "test_32x32.mat": "md5:eb5a983be6a315427106f1b164d9cef3",
        },
    ),
}


def _split_checksum(checksum: str) -> tuple[str, str]:
    algo, _, expected = checksum.partition(":")
    if algo not in ("sha256", "md5") or not expected:
        raise ValueError(f"checksum {checksum!r} must look like sha256:<hex> or md5:<hex>")
    return algo, expected.lower()


def source_urls(name: str, mirror: str | None = None) -> tuple[str, ...]:
    """The base URLs for dataset ``name``: the mirror's ``{mirror}/{name}`` if one is set, else the official ones."""
    mirror = mirror if mirror is not None else os.environ.get(ENV_MIRROR, "")
    if mirror:
        return (f"{mirror.rstrip('/')}/{name}",)
    return SOURCES[name].urls


def fetch_file(urls: Sequence[str], filename: str, checksum: str, dest_dir: Path, timeout: float = 60.0) -> Path:
    """Download ``filename`` from the first base URL that answers, verify it, and rename it into ``dest_dir``."""
    algo, expected = _split_checksum(checksum)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create the download folder {dest_dir}: {err}; pass a writable --data-dir") from None
    failures = []
    for base in urls:
        url = f"{base.rstrip('/')}/{filename}"
        try:
            return _fetch_one(url, dest_dir / filename, algo, expected, timeout)
        except (urllib.error.URLError, OSError) as err:  # HTTPError is a URLError: try the next base
            reason = f"HTTP {err.code} {err.reason}" if isinstance(err, urllib.error.HTTPError) else str(err)
            log.warning("download of %s failed: %s", url, reason)
            failures.append(f"{url}: {reason}")
    raise DataError(
        f"could not download {filename}:\n  " + "\n  ".join(failures) + "\nCheck the network (or a proxy: "
        f"$https_proxy), set ${ENV_MIRROR} to a mirror, or fetch the file by hand into {dest_dir}."
    )


def _fetch_one(url: str, dest: Path, algo: str, expected: str, timeout: float) -> Path:
    request = urllib.request.Request(url, headers={"User-Agent": f"akd-edge/{__version__} (python urllib)"})
    digest = hashlib.new(algo, usedforsecurity=False) if algo == "md5" else hashlib.new(algo)
    start, size = time.perf_counter(), 0

    def stream(out: IO[bytes]) -> None:  # into write_atomic's temp file: a failed check leaves no file
        nonlocal size
        next_report = 0.25
        with urllib.request.urlopen(request, timeout=timeout) as response:
            expected_size = int(response.headers.get("Content-Length") or 0)
            while chunk := response.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                if expected_size and size >= next_report * expected_size and size < expected_size:
                    log.info("  %s: %.0f%% of %.1f MB", dest.name, 100 * size / expected_size, expected_size / 1e6)
                    next_report += 0.25
        actual = digest.hexdigest()
        if actual != expected:
            raise DataError(
                f"checksum mismatch for {url}: {algo} {actual}, expected {expected}; the partial file was "
                "deleted. The download was corrupted or the server sent a different file; retry, or use a mirror."
            )

    log.info("downloading %s", url)
    write_atomic(dest, stream)
    log.info("saved %s (%.1f MB in %.1f s)", dest, size / 1e6, time.perf_counter() - start)
    return dest


def verify_file(path: Path, checksum: str) -> None:
    """Raise DataError if ``path`` does not match ``checksum``."""
    algo, expected = _split_checksum(checksum)
    actual = file_digest(path, algo)
    if actual != expected:
        raise DataError(f"{path} exists but its {algo} is {actual}, expected {expected}; delete it and download again")


def extract_tar(archive: Path, dest_dir: Path) -> None:
    """Unpack ``archive`` into ``dest_dir`` safely: the ``data`` filter, into a temp folder, then moved in."""
    tmp_dir = Path(tempfile.mkdtemp(dir=dest_dir, prefix=".extract-"))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                tar.extractall(tmp_dir, filter="data")
        except (tarfile.TarError, OSError, EOFError) as err:
            raise DataError(f"cannot unpack {archive}: {err}; delete it and download again") from None
        _merge_tree(tmp_dir, dest_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    log.info("unpacked %s into %s", archive.name, dest_dir)


def _merge_tree(src: Path, dst: Path) -> None:
    for child in src.iterdir():
        target = dst / child.name
        if child.is_dir():
            target.mkdir(exist_ok=True)
            _merge_tree(child, target)
        else:
            os.replace(child, target)


def fetch_dataset_files(name: str, filenames: Sequence[str], dest_dir: Path, *, mirror: str | None = None) -> None:
    """Make ``filenames`` of dataset ``name`` present and verified in ``dest_dir`` (archives unpacked there)."""
    source = SOURCES[name]
    urls = source_urls(name, mirror)
    for filename in filenames:
        checksum = source.files[filename]
        path = dest_dir / filename
        if path.exists():
            verify_file(path, checksum)
            log.info("%s already downloaded and verified", path)
        else:
            fetch_file(urls, filename, checksum, dest_dir)
        if filename in source.archives:
            extract_tar(path, dest_dir)
