"""One small generic registry: register by name, get with "did you mean", list with fnmatch."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object mapping with helpful errors.

    Names are unique: registering a name twice is an error (a silent override hides bugs).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; without ``obj`` return a decorator."""
        if not name or not name.replace("_", "").replace(".", "").isalnum() or name != name.lower():
            raise ValueError(f"invalid {self.kind} name {name!r}: expected lower-case letters, digits, '_' or '.'")

        def _add(o: T) -> T:
            if name in self._entries:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = o
            return o

        return _add if obj is None else _add(obj)

    def get(self, name: str) -> T:
        """Return the entry called ``name``; an unknown name raises KeyError with close matches."""
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise KeyError(f"unknown {self.kind} {name!r}{hint} (known: {', '.join(sorted(self._entries))})") from None

    def list(self, pattern: str | Iterable[str] = "*", exclude: str | Iterable[str] = ()) -> list[str]:
        """Sorted names matching any of ``pattern`` and none of ``exclude`` (fnmatch syntax)."""
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        excludes = [exclude] if isinstance(exclude, str) else list(exclude)
        return sorted(
            n
            for n in self._entries
            if any(fnmatch.fnmatch(n, p) for p in patterns) and not any(fnmatch.fnmatch(n, e) for e in excludes)
        )

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)
