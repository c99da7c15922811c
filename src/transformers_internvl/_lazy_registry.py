"""Registration with transformers' ``Auto*`` tables without importing the registered classes.

transformers' auto mappings (``MODEL_MAPPING``, ``TOKENIZER_MAPPING``, ``IMAGE_PROCESSOR_MAPPING``, ...) keep what
third-party code registers in a plain dict, ``mapping._extra_content``, and read it only through ``[key]``, ``.get``,
``.values()``, ``.items()`` and ``in``. `make_lazy` swaps that dict for a `LazyValueDict` (same entries), whose values
may be `LazyValue` placeholders: a placeholder is replaced by the real object (a model class, a processor class, a
tuple or dict of them) the first time anything reads it, so ``import transformers_internvl`` registers the model and
processor classes by module path and imports ``modeling_*`` only when a model is actually requested.

Keys stay real objects (the config classes), so config modules are imported at registration; they are light.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["LazyValue", "LazyValueDict", "lazy_attribute", "make_lazy"]


class LazyValue:
    """A value computed on first use by `factory()` (no arguments)."""

    __slots__ = ("factory", "description")

    def __init__(self, factory: Callable[[], Any], description: str):
        self.factory = factory
        self.description = description

    def __repr__(self) -> str:
        return f"LazyValue({self.description})"


def lazy_attribute(module: str, name: str, package: str = "transformers_internvl") -> LazyValue:
    """A `LazyValue` for `module.name`; `module` may be relative to `package` (e.g. ``".modeling.modeling_x"``)."""

    def load() -> Any:
        return getattr(importlib.import_module(module, package), name)

    return LazyValue(load, f"{module}.{name}")


class LazyValueDict(dict):
    """A dict whose `LazyValue` values are resolved (and stored) when read.

    Every read path resolves: ``d[key]``, ``d.get``, ``d.values()``, ``d.items()``, ``dict(d)`` and ``d.copy()``
    (``__iter__`` is overridden, so CPython's dict-merge fast path, which copies raw values, is not taken).
    """

    def __getitem__(self, key: Any) -> Any:
        value = super().__getitem__(key)
        if isinstance(value, LazyValue):
            value = value.factory()
            super().__setitem__(key, value)
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default

    def __iter__(self) -> Iterator[Any]:
        return iter(list(super().keys()))

    def values(self) -> list[Any]:  # type: ignore[override]
        return [self[key] for key in list(super().keys())]

    def items(self) -> list[tuple[Any, Any]]:  # type: ignore[override]
        return [(key, self[key]) for key in list(super().keys())]

    def copy(self) -> dict[Any, Any]:
        return dict(self.items())

    def pop(self, key: Any, *default: Any) -> Any:
        if key in self:
            value = self[key]
            super().pop(key)
            return value
        return super().pop(key, *default)

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (self.items(),))


def make_lazy(mapping: Any) -> None:
    """Give the transformers auto mapping `mapping` a `LazyValueDict` as ``_extra_content`` (keeps its entries)."""
    extra = mapping._extra_content
    if not isinstance(extra, LazyValueDict):
        lazy = LazyValueDict()
        dict.update(lazy, extra)
        mapping._extra_content = lazy
