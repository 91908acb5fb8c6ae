"""`mlcache demo`: the whole loop on the embedded default (local sqlite MLflow store, no server)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from .base import BaseMlflowApi
from .errors import MlcacheError

MODEL = "mlcache-demo-model"


def _dump_model(path: Path) -> None:
    """A tiny 'model': a folder with weights and a config, as a training job would write it."""
    path.mkdir()
    (path / "weights.json").write_text(json.dumps({"w": [0.25, -1.5, 3.0], "b": 0.1}))
    (path / "config.json").write_text(json.dumps({"kind": "linear", "features": 3}))


def _load_model(path: Path) -> Callable[[list[float]], float]:
    weights = json.loads((path / "weights.json").read_text())
    return lambda x: sum(w * v for w, v in zip(weights["w"], x, strict=True)) + weights["b"]


def run_demo(api: BaseMlflowApi, say: Callable[[str], None] = print) -> dict[str, str]:
    """Track a run, log and register a model, pull it into a fresh cache and load it offline."""
    exp = api.get_or_create_exp("mlcache-demo", tags={"purpose": "demo"})
    say(f"experiment {exp.name!r} (id {exp.id})")
    with exp.start_run("demo-run", tags={"data": {"split": "v2"}}) as run:
        run.log_params({"lr": 0.01, "layers": [64, 32]})
        for step, acc in enumerate((0.71, 0.83, 0.9)):
            run.log_metrics({"acc": acc}, step=step)
        mv = api.log_model_version(MODEL, run, _dump_model, "model", tags={"stage": "demo"}, aliases=["champion"])
    say(f"run {run.id} finished: params lr=0.01, layers=[64, 32]; metric acc=0.9")
    say(f"logged and registered models:/{mv.model.name}/{mv.version} (alias @champion) from {mv.source}")

    with tempfile.TemporaryDirectory(prefix="mlcache-demo-") as scratch:
        fresh = api.with_cache_dir(Path(scratch) / "cache")
        path = fresh.get_model_artifact((MODEL, "@champion"))
        say(f"pulled it into a fresh cache: {path} ({sum(1 for p in path.rglob('*') if p.is_file())} files)")

        offline = fresh.in_offline_mode
        back = offline.get_model_version((MODEL, "@champion"))
        if back.version != mv.version or back.run is None or back.run.params != {"lr": 0.01, "layers": [64, 32]}:
            raise MlcacheError("offline read-back differs from what was logged")
        model = offline.load_model_artifact((MODEL, "@champion"), _load_model)
        say(
            f"offline: models:/{MODEL}@champion -> version {back.version}, run {back.run.id} in experiment "
            f"{back.run.exp.name!r}, params {back.run.params}; loaded model predicts {model([1.0, 1.0, 1.0]):.2f}"
        )
    return {"exp_id": exp.id, "run_id": run.id, "model": mv.model.name, "version": mv.version}
