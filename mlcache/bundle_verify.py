"""Verifying a bundle (folder or archive, read once, in place) or a cache dir (entry by entry,
each blob hashed once), and saying who signed a bundle and what a differential one relies on."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .artifact_store import ArtifactStore
from .bundle_check import BUNDLE_FILE, SIGNATURE_FILE, BaseRef, check_bundle
from .bundle_reader import BundleError, BundleLimits, BundleTree, is_archive, read_bundle
from .bundle_trust import judge, refusals
from .entry_io import verify_entry
from .errors import CorruptMetadata
from .hashing import sha256_file
from .layout import CacheLayout
from .metadata_store import KINDS, MetadataStore
from .signing import SignatureCheck, TrustedKey, document_signer


def verify(path: Path | str, limits: BundleLimits | None = None) -> list[str]:
    """Every problem of a bundle (folder or archive) or cache dir, one line each: missing, resized,
    changed or unlisted files, misplaced or unreadable documents. An empty list means intact."""
    return verify_report(path, limits).problems


@dataclass
class VerifyReport:
    """What `verify` found: the problems; for a bundle, what was read, its signatures (judged when
    trusted keys were given), the key its document claims to be signed by, and for a differential
    bundle the base it names and the blobs (sha256 -> size) it relies on that base for."""

    problems: list[str]
    base: BaseRef | None = None
    relies: dict[str, int] = field(default_factory=dict)
    tree: BundleTree | None = None
    signatures: list[SignatureCheck] = field(default_factory=list)
    signed_by: str | None = None


def verify_report(
    path: Path | str, limits: BundleLimits | None = None, trusted: list[TrustedKey] | None = None
) -> VerifyReport:
    """`verify`, also saying what a differential bundle relies on and who signed it; with `trusted`
    keys, unsigned, wrongly signed or changed content is a problem too (an archive is then read into
    a temporary folder, so each entry's signature can be checked on its files)."""
    given = path
    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise BundleError(f"no bundle or cache dir at {given}: no such file or folder")
    if not ((is_archive(path) and not path.is_dir()) or (path / BUNDLE_FILE).exists()):
        return VerifyReport(_verify_cache(path))
    with tempfile.TemporaryDirectory(prefix="mlcache-verify-") as scratch:
        staged = Path(scratch) if trusted and is_archive(path) and not path.is_dir() else None
        try:
            tree = read_bundle(path, limits, staged)
        except BundleError as exc:
            return VerifyReport([str(exc)])
        checked = check_bundle(tree)
        base = checked.document.base if checked.document is not None else None
        report = VerifyReport(checked.problems, base, dict(checked.relies), tree)
        report.signed_by = document_signer(tree.documents.get(SIGNATURE_FILE))
        if trusted:
            report.signatures = judge(tree, checked, staged or path, trusted)
            report.problems = report.problems + refusals(report.signatures)
        return report


def _verify_cache(root: Path) -> list[str]:
    problems: list[str] = []
    store = ArtifactStore(CacheLayout(root))
    hashed: dict[tuple[int, int], str] = {}
    for key, manifest in store.entries():
        if key is None or isinstance(manifest, CorruptMetadata):
            problems.append(str(manifest))
        else:
            problems.extend(verify_entry(store, key, manifest, hashed))
    for digest, blob, info in store.blobs.all():
        if (info.st_dev, info.st_ino) not in hashed and sha256_file(blob) != digest:
            problems.append(f"{blob}: its bytes do not hash to its name; no entry holds it, `mlcache gc` removes it")
    meta = MetadataStore(CacheLayout(root))
    for kind in KINDS:
        list(meta.scan(kind, on_error=lambda exc: problems.append(str(exc))))
    return problems
