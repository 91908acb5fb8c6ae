"""Signed bundles: sign on export, verify and import with a pinned key, and every way of tampering
refused with nothing installed; one model checks with the `model_signing` tool itself; evidence."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import mlcache
from mlcache.bundle_trust import Evidence
from mlcache.bundle_verify import verify_report
from mlcache.errors import BundleError
from mlcache.signing import keygen, load_trusted_keys
from mlcache.testing import InMemoryPlugin, MemoryBackend

CLI = [sys.executable, "-c", "from mlcache.cli import run; run()"]
WEIGHTS = b"w" * 4096


def _model(path: Path) -> None:
    path.mkdir()
    (path / "MLmodel").write_text("flavors: {}\n")
    (path / "weights.bin").write_bytes(WEIGHTS)


@pytest.fixture
def world(tmp_path: Path) -> dict:
    """A cache holding versions 1 (@prod) and 2 of `m`, a signed folder bundle of version 1 with
    the alias, a key pair and another key."""
    backend = MemoryBackend(tmp_path / "server")
    api = InMemoryPlugin(cache_dir=tmp_path / "cache", backend=backend)
    run = api.create_exp("e").start_run("r")
    api.log_model_version("m", run, _model, "model", aliases=["prod"])
    api.log_model_version("m", run, _model, "model2")
    private, public = keygen(tmp_path / "keys")
    other, other_public = keygen(tmp_path / "other")
    bundle = api.export_bundle(tmp_path / "signed", [("m", "@prod")], sign_key=private)
    return {
        "api": api,
        "backend": backend,
        "bundle": bundle,
        "private": private,
        "public": public,
        "other": other,
        "other_public": other_public,
        "tmp": tmp_path,
    }


def _fresh(world: dict, name: str) -> InMemoryPlugin:
    return InMemoryPlugin(cache_dir=world["tmp"] / name, backend=world["backend"], offline_mode=True)


def _installed(cache: Path) -> list[str]:
    return sorted(
        p.relative_to(cache).as_posix()
        for p in cache.rglob("*")
        if p.is_file() and p.parts[len(cache.parts)] in ("artifacts", "manifests", "metadata", "blobs")
    )


def _relist(bundle: Path, *changed: str) -> None:
    """Rewrite the rows of `changed` files in bundle.json to match their new bytes (what an attacker
    who can edit the bundle does)."""
    document = json.loads((bundle / "bundle.json").read_text())
    for row in document["files"]:
        if row["path"] in changed:
            data = (bundle / row["path"]).read_bytes()
            row["size"], row["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (bundle / "bundle.json").write_text(json.dumps(document, indent=1))


def _weights(bundle: Path) -> Path:
    return next(bundle.glob("artifacts/runs/*/model/weights.bin"))


def test_a_signed_bundle_verifies_imports_and_loads_with_the_pinned_key(world: dict) -> None:
    api, public = world["api"], world["public"]
    trusted = load_trusted_keys(public)
    archive = api.export_bundle(world["tmp"] / "signed.tar.gz", [("m", "@prod")], sign_key=world["private"])
    for bundle in (world["bundle"], archive):
        report = verify_report(bundle, trusted=trusted)
        assert report.problems == []
        assert [(c.subject.split(":")[0], c.ok, c.fingerprint) for c in report.signatures] == [
            ("bundle.json", True, trusted[0].fingerprint),
            ("runs", True, trusted[0].fingerprint),
        ]
        assert verify_report(bundle).signed_by == trusted[0].fingerprint
        target = _fresh(world, f"into-{bundle.name}")
        evidence = Evidence("import", str(bundle))
        assert len(target.import_bundle(bundle, trusted_keys=public, evidence=evidence).entries_added) == 1
        path = target.get_model_artifact(("m", "@prod"))
        assert (path / "weights.bin").read_bytes() == WEIGHTS
        written = json.loads(evidence.write(world["tmp"] / f"{bundle.name}.evidence.json").read_text())
        assert written["verdict"] == "pass" and written["trusted_keys"] == [trusted[0].fingerprint]
        assert {s["result"] for s in written["signatures"]} == {"valid"} and len(written["signatures"]) == 2
        weights = next(f for f in written["files"] if f["path"].endswith("weights.bin"))
        assert weights == {"path": weights["path"], "size": 4096, "sha256": hashlib.sha256(WEIGHTS).hexdigest()}


def test_a_model_of_the_bundle_verifies_with_the_model_signing_tool(world: dict) -> None:
    bundle, public = world["bundle"], world["public"]
    model = _weights(bundle).parent
    signature = bundle / "signatures" / f"{model.relative_to(bundle).as_posix()}.sig"
    tool = shutil.which("model_signing") or pytest.fail("the model_signing command is not installed")
    args = [tool, "verify", "key", "--signature", str(signature), "--public_key", str(public), str(model)]
    ok = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "Verification succeeded" in ok.stdout, ok.stderr
    weights = _weights(bundle)
    weights.chmod(0o644)
    weights.write_bytes(b"W" + WEIGHTS[1:])
    bad = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0


def _one_byte(bundle: Path, world: dict) -> None:
    weights = _weights(bundle)
    weights.chmod(0o644)
    weights.write_bytes(b"x" + WEIGHTS[1:])


def _byte_and_listings(bundle: Path, world: dict) -> None:
    weights = _weights(bundle)
    _one_byte(bundle, world)
    manifest = next(bundle.glob("manifests/runs/*/model.json"))
    body = json.loads(manifest.read_text())
    for item in body["files"]:
        if item["path"] == "weights.bin":
            item["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    manifest.write_text(json.dumps(body, indent=1))
    _relist(bundle, weights.relative_to(bundle).as_posix(), manifest.relative_to(bundle).as_posix())


def _alias_moved(bundle: Path, world: dict) -> None:
    alias = bundle / "metadata" / "alias" / "m" / "prod.json"
    body = json.loads(alias.read_text())
    assert json.dumps(body).count('"1"') >= 1
    alias.write_text(json.dumps(body).replace('"1"', '"2"'))
    _relist(bundle, "metadata/alias/m/prod.json")


def _resigned(bundle: Path, world: dict) -> None:
    shutil.rmtree(bundle)
    world["api"].export_bundle(bundle, [("m", "@prod")], sign_key=world["other"])


def _unsigned(bundle: Path, world: dict) -> None:
    (bundle / "bundle.json.sig").unlink()
    shutil.rmtree(bundle / "signatures")
    document = json.loads((bundle / "bundle.json").read_text())
    document["files"] = [row for row in document["files"] if not row["path"].startswith("signatures/")]
    (bundle / "bundle.json").write_text(json.dumps(document, indent=1))


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (_one_byte, r"is damaged, nothing imported: .*weights\.bin: sha256 differs"),
        (_byte_and_listings, r"not trusted, nothing imported: bundle\.json: bundle\.json differs from what was signed"),
        (_alias_moved, r"not trusted, nothing imported: bundle\.json: bundle\.json differs from what was signed"),
        (_resigned, r"not trusted, nothing imported: bundle\.json: signed by key sha256:[0-9a-f]{64}, which is not"),
        (_unsigned, r"not trusted, nothing imported: bundle\.json: not signed; runs:/[0-9a-f]+/model: not signed"),
    ],
)
def test_tampered_bundles_are_refused_with_trusted_keys_and_nothing_is_installed(
    world: dict, tamper: Callable[[Path, dict], None], reason: str
) -> None:
    copy = world["tmp"] / "copy"
    shutil.copytree(world["bundle"], copy)
    tamper(copy, world)
    trusted = load_trusted_keys(world["public"])
    assert verify_report(copy, trusted=trusted).problems
    target = _fresh(world, "target")
    evidence = Evidence("import", str(copy))
    with pytest.raises(BundleError, match=reason):
        target.import_bundle(copy, trusted_keys=world["public"], evidence=evidence)
    assert _installed(target.cache_dir) == []
    assert evidence.document("test")["verdict"] == "fail"
    if tamper in (_byte_and_listings, _alias_moved):
        entry = verify_report(copy, trusted=trusted).signatures[1:]
        assert [c.ok for c in entry] == [tamper is _alias_moved]


def test_without_trusted_keys_a_signed_bundle_imports_as_before_and_verify_names_its_signer(world: dict) -> None:
    copy = world["tmp"] / "copy"
    shutil.copytree(world["bundle"], copy)
    _resigned(copy, world)
    assert verify_report(copy).problems == []
    assert verify_report(copy).signed_by == load_trusted_keys(world["other_public"])[0].fingerprint
    assert _fresh(world, "target").import_bundle(copy).entries_added


def test_signing_and_pinned_keys_from_the_cli(world: dict) -> None:
    """keygen, export --sign-key, verify --trusted-keys --report, import refusing through
    MLCACHE_TRUSTED_KEYS; every refusal is one line, with the evidence still written."""
    tmp, cache = world["tmp"], world["api"].cache_dir
    env = {**os.environ, "MLCACHE_CACHE_DIR": str(cache), "MLCACHE_OFFLINE": "1"}

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*CLI, *args], capture_output=True, text=True, env={**env, **extra}, timeout=300)

    made = cli("keygen", "--out", str(tmp / "cli-keys"))
    assert made.returncode == 0, made.stderr
    private, public = made.stdout.split()
    assert oct(os.stat(private).st_mode & 0o777) == "0o600"
    again = cli("keygen", "--out", str(tmp / "cli-keys"))
    assert again.returncode == 1 and again.stderr.startswith("error: ") and "already exists" in again.stderr
    out = tmp / "cli.tar.gz"
    exported = cli("export", "models:/m@prod", "--to", str(out), "--sign-key", private)
    assert exported.returncode == 0, exported.stderr
    checked = cli("verify", str(out), "--trusted-keys", public, "--report", str(tmp / "verify.json"))
    assert checked.returncode == 0 and checked.stdout.strip() == f"OK {out}", checked.stderr
    assert json.loads((tmp / "verify.json").read_text())["verdict"] == "pass"
    told = cli("verify", str(out))
    assert "signed by key sha256:" in told.stderr and "not checked" in told.stderr
    refused = cli(
        "import",
        str(out),
        "--report",
        str(tmp / "import.json"),
        MLCACHE_TRUSTED_KEYS=str(world["public"]),
        MLCACHE_CACHE_DIR=str(tmp / "far"),
    )
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 2, refused.stderr
    assert "signed by key" in refused.stderr and "which is not trusted" in refused.stderr
    evidence = json.loads((tmp / "import.json").read_text())
    assert evidence["verdict"] == "fail" and evidence["action"] == "import" and evidence["files"]
    assert _installed(tmp / "far") == []
    folder = tmp / "keyring"
    folder.mkdir()
    shutil.copy(public, folder / "site.pub")
    shutil.copy(world["public"], folder / "other-team.pem")
    accepted = cli("import", str(out), MLCACHE_TRUSTED_KEYS=str(folder), MLCACHE_CACHE_DIR=str(tmp / "far"))
    assert accepted.returncode == 0, accepted.stderr
    far = mlcache.get_api("offline", cache_dir=tmp / "far")
    assert (far.get_model_artifact(("m", "@prod")) / "weights.bin").read_bytes() == WEIGHTS
