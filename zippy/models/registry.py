"""One registry of backbones by name. A backbone is a :class:`LayerFactory` subclass that decides how
each role of the shared detector-descriptor topology is built (float, binary, 8-bit, ...)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zippy.models.layers import LayerFactory

__all__ = ["available", "get_factory", "register"]

_REGISTRY: dict[str, type[LayerFactory]] = {}


def register(name: str) -> Callable[[type[LayerFactory]], type[LayerFactory]]:
    """Class decorator: ``@register("zippypoint") class ZippyPointLayers(LayerFactory): ...``."""

    def wrap(cls: type[LayerFactory]) -> type[LayerFactory]:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def get_factory(name: str) -> type[LayerFactory]:
    """The factory class registered as ``name``; unknown names raise ValueError listing the choices."""
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; choose one of {available()}")
    return _REGISTRY[name]


def available() -> list[str]:
    """Registered backbone names, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)


def _load_builtin() -> None:
    # importing the modules runs their @register decorators
    from zippy.models import backbones, compression  # noqa: F401
