"""`mlcache demo`: the whole loop on a local sqlite MLflow store of its own (no server).

Track a run, log a model the MLflow 3 way (`mlflow.pyfunc.log_model(..., registered_model_name=)`),
pull it into a fresh cache and load it offline, in another process, through `mlcache://`; export a
bundle, import it into another cache and load the model in a process with neither mlflow nor network.

Everything the demo creates lives in one folder, kept afterwards for a look and removed with it
(unless a tracking URI or a cache dir was given: then those are used): the MLflow store (`store/`),
the cache (`cache/`), the bundle (`release.tar.gz`) and the air-gapped cache (`air-gapped-cache/`).
MLflow's warnings and log lines are silenced while it runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ...base import BaseMlflowApi
from ...errors import MlcacheError
from .api import MlflowApi

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

_QUIET_LOGGERS = ("mlflow", "alembic")
"""MLflow's loggers (and its store migrations'), raised to ERROR while the demo runs."""


def _linear_model() -> Any:
    """A tiny pyfunc model (y = w * x + b) whose weights live in a file artifact."""
    from mlflow.pyfunc.model import PythonModel

    class Linear(PythonModel):
        def load_context(self, context: Any) -> None:
            self.weights = json.loads(Path(context.artifacts["weights"]).read_text())

        def predict(self, context: Any, model_input: Any, params: Any = None) -> list[float]:
            return [self.weights["w"] * x + self.weights["b"] for x in model_input["x"]]

    return Linear()


@contextlib.contextmanager
def _fluent_uris(tracking_uri: str, registry_uri: str | None) -> Iterator[None]:
    """MLflow's fluent API (`mlflow.start_run`, `log_model`) on these URIs, then back to what was
    set before: mlflow.set_tracking_uri also sets `MLFLOW_TRACKING_URI` for the whole process."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved_env = {name: os.environ.get(name) for name in names}
    saved = (getattr(tracking_utils, "_tracking_uri", None), getattr(registry_utils, "_registry_uri", None))
    mlflow.set_tracking_uri(tracking_uri)
    if registry_uri:
        mlflow.set_registry_uri(registry_uri)
    try:
        yield
    finally:
        # None (nothing set before) is what both take back at run time, though not in their hints
        mlflow.set_tracking_uri(saved[0])  # type: ignore[arg-type]
        mlflow.set_registry_uri(saved[1])  # type: ignore[arg-type]
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _log_model_the_mlflow3_way(api: MlflowApi, run_id: str, scratch: Path) -> str:
    import mlflow

    weights = scratch / "weights.json"
    weights.write_text(json.dumps({"w": 2.0, "b": 0.5}))
    with _fluent_uris(api.resolved_tracking_uri, api.registry_uri), mlflow.start_run(run_id=run_id):
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


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """No Python warnings, and none of MLflow's log lines and notices (`Successfully registered
    model ...`, printed on MLflow's event stream), until the block ends.

    MLflow resets warning filters inside some calls (`log_model` shows its UserWarnings "once"), so
    warnings are recorded and dropped rather than filtered; and it turns its event stream back on
    when its own muting blocks end, so it is muted through its own reference-counted switch."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings(record=True))
        warnings.simplefilter("ignore")
        stack.enter_context(_mlflow_events_muted())  # imports mlflow, which sets up its loggers: first
        for logger in [logging.getLogger(name) for name in _QUIET_LOGGERS]:
            stack.callback(logger.setLevel, logger.level)
            logger.setLevel(logging.ERROR)
        yield


def _mlflow_events_muted() -> contextlib.AbstractContextManager[Any]:
    """MLflow's own switch for its event stream and warnings (nothing without mlflow: the api then
    says how to install it)."""
    try:
        from mlflow.utils.autologging_utils import MlflowEventsAndWarningsBehaviorGlobally
    except ImportError:
        return contextlib.nullcontext()
    return MlflowEventsAndWarningsBehaviorGlobally(
        disable_event_logs=True, disable_warnings=True, reroute_warnings=False
    )


def _python(code: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `code` in another Python process, its warnings off."""
    return subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code, *args],
        capture_output=True,
        text=True,
        env={**env, "PYTHONWARNINGS": "ignore"},
    )


def _last_line(stderr: str) -> list[str]:
    return stderr.strip().splitlines()[-1:]


def run_demo_in(
    workdir: Path | None,
    tracking_uri: str | None,
    cache_dir: Path | None,
    timeout: float | None,
    say: Callable[[str], None],
) -> Path:
    """The whole loop in `workdir` (None: a new folder in the temp dir), which is kept and returned.

    The MLflow store is `sqlite:///<workdir>/store/mlflow.db` with its artifacts in
    `<workdir>/store/artifacts`, unless `tracking_uri` names another (then `timeout` is the
    deadline of each call to it); the cache is `<workdir>/cache` unless `cache_dir` is given.
    The bundle and the cache it is imported into are `<workdir>/release.tar.gz` and
    `<workdir>/air-gapped-cache`. A folder the demo made itself is removed if the demo fails."""
    made = workdir is None
    work = Path(tempfile.mkdtemp(prefix="mlcache-demo-")) if workdir is None else workdir.expanduser().absolute()
    work.mkdir(parents=True, exist_ok=True)
    try:
        with _quiet_mlflow():
            _run(work, tracking_uri, cache_dir, timeout, say)
    except BaseException:
        if made:
            shutil.rmtree(work, ignore_errors=True)
        raise
    say(f"demo files kept in {work} (rm -rf it when done)")
    return work


def _run(
    work: Path, tracking_uri: str | None, cache_dir: Path | None, timeout: float | None, say: Callable[[str], None]
) -> None:
    store = work / "store"
    own_store = not tracking_uri
    uri = tracking_uri or f"sqlite:///{store / 'mlflow.db'}"
    if own_store:
        store.mkdir(parents=True, exist_ok=True)
    conf: dict[str, Any] = {"timeout": timeout} if timeout is not None else {}
    api = MlflowApi(
        tracking_uri=uri,
        registry_uri=uri if own_store else None,  # not MLFLOW_REGISTRY_URI's registry
        embedded_dir=store,
        cache_dir=cache_dir.expanduser().absolute() if cache_dir is not None else work / "cache",
        offline_mode=False,
        **conf,
    )
    artifacts = (store / "artifacts").as_uri() if own_store else None
    exp = api.get_or_create_exp("mlcache-demo", tags={"purpose": "demo"}, artifact_location=artifacts)
    say(f"experiment {exp.name!r} (id {exp.id})")
    scratch = Path(tempfile.mkdtemp(prefix="scratch-", dir=work))
    with exp.start_run("demo-run", tags={"data": {"split": "v2"}}) as run:
        run.log_params({"lr": 0.01, "layers": [64, 32]})
        for step, acc in enumerate((0.71, 0.83, 0.9)):
            run.log_metrics({"acc": acc}, step=step)
        version = _log_model_the_mlflow3_way(api, run.id, scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    say(f"run {run.id} finished: params lr=0.01, layers=[64, 32]; metric acc=0.9")
    api.set_model_alias((MODEL, version), "champion")
    mv = api.get_model_version((MODEL, "@champion"))
    say(f"logged with mlflow.pyfunc.log_model: models:/{MODEL}/{version} (@champion) -> source {mv.source}")

    api.cache_model_version_meta((MODEL, "@champion"))
    path = api.get_model_artifact((MODEL, "@champion"))
    files = sum(1 for p in path.rglob("*") if p.is_file())
    say(f"pulled it into {'the' if cache_dir is not None else 'a fresh'} cache: {path} ({files} files)")

    offline: BaseMlflowApi = api.in_offline_mode
    back = offline.get_model_version((MODEL, "@champion"))
    if back.version != version or back.run is None or back.run.params != {"lr": 0.01, "layers": [64, 32]}:
        raise MlcacheError("offline read-back differs from what was logged")
    cached = f"mlcache://models/{MODEL}@champion"
    env = {**os.environ, "MLCACHE_OFFLINE": "1", "MLCACHE_CACHE_DIR": str(api.cache_dir)}
    result = _python(_LOAD_OFFLINE, cached, env=env)
    if result.returncode != 0:
        raise MlcacheError(f"offline load of {cached} failed: {_last_line(result.stderr)}")
    say(
        f"offline: models:/{MODEL}@champion -> version {back.version}, run {back.run.id} in experiment "
        f"{back.run.exp.name!r}, params {back.run.params}"
    )
    say(f"offline, another process: mlflow.pyfunc.load_model({cached!r}) predicts {result.stdout.strip()}")

    bundle = api.export_bundle(work / "release.tar.gz", model_versions=[(MODEL, "@champion")])
    problems = api.verify_cache() + _verify(bundle)
    if problems:
        raise MlcacheError(f"verification failed: {problems[:3]}")
    say(f"exported a bundle {bundle.name} ({bundle.stat().st_size} bytes) and verified it")
    target = work / "air-gapped-cache"
    report = api.with_cache_dir(target).import_bundle(bundle)
    say(
        f"imported it into {target}: {len(report.entries_added)} artifact entry, "
        f"{report.metadata_written} metadata documents"
    )
    no_mlflow = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    gapped = _python(_AIR_GAPPED, str(target), f"models:/{MODEL}@champion", env=no_mlflow)
    if gapped.returncode != 0:
        raise MlcacheError(f"air-gapped load failed: {_last_line(gapped.stderr)}")
    say(f"air-gapped process (no mlflow, no network) loaded it from the bundle: predicts {gapped.stdout.strip()}")
