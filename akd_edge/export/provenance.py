"""What an export says it is of: the run's name, the ONNX file's metadata and the head of report.json.

All of it comes from the checkpoint's record (``meta``), so a model file and its report can be used and trusted
without akd-edge; torch-free, like :mod:`akd_edge.export.card`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from akd_edge.core.files import check_name
from akd_edge.export.card import REPORT_FORMAT, checkpoint_record


def run_name(meta: dict[str, Any]) -> str:
    """The run's name from the checkpoint's recipe, else the checkpoint file's stem; always a plain name.

    It names the default folder ``export/<name>``, so a name from the file such as ``../x`` or ``/home``
    is refused (UsageError) rather than joined to a path.
    """
    recipe = meta.get("recipe")
    run = recipe.get("run") if isinstance(recipe, dict) else None
    name = run.get("name") if isinstance(run, dict) else None
    if name is not None and name != "":
        return check_name(name, f"run.name in checkpoint {meta.get('path', '')}".rstrip())
    path = Path(str(meta.get("path", "model")))
    stem = path.parent.name if path.stem in ("best", "last") and path.parent.name else path.stem
    return check_name(stem, f"export name taken from {path} (give --out)")


def onnx_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """What goes into the ONNX file's ``metadata_props``: enough to use and trust the model without akd-edge."""
    from akd_edge.core.version import __version__

    arch, data, threat = meta["arch"], meta.get("data") or {}, meta.get("threat") or {}
    val = meta.get("val") or {}
    attack = (((meta.get("recipe") or {}).get("eval") or {}).get("attack")) or {}
    how = (
        f"torch validation split, {attack.get('name', 'pgd')}-{attack.get('steps', '?')}"
        if attack
        else "torch validation split"
    )
    return {
        "akd_edge_version": __version__,
        "architecture": arch["name"],
        "dataset": data.get("name", ""),
        "class_names": list(data.get("class_names") or [str(i) for i in range(arch["num_classes"])]),
        "input_shape": [int(v) for v in arch["input_shape"]],
        "input_layout": "NCHW float32, batch dimension dynamic",
        "input_range": [0.0, 1.0],
        "normalization": {"mean": arch.get("mean"), "std": arch.get("std"), "inside_graph": True},
        "output": "logits (apply softmax for probabilities)",
        "threat_model": {"norm": threat.get("norm"), "eps": threat.get("eps")},
        "robust_accuracy": val.get("robust_acc"),
        "clean_accuracy": val.get("clean_acc"),
        "accuracy_measured_on": how,
        "precision": "fp32",
    }


def report_head(
    meta: dict[str, Any], source: str | Path, out: Path, *, params: int, data_dir: str | None, data_source: str
) -> dict[str, Any]:
    """The start of an export's report.json: what it is of (source, data, threat model, input/output contract).

    ``params`` is the model's parameter count, ``data_dir`` the one the images were read from when given
    (None: the checkpoint's), ``data_source`` where they came from.
    """
    from akd_edge.core.env import package_versions

    metadata = onnx_metadata(meta)
    input_shape = [int(v) for v in meta["arch"]["input_shape"]]
    data = meta.get("data") or {}
    return {
        "format": REPORT_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": package_versions(),
        "source": {
            **checkpoint_record(meta.get("path", source), out),
            "run": run_name(meta),
            "arch": meta["arch"],
            "role": meta.get("role"),
            "epoch": meta.get("epoch"),
            "params": params,
            "val": meta.get("val") or {},
            "pruned": bool(meta.get("pruning")),
            "teachers": meta.get("teachers") or [],
        },
        "data": {
            "name": data.get("name"),
            "data_dir": data.get("data_dir", "") if data_dir is None else data_dir,
            "source": data_source,
        },
        "threat": meta.get("threat") or {},
        "checks": {"onnx_checker": {}},
        "verify": None,
        "model": {
            "input": {
                "name": "images",
                "shape": ["batch", *input_shape],
                "dtype": "float32",
                "range": [0.0, 1.0],
                "layout": "NCHW",
            },
            "output": {"name": "logits", "shape": ["batch", int(meta["arch"]["num_classes"])]},
            "class_names": metadata["class_names"],
            "normalization": metadata["normalization"],
        },
    }
