"""The class of the ``akd_edge`` module itself, so that the API functions keep their names."""

from __future__ import annotations

import types


class ApiPackage(types.ModuleType):
    """``akd_edge``: importing a subpackage that shares an API function's name (``akd_edge.compress``,
    ``akd_edge.export``, ``akd_edge.verify``, ``akd_edge.report``) would rebind ``ae.compress`` to that package, as Python sets a
    submodule as an attribute of its parent, and ``ae.compress(...)`` would fail once anything loaded it. The
    function keeps the name; the package stays in ``sys.modules`` (``from akd_edge.export import onnx`` works,
    ``import akd_edge.export.onnx as m`` does not)."""

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, types.ModuleType) and callable(self.__dict__.get(name)):
            return
        super().__setattr__(name, value)
