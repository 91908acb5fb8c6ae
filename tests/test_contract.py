"""The plugin contract, run against the in-memory plugin (fast) and the MLflow plugin on a real server."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlcache.base import BaseMlflowApi
from mlcache.plugins.mlflow import MlflowApi
from mlcache.testing import InMemoryPlugin, MemoryBackend
from mlcache.testing.contract import PluginContract

from servers import MlflowServer


class TestInMemoryPlugin(PluginContract):
    def make_api(self, cache_dir: Path) -> BaseMlflowApi:
        return InMemoryPlugin(cache_dir=cache_dir, backend=MemoryBackend(page_size=50))


class TestMlflowPlugin(PluginContract):
    @pytest.fixture(autouse=True)
    def _server(self, mlflow_server: MlflowServer) -> None:
        self.url = mlflow_server.url

    def make_api(self, cache_dir: Path) -> BaseMlflowApi:
        return MlflowApi(tracking_uri=self.url, cache_dir=cache_dir)


def test_a_plugin_missing_hooks_fails_at_instantiation_naming_them(tmp_path: Path) -> None:
    class Bare(BaseMlflowApi):
        def _impl_fetch_run(self, run_id: str):  # type: ignore[no-untyped-def]
            raise NotImplementedError

    with pytest.raises(TypeError) as info:
        Bare(cache_dir=tmp_path)  # type: ignore[abstract]
    message = str(info.value)
    assert "_impl_log_batch" in message and "_impl_search_runs" in message and "_impl_transfer_for" in message
    assert "_impl_fetch_run" not in message
