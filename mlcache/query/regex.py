"""`$regex` on RE2: MongoDB's patterns and options, matched in time linear in the text.

No pattern can hang a search; patterns RE2 refuses fail when the query is compiled.
"""

from __future__ import annotations

import re
from typing import Any

import re2

from ..errors import InvalidQuery
from .values import show

_RE_FLAG_OPTIONS = {re.IGNORECASE: "i", re.MULTILINE: "m", re.DOTALL: "s", re.VERBOSE: "x"}
_RE_HARMLESS_FLAGS = re.UNICODE | re.ASCII
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
_RE2_OPTIONS.never_capture = True
_EXTENDED_SPACE = " \t\n\r\f\v"


def _strip_extended(pattern: str) -> str:
    """The pattern without the whitespace and `#` comments that the `x` option ignores (PCRE's
    rules: not when escaped, inside a character class or inside `\\Q...\\E`); RE2 has no `x` mode."""
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        char = pattern[i]
        if char == "\\":
            if pattern.startswith("\\Q", i):
                end = pattern.find("\\E", i + 2)
                stop = n if end < 0 else end + 2
                out.append(pattern[i:stop])
                i = stop
            else:
                out.append(pattern[i : i + 2])
                i += 2
        elif in_class:
            if pattern.startswith("[:", i) and (end := pattern.find(":]", i + 2)) >= 0:
                out.append(pattern[i : end + 2])
                i = end + 2
                continue
            out.append(char)
            in_class = char != "]"
            i += 1
        elif char == "[":
            start = i
            i += 1
            if pattern.startswith("^", i):
                i += 1
            if pattern.startswith("]", i):
                i += 1
            out.append(pattern[start:i])
            in_class = True
        elif char in _EXTENDED_SPACE:
            i += 1
        elif char == "#":
            end = pattern.find("\n", i)
            i = n if end < 0 else end + 1
        else:
            out.append(char)
            i += 1
    return "".join(out)


class Regex:
    """A `$regex` compiled with RE2, whose matching time is linear in the text (no catastrophic
    backtracking); `options` are MongoDB's letters, folded into the pattern."""

    __slots__ = ("_compiled", "options", "source")

    def __init__(self, source: str, options: str, field: str) -> None:
        self.source = source
        self.options = options
        text = _strip_extended(source) if "x" in options else source
        flags = "".join(letter for letter in options if letter in "ims")
        try:
            self._compiled = re2.compile(
                (f"(?{flags}){text}" if flags else text).encode("utf-8", "surrogatepass"), _RE2_OPTIONS
            )
        except re2.error as exc:
            reason = exc.args[0] if exc.args else exc
            detail = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
            raise InvalidQuery(
                f"$regex {show(source)} on {field!r} is not a pattern RE2 accepts ({detail}); mlcache matches "
                "with RE2 so that no pattern can take exponential time, and RE2 has no backreferences (\\1), "
                "lookaround ((?=...), (?!...), (?<=...), (?<!...)) or \\Z (use \\z): rewrite the pattern "
                "without them, or filter the results in Python"
            ) from exc

    def search(self, text: str) -> bool:
        """Whether the pattern occurs in `text` (lone surrogates, which JSON can carry, are kept)."""
        return self._compiled.search(text.encode("utf-8", "surrogatepass")) is not None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Regex) and (self.source, self.options) == (other.source, other.options)

    def __hash__(self) -> int:
        return hash((self.source, self.options))

    def __repr__(self) -> str:
        return f"re2({self.source!r}, {self.options!r})"


def compile_regex(pattern: Any, options: Any, field: str) -> Regex:
    """A string pattern, a Python `re.Pattern` or a compiled `Regex`, with MongoDB `$options`."""
    if isinstance(pattern, Regex):
        source, letters = pattern.source, pattern.options
    elif isinstance(pattern, re.Pattern):
        if not isinstance(pattern.pattern, str):
            raise InvalidQuery(f"the regular expression on {field!r} must be a str pattern, got {show(pattern)}")
        unsupported = pattern.flags & ~(sum(_RE_FLAG_OPTIONS) | _RE_HARMLESS_FLAGS)
        if unsupported:
            raise InvalidQuery(
                f"the regular expression {show(pattern.pattern)} on {field!r} has flags RE2 cannot honour "
                f"({re.RegexFlag(unsupported)!r}); use only IGNORECASE, MULTILINE, DOTALL and VERBOSE"
            )
        source = pattern.pattern
        letters = "".join(letter for flag, letter in _RE_FLAG_OPTIONS.items() if pattern.flags & flag)
    elif isinstance(pattern, str):
        source, letters = pattern, ""
    else:
        raise InvalidQuery(f"$regex on {field!r} needs a string pattern, got {show(pattern)}")
    if not isinstance(options, str):
        raise InvalidQuery(f"$options on {field!r} needs a string of option letters (i, m, s, x), got {show(options)}")
    unknown = sorted(set(options) - set("imsx"))
    if unknown:
        raise InvalidQuery(
            f"$options on {field!r} has unknown option {', '.join(map(repr, unknown))}; MongoDB's options are "
            "i (ignore case), m (^ and $ at line breaks), s (. matches newlines) and x (ignore whitespace)"
        )
    return Regex(source, "".join(sorted(set(letters + options))), field)
