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

from ...base import BaseMlflowApi
from ...errors import MlcacheError

MODEL = "mlcache-demo-model"

_AIR_GAPPED = (
    "import json, socket, sys\n"
    "class _NoMlflow:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] == 'mlflow':\n"
    "            raise ImportError('mlflow is not available in this air-gapped job')\n"
    "sys.meta_path.insert(0, _NoMlflow())\n"
    "def _no_network(*args, **kwargs):\n"
    "    raise OSError('no network in this air-gapped job')\n"
    "socket.socket.connect = _no_network\n"
    "import mlcache\n"
    "api = mlcache.get_api('offline', cache_dir=sys.argv[1])\n"
    "path = api.get_model_artifact(sys.argv[2])\n"
    "w = json.loads((path / 'artifacts' / 'weights.json').read_text())\n"
    "print([w['w'] * x + w['b'] for x in (1.0, 2.0, 3.0)])\n"
)

_LOAD_OFFLINE = (
    "import mlflow, pandas, sys\n"
    "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
    "print(list(model.predict(pandas.DataFrame({'x': [1.0, 2.0, 3.0]}))))\n"
)


def _linear_model() -> Any:
    """A tiny pyfunc model (y = w * x + b) whose weights live in a file artifact."""
    from mlflow.pyfunc.model import PythonModel

    class Linear(PythonModel):
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


def _verify(path: Path) -> list[str]:
    from ...bundle import verify

    return verify(path)


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

        bundle = fresh.export_bundle(scratch / "release.tar.gz", model_versions=[(MODEL, "@champion")])
        problems = fresh.verify_cache() + _verify(bundle)
        if problems:
            raise MlcacheError(f"verification failed: {problems[:3]}")
        say(f"exported a bundle {bundle.name} ({bundle.stat().st_size} bytes) and verified it")
        target = scratch / "air-gapped-cache"
        report = fresh.with_cache_dir(target).import_bundle(bundle)
        say(
            f"imported it into {target}: {len(report.entries_added)} artifact entry, "
            f"{report.metadata_written} metadata documents"
        )
        gapped = subprocess.run(
            [sys.executable, "-c", _AIR_GAPPED, str(target), f"models:/{MODEL}@champion"],
            capture_output=True,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        )
        if gapped.returncode != 0:
            raise MlcacheError(f"air-gapped load failed: {gapped.stderr.strip().splitlines()[-1:]}")
        say(f"air-gapped process (no mlflow, no network) loaded it from the bundle: predicts {gapped.stdout.strip()}")
    return {"exp_id": exp.id, "run_id": run.id, "model": MODEL, "version": version}
