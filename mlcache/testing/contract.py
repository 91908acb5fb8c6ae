"""`PluginContract`: the tests every plugin must pass, for plugin authors to run against a backend.

Subclass it in a test module under a name pytest collects, and say how to make an api of the
plugin over a given cache dir:

    from mlcache.testing.contract import PluginContract

    class TestMyPlugin(PluginContract):
        def make_api(self, cache_dir):
            return MyPlugin(cache_dir=cache_dir, server="http://127.0.0.1:5000")

The suite checks the hooks through the public api (documents, errors, creates, searches across
pages, artifacts), and that what the api reads online is there offline afterwards.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from ..base import BaseMlflowApi
from ..entities import RunStatus
from ..errors import CacheMiss, EntityExists, EntityNotFound
from ..hooks import HOOK_OPERATIONS


def _write_model(path: Path) -> None:
    path.mkdir()
    (path / "weights.bin").write_bytes(b"w" * 3000)
    (path / "conf").mkdir()
    (path / "conf" / "params.json").write_text('{"layers": 2}')


class PluginContract:
    """The contract of the hooks (`mlcache.hooks`), checked through the api."""

    search_count = 120
    """How many runs the paging test makes: more than one page of the backend."""

    def make_api(self, cache_dir: Path) -> BaseMlflowApi:
        """An api of the plugin under test, over `cache_dir`, talking to its backend."""
        raise NotImplementedError("implement make_api(cache_dir) in the subclass")

    @pytest.fixture
    def api(self, tmp_path: Path) -> BaseMlflowApi:
        return self.make_api(tmp_path / "cache")

    @pytest.fixture
    def name(self) -> str:
        return f"contract-{uuid.uuid4().hex[:10]}"

    def test_every_hook_is_implemented(self, api: BaseMlflowApi) -> None:
        missing = sorted(getattr(type(api), "__abstractmethods__", ()))
        assert missing == []
        assert all(callable(getattr(api, hook)) for hook in [*HOOK_OPERATIONS, "_impl_transfer_for"])

    def test_experiments(self, api: BaseMlflowApi, name: str) -> None:
        exp = api.create_exp(name, tags={"team": {"name": "risk"}, "n": 3})
        assert exp.name == name and exp.tags == {"team": {"name": "risk"}, "n": 3}
        assert api.get_exp(exp.id, force_refresh=True) == exp
        assert api.get_exp_by_name(name, force_refresh=True).id == exp.id
        with pytest.raises(EntityExists):
            api.create_exp(name)
        with pytest.raises(EntityNotFound):
            api.get_exp_by_name(f"{name}-missing")
        api.set_tags_on_exp(exp, {"stage": "dev"})
        assert api.get_exp(exp.id).tags["stage"] == "dev"
        archived = api.archive_exp(exp, suffix="-old")
        assert archived.name == f"{name}-old"
        assert api.delete_exp(exp).lifecycle_stage == "deleted"
        assert api.restore_exp(exp).lifecycle_stage == "active"

    def test_runs(self, api: BaseMlflowApi, name: str) -> None:
        exp = api.create_exp(name)
        run = api.create_run(exp, "train", tags={"data": {"split": "v2"}})
        assert run.status == RunStatus.RUNNING and run.exp.id == exp.id and run.repo
        api.log_batch(run, params={"lr": 0.01, "layers": [64, 32]}, tags={"owner": "me"})
        for step, acc in enumerate((0.5, 0.7, 0.9)):
            api.log_metrics(run, {"acc": acc, "loss": {"train": 1 - acc}}, step=step)
        child = api.create_run(exp, "fold", parent=run)
        ended = api.end_run(run)
        assert ended.status == RunStatus.FINISHED and ended.end_time is not None
        assert ended.params == {"lr": 0.01, "layers": [64, 32]}
        assert ended.tags["data"] == {"split": "v2"} and ended.tags["owner"] == "me"
        assert ended.metrics == {"acc": 0.9, "loss": {"train": pytest.approx(0.1)}}
        assert api.get_run(child.id, force_refresh=True).parent_run_id == run.id
        assert api.resume_run(run).status == RunStatus.RUNNING
        assert [r.id for r in api.find_child_runs(run)] == [child.id]
        with pytest.raises(EntityNotFound):
            api.get_run("0" * 32)

    def test_registry(self, api: BaseMlflowApi, name: str) -> None:
        run = api.create_exp(name).start_run("train")
        model = api.create_model(name, tags={"team": "risk"}, description="fraud")
        assert model.name == name and model.tags == {"team": "risk"}
        with pytest.raises(EntityExists):
            api.create_model(name)
        first = api.register_model_version(name, run, "model", aliases=["prod"])
        second = api.register_model_version(name, run, "model2", tags={"stage": "canary"})
        assert (first.version, second.version) == ("1", "2") and first.run is not None and first.run.id == run.id
        assert api.get_model_version((name, "@prod")).version == "1"
        api.set_model_alias((name, 2), "prod")
        assert api.get_model_version((name, "@prod")).version == "2"
        assert api.get_model(name, force_refresh=True).aliases == {"prod": "2"}
        api.set_tags_on_model_version((name, 1), {"stage": "retired"})
        assert api.get_model_version((name, 1)).tags == {"stage": "retired"}
        api.set_tags_on_model(name, {"owner": "me"})
        assert api.get_model(name).tags == {"team": "risk", "owner": "me"}
        with pytest.raises(EntityNotFound):
            api.get_model_version((name, 9))
        with pytest.raises(EntityNotFound):
            api.get_model_version((name, "@missing"))

    def test_searches_return_every_match_across_pages(self, api: BaseMlflowApi, name: str) -> None:
        exp = api.create_exp(name, tags={"kind": "paging"})
        made = {api.create_run(exp, f"r{i}", tags={"i": i}).id for i in range(self.search_count)}
        assert {r.id for r in api.find_runs(exp=exp)} == made
        assert len(list(api.find_runs({"tags.i": {"$lt": 10}}, exp=exp))) == 10
        assert [e.id for e in api.find_exps({"name": name})] == [exp.id]
        run = next(iter(made))
        api.create_model(name)
        api.register_model_version(name, run, "model")
        assert [m.name for m in api.find_models({"name": name})] == [name]
        assert [v.version for v in api.find_model_versions({"model.name": name})] == ["1"]

    def test_what_was_read_online_is_there_offline(self, api: BaseMlflowApi, name: str) -> None:
        exp = api.create_exp(name)
        run = api.create_run(exp, "train")
        api.log_params(run, {"lr": 0.1})
        api.create_model(name)
        api.register_model_version(name, run, "model", aliases=["prod"])
        found = [r.id for r in api.find_runs({"params.lr": 0.1}, exp=exp)]
        api.cache_model_version_meta((name, "@prod"))
        offline = api.in_offline_mode
        assert [r.id for r in offline.find_runs({"params.lr": 0.1}, exp=exp.id)] == found == [run.id]
        mv = offline.get_model_version((name, "@prod"))
        assert mv.version == "1" and mv.run is not None and mv.run.params == {"lr": 0.1} and mv.run.exp.id == exp.id
        with pytest.raises(CacheMiss):
            offline.get_model_version((name, 2))

    def test_artifacts(self, api: BaseMlflowApi, name: str, tmp_path: Path) -> None:
        run = api.create_exp(name).start_run("train")
        mv = api.log_model_version(name, run, _write_model, "model", aliases=["prod"])
        fresh = api.with_cache_dir(tmp_path / "fresh")
        path = fresh.get_model_artifact((name, "@prod"))
        assert (path / "weights.bin").read_bytes() == b"w" * 3000
        assert (path / "conf" / "params.json").read_text() == '{"layers": 2}'
        listed = [(f.path, f.size) for f in fresh.list_model_artifacts(mv)]
        assert listed == [("conf/params.json", 13), ("weights.bin", 3000)]
        assert fresh.in_offline_mode.get_model_artifact(mv) == path
        api.log_run_artifact(run, _write_hello, "notes.txt")
        assert fresh.get_run_artifact(run, "notes.txt").read_text() == "hello"
        api.delete_run_artifact(run, "notes.txt")
        assert not fresh.run_artifact_exists(run, "notes.txt")
        assert fresh.verify_cache() == []

    def test_documents_follow_the_contract(self, api: BaseMlflowApi, name: str) -> None:
        exp = api.create_exp(name)
        run = api.create_run(exp, "train")
        api.create_model(name)
        api.register_model_version(name, run, "model")
        docs: dict[str, Any] = {
            "exp": api._impl_fetch_exp(exp.id),
            "run": api._impl_fetch_run(run.id),
            "model": api._impl_fetch_model(name),
            "mv": api._impl_fetch_model_version(name, "1"),
        }
        assert docs["exp"]["id"] == exp.id and docs["exp"]["name"] == name
        assert docs["run"]["id"] == run.id and docs["run"]["exp_id"] == exp.id and docs["run"]["repo"]
        assert docs["model"]["name"] == name and isinstance(docs["model"].get("aliases", {}), dict)
        assert docs["mv"]["model_name"] == name and docs["mv"]["version"] == "1" and docs["mv"]["source"]
        for doc in docs.values():
            for key, value in doc.items():
                if key.endswith("_time") and value is not None:
                    assert isinstance(value, str) and ("+00:00" in value or value.endswith("Z")), (key, value)


def _write_hello(folder: Path) -> None:
    folder.write_text("hello")
