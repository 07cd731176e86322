"""Name -> factory registries, one per family (models, methods, datasets)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[F]):
    """A plain dict of named factories, filled by a decorator (as timm's model registry)."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._entries: dict[str, F] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str = "") -> Callable[[F], F]:
        def decorator(factory: F) -> F:
            if name in self._entries:
                raise ValueError(f"{self.family} {name!r} is registered twice")
            self._entries[name] = factory
            doc = (factory.__doc__ or "").strip().splitlines()
            self._help[name] = help or (doc[0] if doc else "")
            return factory

        return decorator

    def get(self, name: str) -> F:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise KeyError(f"unknown {self.family} {name!r}.{hint} Known: {', '.join(sorted(self._entries))}") from None

    def help(self, name: str) -> str:
        return self._help[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


# ----------------------------------------------------------------------------------------------
# Names a recipe may use, checked without importing the families (which import torch).


_PACKAGE = Path(__file__).resolve().parent.parent


def method_files() -> tuple[str, ...]:
    """The built-in objectives, read off the file names of ``akd_edge/methods/`` (one file per objective, named
    after it): adding an objective is adding its file; nothing is imported."""
    folder = _PACKAGE / "methods"
    return tuple(sorted(p.stem for p in folder.glob("*.py") if p.stem not in ("__init__", "base")))


MODEL_DECORATOR = "register_model"
"""The decorator an architecture file of ``akd_edge/models/`` registers its factories with."""


def model_files() -> dict[str, tuple[str, ...]]:
    """The built-in architectures by file: ``{file stem: names}``, read off the ``@register_model("name", ...)``
    decorators of ``akd_edge/models/*.py`` without importing them (they import torch). Adding a model is adding
    its file: :mod:`akd_edge.models` imports every file listed here."""
    import ast

    found: dict[str, tuple[str, ...]] = {}
    for path in sorted((_PACKAGE / "models").glob("*.py")):
        names = [
            deco.args[0].value
            for node in ast.parse(path.read_text(encoding="utf-8")).body
            if isinstance(node, ast.FunctionDef | ast.ClassDef)
            for deco in node.decorator_list
            if isinstance(deco, ast.Call)
            and isinstance(deco.func, ast.Name)
            and deco.func.id == MODEL_DECORATOR
            and deco.args
            and isinstance(deco.args[0], ast.Constant)
            and isinstance(deco.args[0].value, str)
        ]
        if names:
            found[path.stem] = tuple(names)
    return found


BUILTIN_NAMES: dict[str, tuple[str, ...]] = {
    "method": method_files(),
    "model": tuple(sorted(name for names in model_files().values() for name in names)),
    "dataset": ("cifar10", "cifar100", "fashion-mnist", "imagefolder", "mnist", "svhn", "synthetic"),
}
"""The names akd-edge registers, by family; a test keeps them equal to the registries."""

_FAMILY_MODULES = {
    "method": ("akd_edge.methods.base", "METHODS"),
    "model": ("akd_edge.models.zoo", "MODELS"),
    "dataset": ("akd_edge.data.base", "DATASETS"),
}


def known_names(family: str) -> list[str]:
    """Built-in names of ``family`` plus any registered at run time, without importing the family."""
    import sys

    names = set(BUILTIN_NAMES[family])
    module_name, attr = _FAMILY_MODULES[family]
    module = sys.modules.get(module_name)  # loaded already: user registrations count too
    if module is not None:
        names.update(getattr(module, attr).names())
    return sorted(names)


def check_known(family: str, name: str, key: str) -> None:
    """Raise ConfigError naming ``key`` when ``name`` is not a known ``family`` name."""
    from akd_edge.core.errors import ConfigError

    known = known_names(family)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{key}: unknown {family} {name!r}.{hint} Known: {', '.join(known)}")


def validate_names(recipe: Any) -> None:
    """Check the registry names a recipe uses (method, model, dataset), naming the key of a bad one.

    A model may also be ``package.module:factory``: a recipe the user gives is their own, so its import is
    allowed; one read back from a run directory passes :func:`check_code_allowed` first.
    """
    check_known("method", recipe.method.name, "method.name")
    if ":" not in recipe.model.name:
        check_known("model", recipe.model.name, "model.name")
    check_known("dataset", recipe.data.name, "data.name")


ALLOW_CODE = "pass --allow-code (Python: run_recipe(..., allow_code=True))"
"""The remedy :func:`check_code_allowed` names unless told another."""


def check_code_allowed(
    names: Sequence[str], source: str, *, allowed: bool, remedy: str = ALLOW_CODE, error: type[Exception] | None = None
) -> None:
    """The one gate of ``package.module:factory`` names read from a file rather than given by the user.

    A checkpoint's architecture or a resumed run's recipe.toml may come from anyone, and importing the module
    runs its code: unless ``allowed`` (the user opted in: ``--allow-code``, or named the factory themselves),
    the first such name in ``names`` is refused with ``error`` (a ConfigError unless given) naming its module,
    ``source`` and ``remedy``.
    """
    from akd_edge.core.errors import ConfigError

    if allowed or not names:
        return
    name = names[0]
    raise (error or ConfigError)(
        f"{source} names {name!r}: not a registered architecture, and akd-edge imports a module named by a file "
        f"(here {name.partition(':')[0]!r}) only when you allow it, since importing runs its code. "
        f"If you trust it, {remedy}"
    )
