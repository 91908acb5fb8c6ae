"""`selftest`: prove a bundle loads on its own, with no network and no tracking server.

The bundle is imported (and so verified) into an empty temporary cache; then ONE child Python
process, cut off from the network, resolves every model version, alias and run artifact the bundle
holds through the offline plugin and loads each MLflow model with `mlflow.pyfunc.load_model` (files
that are not an MLflow model are read back). Each item is reported as loaded or failed, and why.

Isolation: a fresh network namespace holding only loopback (`unshare --net --map-root-user`, where
the system allows unprivileged user namespaces), else sockets refused inside the child (its
`socket` module refuses every non-loopback connect, send and name lookup: best effort, as native
code can bypass it). `SelftestReport.network_isolation` says which one was used.

A bundle exported `--with-requirements` holds wheels (`requirements`): they are copied out of the
bundle (each checked against the digest the import read), and before a model is loaded the child
installs what its `requirements.txt` names from them alone (`pip install --no-index --find-links
<the wheels> --target <temporary folder>`, in a Python whose sockets refuse the network, with no
pip configuration) and puts that folder first on `sys.path` while it loads the model; the row says
"environment built from N wheels", or why pip could not.

Loading goes through the mlflow plugin (`plugins/mlflow/loading.py`), imported in the child only
when mlflow is installed; without it, MLflow models fail with a clear reason and plain files are
still read back.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .bundle_check import BUNDLE_FILE
from .bundle_reader import BundleTree, is_archive
from .bundle_trust import Evidence
from .errors import BundleError
from .isolation import checked_method, child_env, isolated_command, isolation_method
from .layout import CacheLayout
from .metadata_store import MetadataStore
from .plugins import get_api
from .selftest_child import one_line
from .selftest_env import wheel_environments


@dataclass(frozen=True)
class SelftestRow:
    """One item of the bundle: its URI, whether it loaded, and what happened (or why not)."""

    uri: str
    ok: bool
    detail: str
    environment: str | None = None
    """How the model's environment was built from the bundle's wheels, when it has some."""


@dataclass
class SelftestReport:
    """What `selftest` found: a row per model version, alias and run artifact the bundle holds,
    the aliases it could not check (they point to versions the bundle does not hold), and how the
    loading process was kept off the network."""

    bundle: Path
    network_isolation: str
    rows: list[SelftestRow] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def failed(self) -> list[SelftestRow]:
        return [row for row in self.rows if not row.ok]

    @property
    def ok(self) -> bool:
        """True when every item loaded."""
        return not self.failed


# ----------------------------------------------------------------- isolation


_CHILD_CODE = "from mlcache.selftest_child import check_items_here; check_items_here()"


# ----------------------------------------------------------------- the parent


def _bundle_document(path: Path) -> dict[str, Any]:
    """`bundle.json` of a bundle folder or archive; empty when it cannot be read (the import then
    says what is wrong with the bundle)."""
    raw: bytes | None = None
    with contextlib.suppress(OSError, tarfile.TarError, EOFError):
        if path.is_dir():
            raw = (path / BUNDLE_FILE).read_bytes()
        elif is_archive(path):
            with tarfile.open(path, "r|*") as tar:
                for member in tar:
                    if member.name.lstrip("./") == BUNDLE_FILE and member.isreg():
                        handle = tar.extractfile(member)
                        raw = handle.read() if handle is not None else None
                        break
    try:
        document = json.loads(raw) if raw is not None else {}
    except ValueError:
        document = {}
    return document if isinstance(document, dict) else {}


def _items(document: dict[str, Any], cache: Path) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """What the child checks (each with its URI, kind and reference) and the aliases it cannot:
    those pointing to versions the bundle does not hold."""
    contents = document.get("contents") or {}
    versions = [str(label) for label in contents.get("model_versions") or ()]
    items: list[dict[str, Any]] = [{"uri": label, "kind": "model", "ref": label} for label in versions]
    skipped: list[tuple[str, str]] = []
    for record in MetadataStore(CacheLayout(cache)).scan("alias", on_error=lambda exc: None):
        name, alias = record.key
        uri, version = f"models:/{name}@{alias}", str(record.data["version"])
        if f"models:/{name}/{version}" in versions:
            items.append({"uri": uri, "kind": "model", "ref": [name, f"@{alias}"]})
        else:
            skipped.append((uri, f"points to version {version}, which the bundle does not hold"))
    for run in contents.get("runs") or ():
        if str(run).startswith("runs:/") and str(run).removeprefix("runs:/").strip("/").count("/"):
            items.append({"uri": str(run), "kind": "run", "ref": str(run)})
    return items, skipped


def selftest(
    bundle: Path | str,
    *,
    base: Path | str | None = None,
    trusted_keys: Path | str | None = None,
    on_row: Callable[[SelftestRow], None] | None = None,
    timeout: float | None = None,
    method: str | None = None,
) -> SelftestReport:
    """Import `bundle` (folder or archive; after `base`, for a differential bundle) into an empty
    temporary cache, then load every model version, alias and run artifact it holds in one child
    process with no network and no tracking server. With `trusted_keys` (else the setting,
    `MLCACHE_TRUSTED_KEYS`) the import refuses what they did not sign. `on_row` sees each row as
    it is found; `timeout` bounds the child (seconds); `method` forces the isolation. A damaged
    bundle raises its `BundleError`. The temporary cache is removed afterwards."""
    source = Path(bundle).expanduser().absolute()
    if not source.exists():
        raise BundleError(f"no bundle at {bundle}")
    chosen = checked_method(method or isolation_method())
    work = Path(tempfile.mkdtemp(prefix="mlcache-selftest-"))
    try:
        cache = work / "cache"
        keys = {"trusted_keys": Path(trusted_keys)} if trusted_keys is not None else {}
        document, tree = _import(get_api("offline", cache_dir=cache, **keys), source, base)
        items, skipped = _items(document, cache)
        report = SelftestReport(source, chosen, skipped=skipped)
        if items:
            job = work / "job.json"
            task: dict[str, Any] = {"cache_dir": str(cache), "items": items}
            environments = wheel_environments(document, tree, source, work)
            if environments is not None:
                task["environments"] = environments
            job.write_text(json.dumps(task))
            with contextlib.closing(_run_child(work, cache, job, items, chosen, timeout)) as rows:
                for row in rows:
                    report.rows.append(row)
                    if on_row is not None:
                        on_row(row)
        return report
    finally:
        _remove(work)


def _import(api: Any, source: Path, base: Path | str | None) -> tuple[dict[str, Any], BundleTree | None]:
    """Import the bundle (after its base) into the api's cache; its `bundle.json` as the import
    checked it, and what the import read of it."""
    document = _bundle_document(source)
    over = document.get("base")
    if base is None and isinstance(over, dict):
        said = f"{source.name} is a differential bundle over {over.get('name')}: give that bundle"
        error = BundleError(f"{said} as base=")
        error.cli_text = f"{said} with --base"
        raise error
    if base is not None:
        api.import_bundle(base)
    evidence = Evidence("import", str(source))
    api.import_bundle(source, evidence=evidence)
    raw = evidence.tree.documents.get(BUNDLE_FILE) if evidence.tree is not None else None
    with contextlib.suppress(ValueError):
        checked = json.loads(raw) if raw is not None else None
        document = checked if isinstance(checked, dict) else document
    return document, evidence.tree


def _remove(path: Path) -> None:
    """Remove the temporary tree, folders a model load left read-only included."""
    try:
        shutil.rmtree(path)
    except OSError:
        for folder, _dirs, _files in os.walk(path):
            with contextlib.suppress(OSError):
                os.chmod(folder, 0o700)
        shutil.rmtree(path, ignore_errors=True)


def _run_child(
    work: Path, cache: Path, job: Path, items: list[dict[str, Any]], method: str, timeout: float | None
) -> Generator[SelftestRow, None, None]:
    """The child's rows as it reports them; an item it never reported (it crashed or ran out of
    time) fails with what it left on stderr."""
    env = child_env({"MLCACHE_OFFLINE": "1", "MLCACHE_CACHE_DIR": str(cache)})
    argv = isolated_command(_CHILD_CODE, [str(job)], method)
    expired = threading.Event()
    with (work / "child.stderr").open("w+b") as stderr:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            cwd=work,
            start_new_session=True,
        )
        timer = threading.Timer(timeout, _kill, (proc, expired)) if timeout is not None else None
        if timer is not None:
            timer.start()
        seen: set[str] = set()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                row = _parse_row(line)
                if row is not None and row.uri not in seen:
                    seen.add(row.uri)
                    yield row
            code = proc.wait()
        finally:
            if timer is not None:
                timer.cancel()
            if proc.poll() is None:
                _kill(proc, None)
                proc.wait()
        why = _ended(code, expired.is_set(), timeout, stderr)
        for item in items:
            if item["uri"] not in seen:
                yield SelftestRow(item["uri"], False, why)


def _kill(proc: subprocess.Popen[bytes], expired: threading.Event | None) -> None:
    """End the child and whatever it started (its own session), by its process group."""
    if proc.poll() is not None:
        return
    if expired is not None:
        expired.set()
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)


def _parse_row(line: bytes) -> SelftestRow | None:
    try:
        found = json.loads(line)
        environment = found.get("environment")
        return SelftestRow(
            str(found["uri"]), bool(found["ok"]), str(found["detail"]), str(environment) if environment else None
        )
    except (ValueError, KeyError, TypeError):
        return None


def _ended(code: int, expired: bool, timeout: float | None, stderr: IO[bytes]) -> str:
    """Why the child left items unchecked, in one line."""
    if expired:
        return f"not checked: the loading process ran out of time ({timeout:g} s)"
    stderr.seek(0)
    lines = [line for line in stderr.read().decode(errors="replace").splitlines() if line.strip()]
    last = f": {one_line(lines[-1])}" if lines else ""
    return f"not checked: the loading process ended (exit code {code}) before reaching it{last}"
