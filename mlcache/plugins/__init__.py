"""Plugin discovery: entry point group `mlcache.plugins` (name -> BaseMlflowApi subclass).

Installed entry points are read once per process (reading them opens every installed package's
metadata, milliseconds each time), and so is the answer to whether mlflow is installed.
"""

from __future__ import annotations

import functools
import importlib.util
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

from ..base import BaseMlflowApi
from ..errors import PluginNotFound
from ..settings import raw

ENTRY_POINT_GROUP = "mlcache.plugins"

BUILTIN_PLUGINS = {
    "mlflow": "mlcache.plugins.mlflow:MlflowApi",
    "offline": "mlcache.plugins.offline:OfflineApi",
    "memory": "mlcache.testing:InMemoryPlugin",
}


def available_plugins() -> dict[str, str]:
    """Plugin name -> `module:Class`, built-ins first, installed entry points over them."""
    return {**BUILTIN_PLUGINS, **_installed_plugins()}


@functools.cache
def _installed_plugins() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_plugin(name: str) -> type[BaseMlflowApi]:
    """The api class registered under `name`."""
    target = _installed_plugins().get(name) or BUILTIN_PLUGINS.get(name)
    if target is None:
        known = ", ".join(sorted(available_plugins()))
        raise PluginNotFound(f"no mlcache plugin named {name!r}; installed: {known}")
    module_name, _, attr = target.partition(":")
    cls = getattr(import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, BaseMlflowApi)):
        raise PluginNotFound(f"plugin {name!r} ({target}) is not a BaseMlflowApi subclass")
    return cls


def default_plugin() -> str:
    """`MLCACHE_PLUGIN` if set, else `mlflow` when mlflow is installed (offline too, with
    `MLCACHE_OFFLINE`: it never imports mlflow then, and keeps its tracking settings for an online
    copy), else `offline`, the cache alone."""
    chosen = raw("MLCACHE_PLUGIN")
    if chosen is not None:
        return chosen
    return "mlflow" if _mlflow_installed() else "offline"


@functools.cache
def _mlflow_installed() -> bool:
    try:
        return importlib.util.find_spec("mlflow") is not None
    except (ImportError, ValueError):
        return False


def get_api(plugin: str | None = None, **conf: Any) -> BaseMlflowApi:
    """An api of the named plugin (default: `default_plugin()`); with no arguments, MLflow on the
    embedded default or the environment, and the cache alone when `MLCACHE_OFFLINE=1`."""
    return load_plugin(plugin or default_plugin())(**conf)
