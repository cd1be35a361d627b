"""One registry per kind of thing (models, adapters, preprocessing steps, tasks, CAM methods).

A string name maps to a factory; an unknown name is a one-line error that lists the known ones,
as in timm's ``create_model``. A name can be declared ``lazy``: known (listed, validated) at once,
its module imported only when the entry is first used, so naming a model in a config costs no
torch import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from mammolens.utils.errors import ConfigError

T = TypeVar("T")


class _Lazy:
    def __init__(self, module: str) -> None:
        self.module = module


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T | _Lazy] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and not isinstance(self._items[name], _Lazy):
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def lazy(self, name: str, module: str) -> None:
        """Declare ``name``, to be registered by importing ``module`` when first used."""
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = _Lazy(module)

    def add(self, name: str, obj: T) -> T:
        return self.register(name)(obj)

    def get(self, name: str) -> T:
        try:
            item = self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}"
            ) from None
        if isinstance(item, _Lazy):
            importlib.import_module(item.module)
            item = self._items[name]
            if isinstance(item, _Lazy):
                raise RuntimeError(f"importing {item.module} did not register {self.kind} {name!r}")
        return item

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
