"""The child's side of `selftest`: in a process cut off from the network, resolve each item of the
job through the offline plugin and load it (or read it back), one JSON line per item."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from .errors import CacheMiss
from .plugins import get_api
from .selftest_env import Environments, NotLoadable

DETAIL_LIMIT = 1000
"""Characters of a failure's reason kept in its row."""


def check_items_here(job_path: str | None = None) -> None:
    """The child's side: check each item of the job (`sys.argv[1]`) with the offline plugin and
    print one JSON line per item on the original stdout; whatever else is printed (by MLflow or a
    model's code) goes to stderr."""
    results = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    job = json.loads(Path(job_path or sys.argv[1]).read_text())
    api = get_api("offline", cache_dir=job["cache_dir"])
    environments = Environments(Path(job["cache_dir"]), job["environments"]) if job.get("environments") else None
    done: dict[Path, tuple[str, bool, str]] = {}
    for item in job["items"]:
        ok, detail = _check_one(api, item, done, environments)
        row: dict[str, Any] = {"uri": item["uri"], "ok": ok, "detail": detail}
        if environments is not None and environments.said.get(item["uri"]):
            row["environment"] = environments.said[item["uri"]]
        results.write(json.dumps(row) + "\n")
        results.flush()


def _check_one(
    api: Any,
    item: dict[str, Any],
    done: dict[Path, tuple[str, bool, str]],
    environments: Environments | None = None,
) -> tuple[bool, str]:
    """Resolve one item offline and load (or read back) its files, in the environment built from
    the bundle's wheels when it has some; files already checked under another URI (an alias of a
    version) are not loaded twice."""
    ref = tuple(item["ref"]) if isinstance(item["ref"], list) else item["ref"]
    path: Path | None = None
    try:
        path = api.get_run_artifact(ref) if item["kind"] == "run" else api.get_model_artifact(ref)
        if path in done:
            first, ok, detail = done[path]
            if environments is not None and first in environments.said:
                environments.said[item["uri"]] = environments.said[first]
            return ok, f"{detail}; same files as {first}"
        if path.is_dir() and (path / "MLmodel").is_file():
            target = environments.target(item["uri"], path) if environments is not None else None
            ok, detail = True, _load_in(path, target)
        else:
            ok, detail = True, _read_back(path)
    except KeyboardInterrupt:
        raise
    except CacheMiss as exc:
        return False, f"the bundle does not hold {exc.kind} {exc.key!r}"
    except NotLoadable as exc:
        ok, detail = False, str(exc)
    except BaseException as exc:
        ok, detail = False, _why(exc, path)
    if path is not None:
        done[path] = (item["uri"], ok, detail)
    return ok, detail


def _load_in(path: Path, environment: tuple[Path, str] | None) -> str:
    """`_load`, with the environment built from the bundle's wheels (its folder, and how it was
    built) first on `sys.path` while the model loads."""
    if environment is None:
        return _load(path)
    where, said = str(environment[0]), environment[1]
    sys.path.insert(0, where)
    importlib.invalidate_caches()
    try:
        return f"{said}; {_load(path)}"
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(where)


def _load(path: Path) -> str:
    """Load an MLflow model as an air-gapped job would (python_function flavor), else read it."""
    try:
        installed = importlib.util.find_spec("mlflow") is not None
    except (ImportError, ValueError):  # blocked (sys.modules["mlflow"] = None) or broken
        installed = False
    if not installed:
        raise NotLoadable("mlflow is not installed, so this MLflow model cannot be loaded (pip install mlflow)")
    loading = importlib.import_module("mlcache.plugins.mlflow.loading")
    flavors = loading.model_flavors(path)
    if "python_function" not in flavors:
        return f"no python_function flavor (flavors: {', '.join(flavors) or 'none'}); {_read_back(path)}"
    loading.load_pyfunc(path)
    return f"loaded with mlflow.pyfunc.load_model (flavors: {', '.join(flavors)})"


def _read_back(path: Path) -> str:
    """Read every file of the entry to its end."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    size = 0
    for file in files:
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                size += len(chunk)
    return f"not an MLflow model; read back {len(files)} file(s), {size} bytes"


def _missing_file(exc: BaseException) -> OSError | None:
    """A file-not-found error in the exception's chain, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, FileNotFoundError) and current.filename:
            return current
        current = current.__cause__ or current.__context__
    return None


def _why(exc: BaseException, path: Path | None) -> str:
    """The failure in one line, paths shown relative to the model's files."""

    def short(text: str) -> str:
        if path is not None:
            text = text.replace(f"{path}{os.sep}", "").replace(str(path), ".")
        return one_line(text)

    text = short(f"{type(exc).__name__}: {exc}")
    missing = _missing_file(exc)
    if missing is not None:
        name = short(os.fsdecode(missing.filename))
        why = f"{type(exc).__name__}: {missing.strerror}" if missing is exc else text
        text = f"missing file {name} ({why})"
    return text[:DETAIL_LIMIT]


def one_line(text: str) -> str:
    """`text` with every run of whitespace (newlines included) made one space."""
    return " ".join(text.split())
