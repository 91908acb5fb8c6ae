"""Trust for bundles: signing a bundle folder on export, judging a read bundle's signatures against
trusted keys, and the evidence file auditors keep.

Evidence (`--report FILE.json`) is one JSON document, `format` `mlcache-evidence`, `version` 1:
`checked_at` (this machine's clock, UTC), `mlcache_version`, `action` (`verify` or `import`),
`bundle` (the path given), `bundle_json_sha256`, `trusted_keys` (fingerprints; empty when none were
configured), `files` (every file read: `path`, `size`, `sha256`), `signatures` (`subject`,
`key_fingerprint`, `result` `valid`/`refused`, `reason`), `problems` (one line each) and `verdict`
(`pass` or `fail`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .artifact_store import ArtifactStore
from .bundle_check import SIGNATURE_FILE, CheckedBundle
from .bundle_reader import BundleTree
from .layout import CacheLayout, write_atomic
from .signing import SIGNATURES, SignatureCheck, TrustedKey, check_signatures, sign_document, sign_entries
from .timeutil import utcnow


def sign_bundle_folder(folder: Path, key_path: Path) -> None:
    """Sign every entry whose files the bundle folder holds (before `bundle.json` lists the files)."""
    store = ArtifactStore(CacheLayout(folder))
    entries = []
    for key, _manifest in store.entries():
        path = store.entry_path(key) if key is not None else None
        if path is not None and (path.exists() or path.is_symlink()):
            entries.append(path.relative_to(folder).as_posix())
    sign_entries(folder, entries, key_path)


def sign_bundle_document(folder: Path, document: bytes, key_path: Path) -> None:
    (folder / SIGNATURE_FILE).write_bytes(sign_document(document, key_path))


def judge(
    tree: BundleTree, checked: CheckedBundle, files_root: Path | None, trusted: list[TrustedKey]
) -> list[SignatureCheck]:
    """Every signature of a checked bundle judged against `trusted`: the document, and each entry
    whose files it holds (entries of a differential bundle are covered by the document alone)."""
    document = tree.documents.get("bundle.json", b"")
    held = {"/".join(rel.split("/")[:depth]) for rel in tree.members for depth in range(1, rel.count("/") + 2)}
    entries = {rel: key.label for key, (_manifest, rel) in checked.entries.items() if rel in held}
    signatures = {rel for rel in tree.members if rel.startswith(f"{SIGNATURES}/")}
    return check_signatures(document, tree.documents.get(SIGNATURE_FILE), entries, signatures, files_root, trusted)


def refusals(checks: list[SignatureCheck]) -> list[str]:
    """The failed checks, one line each: `<subject>: <reason>`."""
    return [f"{check.subject}: {check.reason}" for check in checks if not check.ok]


@dataclass
class Evidence:
    """What one verify or import checked, for the evidence file."""

    action: str
    bundle: str
    tree: BundleTree | None = None
    trusted: list[TrustedKey] = field(default_factory=list)
    signatures: list[SignatureCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def document(self, version: str) -> dict[str, object]:
        members = self.tree.members if self.tree is not None else {}
        raw = self.tree.documents.get("bundle.json") if self.tree is not None else None
        return {
            "format": "mlcache-evidence",
            "version": 1,
            "checked_at": utcnow().isoformat(),
            "mlcache_version": version,
            "action": self.action,
            "bundle": self.bundle,
            "bundle_json_sha256": hashlib.sha256(raw).hexdigest() if raw is not None else None,
            "trusted_keys": [key.fingerprint for key in self.trusted],
            "files": [{"path": rel, "size": m.size, "sha256": m.sha256} for rel, m in sorted(members.items())],
            "signatures": [
                {
                    "subject": check.subject,
                    "key_fingerprint": check.fingerprint,
                    "result": "valid" if check.ok else "refused",
                    "reason": check.reason,
                }
                for check in self.signatures
            ],
            "problems": self.problems,
            "verdict": "pass" if not self.problems else "fail",
        }

    def write(self, path: Path | str) -> Path:
        from . import __version__

        target = Path(path).expanduser().absolute()
        target.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps(self.document(__version__), indent=1, ensure_ascii=False).encode()
        write_atomic(target, body, target.parent)
        return target
