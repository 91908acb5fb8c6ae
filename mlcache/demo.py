"""`mlcache demo`: the whole loop on the embedded default (local sqlite MLflow store, no server).

Track a run, log a model the MLflow 3 way (`mlflow.pyfunc.log_model(..., registered_model_name=)`),
pull it into a fresh cache and load it offline, in another process, through `mlcache://`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import BaseMlflowApi
from .errors import MlcacheError

MODEL = "mlcache-demo-model"

_LOAD_OFFLINE = (
    "import mlflow, pandas, sys\n"
    "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
    "print(list(model.predict(pandas.DataFrame({'x': [1.0, 2.0, 3.0]}))))\n"
)


def _linear_model() -> Any:
    """A tiny pyfunc model (y = w * x + b) whose weights live in a file artifact."""
    import mlflow

    class Linear(mlflow.pyfunc.PythonModel):
        def load_context(self, context: Any) -> None:
            self.weights = json.loads(Path(context.artifacts["weights"]).read_text())

        def predict(self, context: Any, model_input: Any, params: Any = None) -> list[float]:
            return [self.weights["w"] * x + self.weights["b"] for x in model_input["x"]]

    return Linear()


def _log_model_the_mlflow3_way(api: BaseMlflowApi, run_id: str, scratch: Path) -> str:
    import mlflow

    weights = scratch / "weights.json"
    weights.write_text(json.dumps({"w": 2.0, "b": 0.5}))
    mlflow.set_tracking_uri(api.resolved_tracking_uri)  # type: ignore[attr-defined]
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=_linear_model(),
            artifacts={"weights": str(weights)},
            registered_model_name=MODEL,
            pip_requirements=["mlflow"],
        )
    return str(info.registered_model_version)


def run_demo(api: BaseMlflowApi, say: Callable[[str], None] = print) -> dict[str, str]:
    """The whole loop; returns the ids it created."""
    exp = api.get_or_create_exp("mlcache-demo", tags={"purpose": "demo"})
    say(f"experiment {exp.name!r} (id {exp.id})")
    with tempfile.TemporaryDirectory(prefix="mlcache-demo-") as scratch_dir:
        scratch = Path(scratch_dir)
        with exp.start_run("demo-run", tags={"data": {"split": "v2"}}) as run:
            run.log_params({"lr": 0.01, "layers": [64, 32]})
            for step, acc in enumerate((0.71, 0.83, 0.9)):
                run.log_metrics({"acc": acc}, step=step)
            version = _log_model_the_mlflow3_way(api, run.id, scratch)
        say(f"run {run.id} finished: params lr=0.01, layers=[64, 32]; metric acc=0.9")
        api.set_model_alias((MODEL, version), "champion")
        mv = api.get_model_version((MODEL, "@champion"))
        say(f"logged with mlflow.pyfunc.log_model: models:/{MODEL}/{version} (@champion) -> source {mv.source}")

        fresh = api.with_cache_dir(scratch / "fresh-cache")
        fresh.cache_model_version_meta((MODEL, "@champion"))
        path = fresh.get_model_artifact((MODEL, "@champion"))
        say(f"pulled it into a fresh cache: {path} ({sum(1 for p in path.rglob('*') if p.is_file())} files)")

        offline = fresh.in_offline_mode
        back = offline.get_model_version((MODEL, "@champion"))
        if back.version != version or back.run is None or back.run.params != {"lr": 0.01, "layers": [64, 32]}:
            raise MlcacheError("offline read-back differs from what was logged")
        uri = f"mlcache://models/{MODEL}@champion"
        env = {**os.environ, "MLCACHE_OFFLINE": "1", "MLCACHE_CACHE_DIR": str(fresh.cache_dir)}
        result = subprocess.run([sys.executable, "-c", _LOAD_OFFLINE, uri], capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise MlcacheError(f"offline load of {uri} failed: {result.stderr.strip().splitlines()[-1:]}")
        say(
            f"offline: models:/{MODEL}@champion -> version {back.version}, run {back.run.id} in experiment "
            f"{back.run.exp.name!r}, params {back.run.params}"
        )
        say(f"offline, another process: mlflow.pyfunc.load_model({uri!r}) predicts {result.stdout.strip()}")
    return {"exp_id": exp.id, "run_id": run.id, "model": MODEL, "version": version}
