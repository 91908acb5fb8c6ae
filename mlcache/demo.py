"""`mlcache demo`: the whole loop on the embedded default (local sqlite MLflow store, no server)."""

from __future__ import annotations

from collections.abc import Callable

from .base import BaseMlflowApi
from .errors import MlcacheError


def run_demo(api: BaseMlflowApi, say: Callable[[str], None] = print) -> dict[str, str]:
    """Track a run, register a model version, cache its metadata and read it back offline."""
    exp = api.get_or_create_exp("mlcache-demo", tags={"purpose": "demo"})
    say(f"experiment {exp.name!r} (id {exp.id})")
    with exp.start_run("demo-run", tags={"data": {"split": "v2"}}) as run:
        run.log_params({"lr": 0.01, "layers": [64, 32]})
        for step, acc in enumerate((0.71, 0.83, 0.9)):
            run.log_metrics({"acc": acc}, step=step)
    say(f"run {run.id} finished: params lr=0.01, layers=[64, 32]; metric acc=0.9")
    mv = api.register_model_version("mlcache-demo-model", run, "model", tags={"stage": "demo"}, aliases=["champion"])
    say(f"registered models:/{mv.model.name}/{mv.version} with alias @champion")
    api.cache_model_version_meta(mv)
    say(f"cached its metadata (model, run, experiment) in {api.cache_dir}")

    back = api.in_offline_mode.get_model_version((mv.model.name, "@champion"))
    if back.version != mv.version or back.run is None or back.run.params != {"lr": 0.01, "layers": [64, 32]}:
        raise MlcacheError("offline read-back differs from what was logged")
    say(
        f"offline read-back: models:/{back.model.name}@champion -> version {back.version}, "
        f"run {back.run.id} in experiment {back.run.exp.name!r}, params {back.run.params}, "
        f"metrics {back.run.metrics}"
    )
    return {"exp_id": exp.id, "run_id": run.id, "model": mv.model.name, "version": mv.version}
