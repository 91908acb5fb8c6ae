"""Plugin discovery: entry point group `mlcache.plugins` (name -> BaseMlflowApi subclass)."""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

from ..base import BaseMlflowApi
from ..errors import PluginNotFound

ENTRY_POINT_GROUP = "mlcache.plugins"

BUILTIN_PLUGINS = {
    "mlflow": "mlcache.plugins.mlflow_api:MlflowApi",
    "offline": "mlcache.plugins.offline_api:OfflineApi",
}


def available_plugins() -> dict[str, str]:
    """Plugin name -> `module:Class`, built-ins first, installed entry points over them."""
    found = dict(BUILTIN_PLUGINS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep.value
    return found


def load_plugin(name: str) -> type[BaseMlflowApi]:
    """The api class registered under `name`."""
    target = available_plugins().get(name)
    if target is None:
        known = ", ".join(sorted(available_plugins()))
        raise PluginNotFound(f"no mlcache plugin named {name!r}; installed: {known}")
    module_name, _, attr = target.partition(":")
    cls = getattr(import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, BaseMlflowApi)):
        raise PluginNotFound(f"plugin {name!r} ({target}) is not a BaseMlflowApi subclass")
    return cls


def get_api(plugin: str = "mlflow", **conf: Any) -> BaseMlflowApi:
    """An api of the named plugin; with no arguments, MLflow on the embedded default (or the env)."""
    return load_plugin(plugin)(**conf)
