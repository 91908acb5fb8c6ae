"""Testing aids, public: `InMemoryPlugin` (plugin `memory`), a whole backend in dicts, and in
`mlcache.testing.contract` the `PluginContract` suite a plugin author runs against a backend."""

from __future__ import annotations

from .memory import InMemoryPlugin, MemoryBackend

__all__ = ["InMemoryPlugin", "MemoryBackend"]
