"""Sorting documents, which mongoquery lacks: MongoDB's order of values, missing first when
ascending, ties broken by the entity id so that results are deterministic."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..errors import InvalidQuery
from .values import MISSING, is_list, order, show

SortSpec = Sequence[tuple[str, int]]


def check_sort(sort: Iterable[tuple[str, int]] | None) -> list[tuple[str, int]]:
    """Validate `[(field, 1 | -1), ...]`."""
    checked = []
    for item in sort or ():
        if not (isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[0], str) and item[1] in (1, -1)):
            raise InvalidQuery(f"sort items must be (field, 1) or (field, -1), got {show(item)}")
        checked.append((item[0], int(item[1])))
    return checked


def extract(doc: Any, path: str) -> Any:
    """The value at a dotted path, MISSING when absent."""
    node = doc
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return MISSING
    return node


class _SortKey:
    """Orders one value the MongoDB way; an array sorts by its smallest (asc) or largest (desc) element."""

    __slots__ = ("value",)

    def __init__(self, value: Any, direction: int) -> None:
        if is_list(value) and value:
            chosen = value[0]
            for item in value[1:]:
                if order(item, chosen) == -direction:
                    chosen = item
            value = chosen
        self.value = value

    def __lt__(self, other: _SortKey) -> bool:
        return order(self.value, other.value) < 0


def _sort_key(doc_of: Callable[[Any], Mapping[str, Any]], field: str, direction: int, item: Any) -> _SortKey:
    return _SortKey(extract(doc_of(item), field), direction)


def sort_docs(
    items: list[Any], sort: SortSpec, doc_of: Callable[[Any], Mapping[str, Any]], id_of: Callable[[Any], Any]
) -> list[Any]:
    """Items ordered by `sort`, ties broken by id ascending (stable, deterministic)."""
    ordered = sorted(items, key=lambda item: str(id_of(item)))
    for field, direction in reversed(list(sort)):
        ordered.sort(key=functools.partial(_sort_key, doc_of, field, direction), reverse=direction == -1)
    return ordered
