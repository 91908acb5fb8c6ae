"""The values of `$in`/`$nin`, held in hashed sets so that a long list costs a lookup, not a scan."""

from __future__ import annotations

from typing import Any

from .regex import Regex
from .values import ARRAY, DATE, OBJECT, equal, is_list, is_missing, is_nan, is_number, type_class


class Choices(list):
    """The values of `$in`/`$nin` (still a list, for push-down), with hashed lookups: 100,000 ids
    cost a document one lookup per value it holds, not 100,000 comparisons."""

    __slots__ = ("_bools", "_nan", "_null", "_numbers", "_others", "_regexes", "_strings")

    def __init__(self, items: list[Any]) -> None:
        super().__init__(items)
        self._strings = {item for item in items if isinstance(item, str)}
        self._bools = {item for item in items if isinstance(item, bool)}
        self._numbers = {item for item in items if is_number(item) and not is_nan(item)}
        self._nan = any(is_nan(item) for item in items)
        self._null = any(item is None for item in items)
        self._regexes = [item for item in items if isinstance(item, Regex)]
        self._others = [item for item in items if type_class(item) in (OBJECT, ARRAY, DATE)]

    def _holds(self, value: Any) -> bool:
        if isinstance(value, str):
            return value in self._strings or any(regex.search(value) for regex in self._regexes)
        if isinstance(value, bool):
            return value in self._bools
        if isinstance(value, int | float):
            return value in self._numbers or (self._nan and is_nan(value))
        if value is None or is_missing(value):
            return self._null
        return any(equal(item, value) for item in self._others)

    def meets(self, value: Any) -> bool:
        """Whether `value`, or one element of it, equals one of the values (or matches a regex)."""
        return self._holds(value) or (is_list(value) and any(self._holds(item) for item in value))
