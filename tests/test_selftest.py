"""`mlcache selftest`: a bundle's models load in a child with no network, or the missing file is named.

Bundles are made on the in-memory plugin from a real MLflow pyfunc model; the self-test imports them
into an empty temporary cache and loads them with `mlflow.pyfunc.load_model` in a child process
that has no network (checked here with real sockets)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mlcache import get_api
from mlcache.errors import BundleError
from mlcache.isolation import SOCKETS_REFUSED, isolation_method, run_isolated
from mlcache.selftest import selftest
from mlcache.testing import InMemoryPlugin, MemoryBackend

mlflow = pytest.importorskip("mlflow")

CLI = [sys.executable, "-c", "from mlcache.cli import run; run()"]


def _doubler() -> Any:
    """A tiny pyfunc model; its class is local, so cloudpickle stores it by value and the child
    process unpickles it without importing this test module."""
    from mlflow.pyfunc import PythonModel

    class Doubler(PythonModel):
        def predict(self, context: Any, model_input: Any, params: Any = None) -> list[float]:
            return [2 * x for x in model_input["x"]]

    return Doubler()


def _save_model(path: Path) -> None:
    with warnings.catch_warnings(record=True):  # MLflow's advice on type hints and pickling, dropped
        warnings.simplefilter("always")
        mlflow.pyfunc.save_model(path=str(path), python_model=_doubler(), pip_requirements=["mlflow"])


def _save_model_without_pickle(path: Path) -> None:
    """A model version logged without the file `load_model` needs (its bundle is consistent)."""
    _save_model(path)
    (path / "python_model.pkl").unlink()


def _save_vocab(path: Path) -> None:
    path.mkdir()
    (path / "vocab.txt").write_text("a\nb\nc\n")


@dataclass
class Bundles:
    complete: Path
    lacking: Path


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    """A complete bundle (a pyfunc model, an alias, a plain-files model) and an archive whose only
    model lacks `python_model.pkl`."""
    root = tmp_path_factory.mktemp("selftest")
    api = InMemoryPlugin(cache_dir=root / "cache", backend=MemoryBackend(root / "server"))
    run = api.create_exp("selftest").start_run("train")
    good = api.log_model_version("fraud", run, _save_model, "model", aliases=["champion"])
    api.log_model_version("fraud", run, _save_model_without_pickle, "broken-model", aliases=["broken"])
    vocab = api.log_model_version("vocab", run, _save_vocab, "vocab")
    complete = api.export_bundle(root / "complete", model_versions=[good, vocab])
    lacking = api.export_bundle(root / "lacking.tar.gz", model_versions=[("fraud", "2")])
    return Bundles(complete, lacking)


def _cli(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own, its temporary files in `tmp`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLCACHE_", "MLFLOW_"))}
    # a tracking server that does not exist: the self-test must never need it
    env.update(TMPDIR=str(tmp), MLFLOW_TRACKING_URI="http://10.255.255.1:5000")
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=280, env=env)


def test_a_complete_bundle_loads_every_model_and_alias_with_no_network(bundles: Bundles, tmp_path: Path) -> None:
    result = _cli("selftest", str(bundles.complete), "--json", tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    rows = {line["uri"]: line for line in lines if "ok" in line and "uri" in line}
    assert set(rows) == {"models:/fraud/1", "models:/fraud@champion", "models:/vocab/1"}
    assert all(row["ok"] for row in rows.values()), rows
    assert rows["models:/fraud/1"]["detail"].startswith("loaded with mlflow.pyfunc.load_model")
    assert rows["models:/fraud@champion"]["detail"] == rows["models:/fraud/1"]["detail"] + (
        "; same files as models:/fraud/1"
    )
    assert "read back 1 file(s)" in rows["models:/vocab/1"]["detail"]
    skipped = [line for line in lines if line.get("skipped")]
    assert [line["uri"] for line in skipped] == ["models:/fraud@broken"]
    total = lines[-1]["total"]
    assert total["ok"] is True and total["loaded"] == 3 and total["failed"] == 0
    assert total["network_isolation"] == isolation_method()
    assert f"3 of 3 loaded, 0 failed (no network: {isolation_method()})" in result.stderr
    assert list(tmp_path.iterdir()) == [], "the temporary cache was left behind"


def test_a_bundle_lacking_a_file_load_model_needs_fails_naming_it(bundles: Bundles, tmp_path: Path) -> None:
    result = _cli("selftest", str(bundles.lacking), tmp=tmp_path)
    assert result.returncode == 1, result.stderr
    why = "missing file python_model.pkl (FileNotFoundError: No such file or directory)"
    assert result.stdout.splitlines() == [
        f"FAIL models:/fraud/2: {why}",
        f"FAIL models:/fraud@broken: {why}; same files as models:/fraud/2",
    ]
    assert "skipped models:/fraud@champion: points to version 1, which the bundle does not hold" in result.stderr
    assert "0 of 2 loaded, 2 failed" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_bundle_is_its_bundle_error_and_leaves_nothing(
    bundles: Bundles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    import tempfile

    damaged = tmp_path / "damaged"
    shutil.copytree(bundles.complete, damaged)
    document = damaged / "metadata" / "model" / "fraud.json"
    document.chmod(0o644)
    document.write_text(document.read_text() + " ")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with pytest.raises(BundleError, match=r"is damaged, nothing imported: metadata/model/fraud\.json"):
        selftest(damaged)
    assert list(scratch.iterdir()) == []
    result = _cli("selftest", str(damaged), tmp=scratch)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("error: bundle ") and result.stderr.count("\n") == 1


def test_without_mlflow_an_mlflow_model_fails_saying_so_and_other_files_are_read_back(
    bundles: Bundles, tmp_path: Path
) -> None:
    """The child's side on its own, in a process where mlflow cannot be imported."""
    cache = tmp_path / "cache"
    get_api("offline", cache_dir=cache).import_bundle(bundles.complete)
    labels = ["models:/fraud/1", "models:/vocab/1"]
    job = tmp_path / "job.json"
    items = [{"uri": label, "kind": "model", "ref": label} for label in labels]
    job.write_text(json.dumps({"cache_dir": str(cache), "items": items}))
    code = (
        "import sys\nsys.modules['mlflow'] = None\n"
        "from mlcache.selftest_child import check_items_here\ncheck_items_here()"
    )
    result = run_isolated(code, [str(job)], timeout=120)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {
            "uri": "models:/fraud/1",
            "ok": False,
            "detail": "mlflow is not installed, so this MLflow model cannot be loaded (pip install mlflow)",
        },
        {"uri": "models:/vocab/1", "ok": True, "detail": "not an MLflow model; read back 1 file(s), 6 bytes"},
    ]


_PROBE = r"""
import json, os, socket, time
out = {"tracking_uri": os.environ.get("MLFLOW_TRACKING_URI")}
for host in ("192.0.2.1", "10.255.255.1"):
    start = time.monotonic()
    try:
        socket.create_connection((host, 80), timeout=2).close()
        out[host] = "connected"
    except OSError as exc:
        out[host] = f"{type(exc).__name__}: {exc}"
    out[host + " seconds"] = time.monotonic() - start
try:
    socket.getaddrinfo("example.com", 443)
    out["dns"] = "resolved"
except OSError as exc:
    out["dns"] = type(exc).__name__
with socket.create_server(("127.0.0.1", 0)) as server:
    client = socket.create_connection(server.getsockname(), timeout=2)
    conn, _ = server.accept()
    client.sendall(b"ping")
    out["loopback"] = conn.recv(4).decode()
    conn.close()
    client.close()
left, right = socket.socketpair()
left.sendall(b"pair")
out["pair"] = right.recv(4).decode()
print(json.dumps(out))
"""


@pytest.mark.parametrize("method", ["default", SOCKETS_REFUSED])
def test_the_child_really_has_no_network_but_loopback_works(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections to non-loopback addresses fail at once (a real attempt would wait out the
    2 s timeout), name lookups fail, loopback and socket pairs work."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://10.255.255.1:5000")
    chosen = isolation_method() if method == "default" else method
    result = run_isolated(_PROBE, timeout=120, method=chosen)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    for host in ("192.0.2.1", "10.255.255.1"):
        assert out[host].startswith("OSError"), out
        assert out[f"{host} seconds"] < 1.5, out
        if chosen == SOCKETS_REFUSED:
            assert "network disabled by mlcache selftest" in out[host]
    assert out["dns"] == "gaierror"
    assert out["loopback"] == "ping" and out["pair"] == "pair"
    assert out["tracking_uri"] is None
