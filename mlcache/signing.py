"""Signatures of bundles: keys, signing on export, and the one check every reader calls.

A signed bundle carries two kinds of signature, both made with one EC P-256 key, fully offline:
- every entry whose files the bundle holds is signed in the OpenSSF model signing format (the
  `model-signing` package) at `signatures/<entry path>.sig`, so a third party can check one model
  with the standard `model_signing verify key` tool;
- `bundle.json` is signed at `bundle.json.sig` (ECDSA over its bytes, with the key's fingerprint).
  `bundle.json` lists the size and sha256 of every other file (metadata documents, manifests, blobs,
  entry signatures, the base of a differential bundle), so nothing in the bundle can change without
  breaking this signature.
`check_signatures` is the one place that judges them (bundles now, tiers later): with trusted keys,
anything unsigned, signed by another key, or changed since it was signed is refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import MlcacheError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey, EllipticCurvePublicKey

DOCUMENT_SIGNATURE = "bundle.json.sig"
SIGNATURES = "signatures"
_SIGNATURE_FORMAT = "mlcache-signature"


class SigningError(MlcacheError):
    """A key that cannot be read or used, or a signature that cannot be made."""


@dataclass(frozen=True)
class TrustedKey:
    """A public key a site trusts, and its fingerprint (`sha256:<hex>` of its DER form)."""

    path: Path
    fingerprint: str
    key: EllipticCurvePublicKey


@dataclass(frozen=True)
class SignatureCheck:
    """One signature judged: what it covers, the key that made it (when known), and the result."""

    subject: str
    fingerprint: str | None
    ok: bool
    reason: str


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError as exc:
        raise SigningError("signing needs the cryptography package: pip install model-signing") from exc
    return hashes, serialization, ec


def fingerprint(key: EllipticCurvePublicKey) -> str:
    _hashes, serialization, _ec = _crypto()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"sha256:{hashlib.sha256(der).hexdigest()}"


def keygen(folder: Path | str, name: str = "mlcache-signing") -> tuple[Path, Path]:
    """Write a new EC P-256 key pair into `folder`: `<name>.key` (private, mode 0600, PEM) and
    `<name>.pub` (public, PEM). Existing files are never replaced."""
    _hashes, serialization, ec = _crypto()
    folder = Path(folder).expanduser().absolute()
    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / f"{name}.key", folder / f"{name}.pub"
    for path in (private, public):
        if path.exists() or path.is_symlink():
            raise SigningError(f"{path} already exists; choose another folder or --name")
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def load_private_key(path: Path | str) -> EllipticCurvePrivateKey:
    _hashes, serialization, ec = _crypto()
    path = Path(path).expanduser()
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SigningError(f"signing key {path} cannot be read as an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SigningError(f"signing key {path} is not an elliptic-curve key (make one with `mlcache keygen`)")
    return key  # type: ignore[no-any-return]


def load_trusted_keys(path: Path | str) -> list[TrustedKey]:
    """The public keys of a PEM file, or of every `*.pub`/`*.pem` file of a folder."""
    _hashes, serialization, ec = _crypto()
    path = Path(path).expanduser().absolute()
    files = sorted(p for p in path.iterdir() if p.suffix in (".pub", ".pem")) if path.is_dir() else [path]
    if not files:
        raise SigningError(f"trusted keys {path}: the folder holds no .pub or .pem file")
    keys = []
    for file in files:
        try:
            key = serialization.load_pem_public_key(file.read_bytes())
        except (OSError, ValueError) as exc:
            raise SigningError(f"trusted key {file} cannot be read as a PEM public key ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise SigningError(f"trusted key {file} is not an elliptic-curve public key")
        keys.append(TrustedKey(file, fingerprint(key), key))
    return keys


# ----------------------------------------------------------------- signing
def sign_entries(folder: Path, entries: list[str], key_path: Path) -> None:
    """Sign each entry (its path in the bundle folder) in the OpenSSF model signing format."""
    import model_signing

    for rel in entries:
        signature = folder / SIGNATURES / f"{rel}.sig"
        signature.parent.mkdir(parents=True, exist_ok=True)
        try:
            model_signing.signing.Config().use_elliptic_key_signer(private_key=str(key_path)).sign(
                folder / rel, signature
            )
        except (ValueError, OSError) as exc:
            raise SigningError(f"cannot sign {rel} with {key_path}: {exc}") from None


def sign_document(document: bytes, key_path: Path) -> bytes:
    """The signature file of a bundle's `bundle.json` bytes."""
    hashes, _serialization, ec = _crypto()
    key = load_private_key(key_path)
    signature = key.sign(document, ec.ECDSA(hashes.SHA256()))
    body = {
        "format": _SIGNATURE_FORMAT,
        "key_fingerprint": fingerprint(key.public_key()),
        "algorithm": "ecdsa-p256-sha256",
        "signature": base64.b64encode(signature).decode(),
    }
    return json.dumps(body, indent=1).encode()


def document_signer(signature: bytes | None) -> str | None:
    """The key fingerprint a document signature claims (unchecked), None when unsigned or unreadable."""
    parsed = _parse_signature(signature)
    return parsed[0] if parsed is not None else None


def _parse_signature(raw: bytes | None) -> tuple[str, bytes] | None:
    if raw is None:
        return None
    try:
        body = json.loads(raw)
        claimed, value = body["key_fingerprint"], base64.b64decode(body["signature"], validate=True)
    except (ValueError, KeyError, TypeError):
        return None
    if body.get("format") != _SIGNATURE_FORMAT or not isinstance(claimed, str):
        return None
    return claimed, value


# ----------------------------------------------------------------- checking
def check_signatures(
    document: bytes,
    signature: bytes | None,
    entries: dict[str, str],
    entry_signatures: set[str],
    files_root: Path | None,
    trusted: list[TrustedKey],
) -> list[SignatureCheck]:
    """Judge a bundle's signatures against `trusted` keys. `entries` maps each entry's path in the
    bundle to its label; `entry_signatures` are the signature files present; `files_root` is where
    the bundle's files can be read (None when they cannot, e.g. a streamed archive: then only the
    document is judged, which covers every file's sha256)."""
    hashes, _serialization, ec = _crypto()
    from cryptography.exceptions import InvalidSignature

    checks: list[SignatureCheck] = []
    parsed = _parse_signature(signature)
    by_print = {key.fingerprint: key for key in trusted}
    if signature is None:
        checks.append(SignatureCheck("bundle.json", None, False, "not signed"))
    elif parsed is None:
        checks.append(SignatureCheck("bundle.json", None, False, f"{DOCUMENT_SIGNATURE} is not a signature file"))
    elif parsed[0] not in by_print:
        untrusted = f"signed by key {parsed[0]}, which is not trusted"
        checks.append(SignatureCheck("bundle.json", parsed[0], False, untrusted))
    else:
        try:
            by_print[parsed[0]].key.verify(parsed[1], document, ec.ECDSA(hashes.SHA256()))
            checks.append(SignatureCheck("bundle.json", parsed[0], True, "signature valid"))
        except InvalidSignature:
            checks.append(SignatureCheck("bundle.json", parsed[0], False, "bundle.json differs from what was signed"))
    for rel, label in sorted(entries.items()):
        sig = f"{SIGNATURES}/{rel}.sig"
        if sig not in entry_signatures:
            checks.append(SignatureCheck(label, None, False, "not signed"))
        elif files_root is not None:
            checks.append(_check_entry(label, files_root / rel, files_root / sig, trusted))
    return checks


def _check_entry(label: str, files: Path, signature: Path, trusted: list[TrustedKey]) -> SignatureCheck:
    """One entry's OpenSSF signature, tried with each trusted key."""
    import model_signing

    hint = _signature_hint(signature)
    reason = "signed by a key that is not trusted"
    for key in trusted:
        try:
            model_signing.verifying.Config().use_elliptic_key_verifier(public_key=str(key.path)).verify(
                files, signature
            )
            return SignatureCheck(label, key.fingerprint, True, "signature valid")
        except ValueError as exc:
            if "key mismatch" not in str(exc).lower():
                return SignatureCheck(label, key.fingerprint, False, "its files differ from what was signed")
        except Exception as exc:
            return SignatureCheck(label, hint, False, f"its signature file is unusable ({type(exc).__name__})")
    return SignatureCheck(label, hint, False, reason)


def _signature_hint(signature: Path) -> str | None:
    """The key hint an OpenSSF signature carries (for reports; never trusted)."""
    try:
        body = json.loads(signature.read_bytes()[: 1 << 20])
        hint = body["verificationMaterial"]["publicKey"]["hint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return f"hint:{hint}" if isinstance(hint, str) else None
