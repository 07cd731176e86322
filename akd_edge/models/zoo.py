"""The model registry and its factory: registered names or ``module:factory``, wrapped behind normalisation."""

from __future__ import annotations

import importlib
import inspect
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from akd_edge.core.env import model_device
from akd_edge.core.errors import ConfigError
from akd_edge.core.registry import Registry, check_code_allowed
from akd_edge.models.normalize import Normalize, NormalizedModel

log = logging.getLogger(__name__)

ModelFactory = Callable[..., nn.Module]
"""``factory(num_classes, input_shape=(C, H, W), **kwargs) -> nn.Module`` returning raw logits."""

MODELS: Registry[ModelFactory] = Registry("model")


@dataclass(frozen=True)
class ModelEntry:
    """What ``akd-edge models`` shows for a registered architecture."""

    name: str
    role: str
    """``teacher`` or ``student``: the part it plays in the shipped recipes (any model can play either)."""
    description: str


_ENTRIES: dict[str, ModelEntry] = {}

MAX_PARAMS = 2_000_000_000
"""Largest model :func:`create_model` builds; larger ones are refused before any memory is allocated."""
MAX_SIDE = 4096
"""Largest image height or width a model is built for."""
MAX_CHANNELS = 64
"""Most image channels a model is built for."""
MAX_CLASSES = 100_000
"""Most classes a model is built for."""
MAX_KWARG = 1024
"""Largest numeric keyword (width, depth, ...) a registered architecture accepts."""


def register_model(name: str, role: str, description: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register a factory under ``name`` with its role and a one-line description."""

    def decorator(factory: ModelFactory) -> ModelFactory:
        MODELS.register(name, help=description)(factory)
        _ENTRIES[name] = ModelEntry(name, role, description)
        return factory

    return decorator


def list_models() -> list[tuple[str, str, str]]:
    """Rows ``(name, role, description)`` of the registered models, sorted by name."""
    return [(e.name, e.role, e.description) for e in sorted(_ENTRIES.values(), key=lambda e: e.name)]


def resolve_factory(name: str, *, allow_import: bool = True) -> ModelFactory:
    """The factory of a registered name, or of ``package.module:factory`` imported with importlib.

    ``allow_import=False`` accepts registered names only: for names read from files (checkpoints) rather than
    given by the user, since importing a module runs its code.
    """
    if ":" not in name:
        try:
            return MODELS.get(name)
        except KeyError as err:
            raise ConfigError(f"{err.args[0]}; or give 'package.module:factory' for your own architecture") from None
    check_code_allowed(
        [name],
        "create_model(allow_import=False)",
        allowed=allow_import,
        remedy=f"pass the factory explicitly (build_model(ckpt, factory={name!r}))",
    )
    module_name, _, attr = name.partition(":")
    if not module_name or not attr or ":" in attr:
        raise ConfigError(f"model {name!r}: expected 'package.module:factory' (one colon, both parts non-empty)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"model {name!r}: cannot import module {module_name!r} ({err}); install it or put its folder on PYTHONPATH"
        ) from None
    factory = getattr(module, attr, None)
    if factory is None:
        public = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise ConfigError(
            f"model {name!r}: module {module_name!r} has no attribute {attr!r}; its callables: {', '.join(public) or 'none'}"
        )
    if not callable(factory):
        raise ConfigError(f"model {name!r}: {module_name}.{attr} is not callable (expected a model factory)")
    return factory


def _check_kwargs(
    name: str, factory: ModelFactory, num_classes: int, input_shape: tuple[int, ...], kwargs: dict
) -> None:
    """Fail with the accepted keywords when the factory's signature does not take ``kwargs``."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins or C callables: let the call itself decide
        return
    try:
        signature.bind(num_classes, input_shape=input_shape, **kwargs)
    except TypeError as err:
        accepted = [p for p in signature.parameters if p not in ("num_classes", "input_shape", "self")]
        raise ConfigError(
            f"model {name!r} cannot be called with kwargs {sorted(kwargs)} ({err}); "
            f"it accepts: {', '.join(accepted) or 'no extra keywords'} "
            "(a factory takes (num_classes, input_shape=(C, H, W), **kwargs))"
        ) from None


def _check_size(name: str, num_classes: Any, input_shape: Any) -> tuple[int, tuple[int, int, int]]:
    """``num_classes`` and ``(C, H, W)`` as ints, within the limits above (they may come from a file)."""
    try:
        classes = int(num_classes)
        shape = tuple(int(v) for v in input_shape)
    except (TypeError, ValueError):
        raise ConfigError(
            f"model {name!r}: num_classes must be an int and input_shape (channels, height, width), "
            f"got {num_classes!r} and {input_shape!r}"
        ) from None
    if not 1 <= classes <= MAX_CLASSES:
        raise ConfigError(f"model {name!r}: num_classes must be in [1, {MAX_CLASSES}], got {num_classes}")
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"model {name!r}: input_shape must be (channels, height, width), got {tuple(input_shape)}")
    if shape[0] > MAX_CHANNELS or max(shape[1:]) > MAX_SIDE:
        raise ConfigError(
            f"model {name!r}: input_shape {shape} is too large (at most {MAX_CHANNELS} channels "
            f"and {MAX_SIDE}x{MAX_SIDE} pixels)"
        )
    return classes, shape  # type: ignore[return-value]


def _check_registered_size(
    name: str, factory: ModelFactory, num_classes: int, shape: tuple[int, int, int], kwargs: dict
) -> None:
    """Refuse out-of-range numeric kwargs, then count parameters on the meta device (no memory, no init)."""
    for key, value in kwargs.items():
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if numeric and not (math.isfinite(value) and abs(value) <= MAX_KWARG):
            raise ConfigError(f"model {name!r}: {key}={value!r} is out of range (at most {MAX_KWARG})")
    with torch.device("meta"):
        net = factory(num_classes, input_shape=shape, **kwargs)
    params = sum(p.numel() for p in net.parameters()) if isinstance(net, nn.Module) else 0
    if params > MAX_PARAMS:
        raise ConfigError(
            f"model {name!r} with {kwargs or 'default kwargs'} would have {params:,} parameters, "
            f"more than the limit of {MAX_PARAMS:,}"
        )


def create_model(
    name: str,
    *,
    num_classes: int,
    input_shape: Sequence[int],
    mean: float | Sequence[float] = 0.0,
    std: float | Sequence[float] = 1.0,
    allow_import: bool = True,
    **kwargs: Any,
) -> NormalizedModel:
    """Build ``name`` for ``num_classes`` and images of ``input_shape`` (C, H, W) in [0, 1], normalised inside.

    ``allow_import=False`` refuses ``module:factory`` names (see :func:`resolve_factory`). Registered
    architectures are first built on the meta device and refused above :data:`MAX_PARAMS` parameters.
    """
    num_classes, shape = _check_size(name, num_classes, input_shape)
    factory = resolve_factory(name, allow_import=allow_import)
    _check_kwargs(name, factory, num_classes, shape, kwargs)
    if ":" not in name:
        _check_registered_size(name, factory, num_classes, shape, kwargs)
    net = factory(num_classes, input_shape=shape, **kwargs)
    if not isinstance(net, nn.Module):
        raise ConfigError(f"model {name!r}: the factory returned {type(net).__name__}, expected a torch.nn.Module")
    return NormalizedModel(Normalize(mean, std, channels=shape[0]), net)


def get_classifier(model: nn.Module) -> nn.Linear:
    """The final ``nn.Linear`` (the classification head): the layer pruning leaves alone."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear head")
    return linears[-1]


MAC_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
"""The layers whose multiply-accumulates are counted, as :func:`akd_edge.report.macs.onnx_macs` counts
``Conv`` and ``Gemm``/``MatMul`` in the exported graph: one number for a model in torch and in ONNX."""


def _layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-accumulates of one image through a conv (outputs x input channels per group x kernel) or a
    linear layer (outputs x input features)."""
    per_image = output.numel() // max(output.shape[0], 1)
    if isinstance(module, nn.Linear):
        return per_image * module.in_features
    return per_image * (module.in_channels // module.groups) * math.prod(module.kernel_size)


def model_info(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Parameters and MACs of one ``input_shape`` (C, H, W) image.

    MACs are those of the convolutions and linear layers (:data:`MAC_LAYERS`); BatchNorm, activations,
    pooling and biases are not counted, as the export's report does not count them in the ONNX graph
    (where BatchNorm is folded into the convolutions), so training, compress and report agree.
    """
    from akd_edge.models.mode import eval_mode

    device = model_device(model)
    example = torch.zeros(1, *(int(v) for v in input_shape), device=device)
    macs: list[int] = []
    hooks = [
        module.register_forward_hook(lambda mod, _inputs, output: macs.append(_layer_macs(mod, output)))
        for module in model.modules()
        if isinstance(module, MAC_LAYERS)
    ]
    try:
        with torch.no_grad(), eval_mode(model):
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return {"params": sum(p.numel() for p in model.parameters()), "macs": int(sum(macs))}


def describe_models(
    input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, names: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """For ``akd-edge models``: each model's name, role, description, params and MACs at ``input_shape``.

    Models are built on the meta device (no memory, no initialisation cost); a model that cannot be built
    for this shape gets ``error`` instead of numbers.
    """
    rows = []
    for name in names or MODELS.names():
        entry = _ENTRIES.get(name, ModelEntry(name, "custom", ""))
        row: dict[str, Any] = {"name": name, "role": entry.role, "description": entry.description}
        try:
            with torch.device("meta"):
                model = create_model(name, num_classes=num_classes, input_shape=input_shape)
            row.update(model_info(model, input_shape))
        except (ConfigError, RuntimeError, ValueError) as err:
            log.warning("model %s cannot be built for input %s: %s", name, tuple(input_shape), err)
            row["error"] = str(err)
        rows.append(row)
    return rows
