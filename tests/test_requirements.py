"""`export --with-requirements`: a model's pip requirements travel as wheels, and selftest builds its
environment from them with no index and no network.

The model is a real MLflow pyfunc model on the in-memory plugin whose `load_context` imports a
package no environment here has (`mlcache-probe-a`, which depends on `mlcache-probe-b`): two tiny
wheels this test makes and offers to pip as its only find-links (no index), so the export runs the
real `pip download` offline. Before the self-test that folder is removed: the model then loads only
from the wheels the bundle carries, installed by `pip install --no-index` in a child with no network.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mlcache.bundle_verify import verify
from mlcache.errors import BundleError
from mlcache.requirements import this_platform
from mlcache.selftest import selftest
from mlcache.testing import InMemoryPlugin, MemoryBackend

mlflow = pytest.importorskip("mlflow")

CLI = [sys.executable, "-c", "from mlcache.cli import run; run()"]
WHEEL_A = "wheels/mlcache_probe_a-1.0-py3-none-any.whl"
WHEEL_B = "wheels/mlcache_probe_b-2.0-py3-none-any.whl"


def _wheel(into: Path, name: str, version: str, code: str, requires: list[str]) -> None:
    """A pure-Python wheel holding one module, `name`, as pip expects it (METADATA, WHEEL, RECORD)."""
    dist = f"{name}-{version}.dist-info"
    meta = "".join(f"Requires-Dist: {req}\n" for req in requires)
    files = {
        f"{name}.py": code,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n{meta}",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: mlcache-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    with zipfile.ZipFile(into / f"{name}-{version}-py3-none-any.whl", "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)


def _probe_model() -> Any:
    """A pyfunc model that needs `mlcache_probe_a` to load; local, so cloudpickle stores it by value."""
    from mlflow.pyfunc import PythonModel

    class Probe(PythonModel):
        def load_context(self, context: Any) -> None:
            import mlcache_probe_a

            self.factor = mlcache_probe_a.factor()

        def predict(self, context: Any, model_input: Any, params: Any = None) -> list[float]:
            return [self.factor * x for x in model_input["x"]]

    return Probe()


def _save_probe(path: Path) -> None:
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        mlflow.pyfunc.save_model(path=str(path), python_model=_probe_model(), pip_requirements=["mlflow"])
    (path / "requirements.txt").write_text("mlcache-probe-a==1.0\n")  # mlflow is on the far side already


def _save_missing(path: Path) -> None:
    _save_probe(path)
    (path / "requirements.txt").write_text("mlcache-probe-missing==1.0\n")


@dataclass
class Made:
    root: Path
    api: Any
    version: Any
    bundle: Path
    archive: Path


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    """The probe model, exported --with-requirements as a folder (the API) and an archive (the
    CLI, on the offline cache), pip given the made wheels as its only source; then that source goes."""
    root = tmp_path_factory.mktemp("requirements")
    links = root / "links"
    links.mkdir()
    _wheel(
        links,
        "mlcache_probe_a",
        "1.0",
        "import mlcache_probe_b\n\ndef factor():\n    return 3 * mlcache_probe_b.ONE\n",
        ["mlcache-probe-b>=2"],
    )
    _wheel(links, "mlcache_probe_b", "2.0", "ONE = 1\n", [])
    api = InMemoryPlugin(cache_dir=root / "cache", backend=MemoryBackend(root / "server"))
    run = api.create_exp("requirements").start_run("train")
    version = api.log_model_version("probe", run, _save_probe, "model")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PIP_NO_INDEX", "1")
        patch.setenv("PIP_FIND_LINKS", str(links))
        patch.delenv("PIP_CONFIG_FILE", raising=False)
        bundle = api.export_bundle(root / "bundle", model_versions=[version], with_requirements=True)
        archive = root / "bundle.tar.gz"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLCACHE_", "MLFLOW_"))}
        argv = ["--offline", "--cache-dir", str(root / "cache"), "export", "models:/probe/1", "--to", str(archive)]
        done = subprocess.run(
            [*CLI, *argv, "--with-requirements"], capture_output=True, text=True, timeout=120, env=env
        )
        assert done.returncode == 0, done.stderr
        assert "downloading the wheels its requirements.txt names" in done.stderr, done.stderr
        api.export_bundle(root / "plain", model_versions=[version])
    shutil.rmtree(links)
    return Made(root, api, version, bundle, archive)


def _document(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "bundle.json").read_text())


def test_the_bundle_lists_the_wheels_and_the_platform_and_verifies(made: Made) -> None:
    document = _document(made.bundle)
    listed = {row["path"] for row in document["files"]}
    assert {WHEEL_A, WHEEL_B} <= listed
    assert sorted(p.name for p in (made.bundle / "wheels").iterdir()) == [WHEEL_A[7:], WHEEL_B[7:]]
    requirements = document["requirements"]
    assert requirements["platform"] == this_platform()
    assert set(requirements["platform"]) == {"python", "implementation", "abi", "platform"}
    [(folder, wheels)] = requirements["models"].items()
    assert folder.startswith("artifacts/") and (made.bundle / folder / "MLmodel").is_file()
    assert wheels == [WHEEL_A, WHEEL_B]
    assert verify(made.bundle) == []
    assert verify(made.archive) == []


def test_selftest_builds_the_environment_from_the_wheels_with_no_index(made: Made, tmp_path: Path) -> None:
    report = selftest(made.bundle)
    [row] = report.rows
    assert row.ok, row.detail
    assert row.environment == "environment built from 2 wheels with no index"
    assert row.detail.startswith("environment built from 2 wheels with no index; loaded with mlflow.pyfunc")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLCACHE_", "MLFLOW_"))}
    env["TMPDIR"] = str(tmp_path)
    done = subprocess.run([*CLI, "selftest", str(made.archive)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["ok models:/probe/1 (environment built from 2 wheels with no index)"]
    assert list(tmp_path.iterdir()) == [], "the temporary cache and environment were left behind"


def test_without_the_flag_there_are_no_wheels_and_the_model_does_not_load(made: Made) -> None:
    plain = made.root / "plain"
    assert not (plain / "wheels").exists()
    assert "requirements" not in _document(plain)
    [row] = selftest(plain).rows
    assert not row.ok and "No module named 'mlcache_probe_a'" in row.detail
    assert row.environment is None


def test_a_changed_unlisted_or_misplaced_wheel_is_refused(made: Made, tmp_path: Path) -> None:
    changed = tmp_path / "changed"
    shutil.copytree(made.bundle, changed)
    wheel = changed / WHEEL_B
    wheel.chmod(0o644)
    with wheel.open("ab") as handle:
        handle.write(b"\0")
    assert any(p.startswith(f"{WHEEL_B}: size") for p in verify(changed)), verify(changed)
    with pytest.raises(BundleError, match="is damaged, nothing imported"):
        selftest(changed)

    unlisted = tmp_path / "unlisted"
    shutil.copytree(made.bundle, unlisted)
    shutil.copy(unlisted / WHEEL_A, unlisted / "wheels" / "extra-1.0-py3-none-any.whl")
    assert verify(unlisted) == ["wheels/extra-1.0-py3-none-any.whl: not listed in bundle.json"]

    misplaced = tmp_path / "misplaced"
    shutil.copytree(made.bundle, misplaced)
    (misplaced / "wheels" / "sub").mkdir()
    shutil.move(misplaced / WHEEL_B, misplaced / "wheels" / "sub" / WHEEL_B[7:])
    (misplaced / "wheels" / "notes.txt").write_text("hi")
    document = _document(misplaced)
    for row in document["files"]:
        if row["path"] == WHEEL_B:
            row["path"] = f"wheels/sub/{WHEEL_B[7:]}"
    document["files"].append({"path": "wheels/notes.txt", "size": 2, "sha256": hashlib.sha256(b"hi").hexdigest()})
    (misplaced / "bundle.json").chmod(0o644)
    (misplaced / "bundle.json").write_text(json.dumps(document))
    [folder] = document["requirements"]["models"]
    assert verify(misplaced) == [
        "wheels/notes.txt: not a wheel (only .whl files belong under wheels/)",
        f"wheels/sub/{WHEEL_B[7:]}: not a wheel of this layout (wheels/<name>.whl, one level)",
        f"bundle.json: the requirements of {folder} name {WHEEL_B}, not a wheel it holds",
    ]


def test_a_requirement_pip_cannot_get_fails_the_export_naming_the_model(
    made: Made, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = made.api.create_exp("missing").start_run("train")
    version = made.api.log_model_version("missing", run, _save_missing, "model")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(BundleError) as caught:
        made.api.export_bundle(tmp_path / "bundle", model_versions=[version], with_requirements=True)
    message = str(caught.value)
    assert message.startswith("--with-requirements: pip could not download the requirements of ")
    assert "requirements.txt): ERROR: No matching distribution found for mlcache-probe-missing==1.0" in message
    assert "\n" not in message
    assert not (tmp_path / "bundle").exists()
