"""Pip requirements for the far side: the wheels an MLflow model's `requirements.txt` names, in its bundle.

`export_bundle(..., with_requirements=True)` (`mlcache export --with-requirements`) finds every
folder of the selection holding an `MLmodel` and a `requirements.txt` and runs
`python -m pip download --only-binary=:all: -r requirements.txt` once for each distinct
requirements file (with its `constraints.txt`), in that folder and with this machine's pip
configuration (its index and find-links apply). The wheels, dependencies included, land in the
bundle's `wheels/` folder (one level, `.whl` files only), listed in `bundle.json` like every other
file and so signed with it. They are wheels for the platform of the exporting machine, which
`bundle.json` says, with the wheels each model folder's requirements resolved to:

    "requirements": {
      "platform": {"python": "3.11", "implementation": "cp", "abi": "cp311", "platform": "linux-x86_64"},
      "models": {"artifacts/runs/<run_id>/model": ["wheels/six-1.16.0-py2.py3-none-any.whl"]}
    }

Why: an air-gapped site has no package index, so a model whose code imports a package its
serving image lacks cannot be loaded there; with the wheels in the bundle the site builds the
model's environment with `pip install --no-index`. Import ignores the wheels (a cache holds no
environments, and checks them like every file); `selftest` installs each model's into a temporary
folder with `pip install --no-index --find-links <the bundle's wheels> --target <folder>`, in its
process with no network and with no pip configuration, and loads the model with that folder first
on `sys.path`, so a bundle whose wheels do not make the environment fails before it is shipped.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from .artifact_store import ArtifactStore
from .errors import BundleError, CorruptMetadata
from .isolation import SOCKETS_REFUSED, isolated_command
from .layout import CacheLayout
from .progress import human_size
from .staging import remove_tree

WHEELS = "wheels"
"""The bundle's folder of wheels."""
REQUIREMENTS_FILE = "requirements.txt"
_MODEL_FILE = "MLmodel"
_CONSTRAINTS_FILE = "constraints.txt"
_IMPLEMENTATIONS = {"cpython": "cp", "pypy": "pp", "ironpython": "ip", "jython": "jy"}

log = logging.getLogger("mlcache.pulls.requirements")


class RequirementsRecord(BaseModel):
    """`requirements` in `bundle.json`: the platform the wheels are for, and each model folder's
    path in the bundle with the wheels (`wheels/<file>.whl`) its requirements resolved to."""

    model_config = ConfigDict(extra="allow")

    platform: dict[str, str]
    models: dict[str, list[str]] = Field(default_factory=dict)


def this_platform() -> dict[str, str]:
    """What wheels pip picks on this machine: Python version, implementation, ABI and platform
    (`sysconfig.get_platform()`)."""
    short = _IMPLEMENTATIONS.get(sys.implementation.name, sys.implementation.name)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    abi = f"{short}{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return {"python": version, "implementation": short, "abi": abi, "platform": sysconfig.get_platform()}


def wheel_problem(rel: str) -> str | None:
    """Why the bundle member `rel` (under `wheels/`) has no place there, or None for a wheel."""
    parts = rel.split("/")
    if len(parts) != 2 or parts[0] != WHEELS:
        return "not a wheel of this layout (wheels/<name>.whl, one level)"
    name = parts[1]
    if not name.endswith(".whl") or name.startswith(".") or len(name) <= len(".whl"):
        return "not a wheel (only .whl files belong under wheels/)"
    return None


@dataclass(frozen=True)
class ModelFolder:
    """A folder of the bundle holding an MLflow model with a `requirements.txt`."""

    rel: str
    """Its path in the bundle, as `bundle.json`'s `requirements.models` keys it."""
    label: str
    """The entry it belongs to, to name it in messages."""
    path: Path


def model_folders(folder: Path) -> list[ModelFolder]:
    """Every folder of the bundle folder's entries holding an `MLmodel` and a `requirements.txt`
    (the entry itself or a folder in it), each once, whose files are at their entry's path."""
    store = ArtifactStore(CacheLayout(folder))
    found: dict[str, ModelFolder] = {}
    for key, manifest in store.entries():
        if key is None or isinstance(manifest, CorruptMetadata):
            raise BundleError(f"export produced a damaged manifest: {manifest}")
        if not manifest.is_dir:
            continue
        names = {item.path for item in manifest.files}
        base = store.entry_path(key)
        for name in sorted(names):
            parent, _, last = name.rpartition("/")
            if last != _MODEL_FILE or f"{parent}/{REQUIREMENTS_FILE}".lstrip("/") not in names:
                continue
            path = base.joinpath(*parent.split("/")) if parent else base
            rel = path.relative_to(folder).as_posix()
            if rel not in found and (path / REQUIREMENTS_FILE).is_file():
                found[rel] = ModelFolder(rel, key.label, path)
    return [found[rel] for rel in sorted(found)]


def _requirements_digest(path: Path) -> str:
    """What makes two model folders' requirements the same pip call: `requirements.txt` and
    `constraints.txt` (which MLflow's `requirements.txt` names as `-c constraints.txt`)."""
    digest = hashlib.sha256((path / REQUIREMENTS_FILE).read_bytes())
    constraints = path / _CONSTRAINTS_FILE
    if constraints.is_file():
        digest.update(b"\0" + constraints.read_bytes())
    return digest.hexdigest()


def pip_last_line(output: str) -> str:
    """pip's last error line (`ERROR: ...`), else its last line, in one line."""
    lines = [" ".join(line.split()) for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or lines or ["pip said nothing"])[-1]


def download_wheels(folder: Path) -> RequirementsRecord:
    """Download into `folder/wheels` the wheels every model folder's requirements name (one pip
    call per distinct requirements file) and return what `bundle.json` records of them. A pip
    failure is a `BundleError` naming the model and pip's last error line. Call it while the
    entries' files are at their paths in `folder` (before a differential bundle drops them)."""
    platform = this_platform()
    record = RequirementsRecord(platform=platform)
    found = model_folders(folder)
    if not found:
        log.info("--with-requirements: no model of the selection has a requirements.txt; no wheels")
        return record
    groups: dict[str, list[ModelFolder]] = {}
    for model in found:
        groups.setdefault(_requirements_digest(model.path), []).append(model)
    wheels = folder / WHEELS
    scratch = folder / "tmp" / "wheels"
    try:
        for n, models in enumerate(groups.values()):
            first = models[0]
            log.info(
                f"{first.label}: downloading the wheels its {REQUIREMENTS_FILE} names "
                f"(pip download, for {platform['abi']} {platform['platform']})"
            )
            into = scratch / str(n)
            into.mkdir(parents=True)
            _pip_download(first, into)
            names = _keep_wheels(into, wheels, first)
            size = sum((wheels / name).stat().st_size for name in names)
            log.info(f"{first.label}: {len(names)} wheel(s), {human_size(size)}")
            for model in models:
                record.models[model.rel] = [f"{WHEELS}/{name}" for name in names]
    finally:
        remove_tree(folder / "tmp")
    return record


def _pip_download(model: ModelFolder, into: Path) -> None:
    argv = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar=off",
        "-r",
        str(model.path / REQUIREMENTS_FILE),
        "-d",
        str(into),
    ]
    try:
        done = subprocess.run(
            argv, cwd=model.path, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace"
        )
    except OSError as exc:
        raise BundleError(f"--with-requirements: cannot run pip for {model.label} ({exc})") from None
    if done.returncode != 0:
        raise BundleError(
            f"--with-requirements: pip could not download the requirements of {model.label} "
            f"({model.rel}/{REQUIREMENTS_FILE}): {pip_last_line(done.stderr or done.stdout)}"
        )


def _keep_wheels(into: Path, wheels: Path, model: ModelFolder) -> list[str]:
    """Move what one pip call downloaded into the bundle's `wheels/`; a wheel already there
    (another model's) is kept once. Anything but a wheel is refused."""
    wheels.mkdir(exist_ok=True)
    names = []
    for path in sorted(into.iterdir()):
        problem = wheel_problem(f"{WHEELS}/{path.name}") if path.is_file() and not path.is_symlink() else "not a file"
        if problem is not None:
            raise BundleError(
                f"--with-requirements: pip fetched {path.name} for {model.label}, which is {problem.split(' (')[0]}: "
                "only wheels can be installed with no index (is a requirement a source archive or a folder?)"
            )
        kept = wheels / path.name
        if kept.exists():
            if _file_digest(kept) != _file_digest(path):
                raise BundleError(f"--with-requirements: two different wheels are named {path.name}")
            path.unlink()
        else:
            os.replace(path, kept)
        names.append(path.name)
    return names


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------- the far side


def pip_env() -> dict[str, str]:
    """This environment without any pip setting (no `PIP_*`, no pip configuration file): an
    install from the bundle's wheels sees no other index or find-links."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def install_wheels(model: Path, wheels: Path, target: Path, timeout: float | None = None) -> str | None:
    """Install what `model/requirements.txt` names from `wheels` alone into `target`
    (`pip install --no-index --find-links wheels --target target`), in a Python whose sockets
    refuse every non-loopback address and with no pip configuration; None when it worked, else
    pip's last error line."""
    args = [
        "install",
        "--no-index",
        "--only-binary=:all:",
        "--find-links",
        str(wheels),
        "--target",
        str(target),
        "--no-cache-dir",
        "--progress-bar=off",
        "-r",
        str(model / REQUIREMENTS_FILE),
    ]
    code = "import runpy\nrunpy.run_module('pip', run_name='__main__', alter_sys=True)\n"
    argv = isolated_command(code, args, SOCKETS_REFUSED)
    try:
        done = subprocess.run(
            argv,
            cwd=model,
            env=pip_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return f"pip install ran out of time ({timeout:g} s)"
    except OSError as exc:
        return f"cannot run pip ({exc})"
    return None if done.returncode == 0 else pip_last_line(done.stderr or done.stdout)
