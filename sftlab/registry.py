"""Registries are dicts filled by a decorator: formats, templates, methods, tasks, judges,
synthesis pipelines. Looking up an unknown name is an error that lists the close ones.

>>> METHODS = Registry("method")
>>> @METHODS.register("full")
... def full(model): ...
>>> METHODS.get("ful")
Traceback (most recent call last):
...
sftlab.errors.ConfigError: unknown method 'ful'; did you mean 'full'? (choose from: full)
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from sftlab.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(unknown_name_message(self.kind, name, self._items))
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)


def unknown_name_message(kind: str, name: str, choices) -> str:
    """``unknown method 'ful'; did you mean 'full'? (choose from: full, lora)``"""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown {kind} '{name}'{hint} (choose from: {', '.join(choices)})"
