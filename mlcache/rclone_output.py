"""Reading what rclone says: its exit codes and error lines as `TransferError`s, its JSON stats as
progress and as files whose bytes are all written, and the store's MD5 in its listings."""

from __future__ import annotations

import errno
import re
from pathlib import Path
from typing import Any

from .errors import TransferError
from .progress import TransferProgress
from .transfer import OnFile

# rclone exit codes: https://rclone.org/docs/#exit-code
_RETRYABLE_EXIT_CODES = {5, 6, 8, 10}
NOT_FOUND_EXIT_CODES = {3, 4}
# Exit 1 is rclone's "any other error": transient unless the store refused us for good.
_PERMANENT = re.compile(
    r"\b(401|403|404)\b|AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch|NoSuchBucket|AuthenticationFailed|"
    r"AuthorizationFailure|ContainerNotFound|directory not found|object not found",
    re.IGNORECASE,
)


_LOCAL_WRITE_FAILURES = {
    "no space left on device": errno.ENOSPC,
    "file too big for remaining disk space": errno.ENOSPC,
    "disk quota exceeded": errno.EDQUOT,
    "read-only file system": errno.EROFS,
}


def transfer_error(command: str, code: int, stderr: str) -> TransferError:
    """The error for an rclone command that exited with `code`: its last error line, whether trying
    again can help, and the errno of a local write failure (a full disk, a read-only cache)."""
    lines = [line for line in stderr.splitlines() if "ERROR" in line or "Failed" in line or "error" in line]
    detail = (lines[-1] if lines else stderr.strip().splitlines()[-1] if stderr.strip() else "no output").strip()
    lowered = stderr.lower()
    local = next((number for text, number in _LOCAL_WRITE_FAILURES.items() if text in lowered), None)
    retryable = local is None and (code in _RETRYABLE_EXIT_CODES or (code == 1 and not _PERMANENT.search(stderr)))
    message = f"rclone {command} failed (exit {code}): {detail}"
    return TransferError(message, retryable=retryable, exit_code=code, errno=local)


def report_stats(progress: TransferProgress, figures: dict[str, Any]) -> None:
    """Feed one of rclone's stats blocks (`bytes`, `totalBytes`, `speed`) to a reporter."""
    done, total, speed = figures.get("bytes"), figures.get("totalBytes"), figures.get("speed")
    if isinstance(done, int) and not isinstance(done, bool):
        known = total if isinstance(total, int) and total > 0 else None
        progress.update(done, known, float(speed) if isinstance(speed, (int, float)) and speed > 0 else None)


EARLY_HASH_MIN_SIZE = 16 << 20
"""Files at least this large are hashed as soon as all their bytes are written, beside rclone's own
checksum pass; smaller ones once the copy has ended."""


def announce_complete_files(stats: dict, dest: Path, on_file: OnFile, announced: set[str]) -> None:
    """For each big transfer whose bytes are all written in place (`--inplace`; rclone's checksum
    pass comes next), tell `on_file` once."""
    for transfer in stats.get("transferring") or ():
        name, size, done = transfer.get("name"), transfer.get("size"), transfer.get("bytes")
        if not isinstance(name, str) or name in announced or not isinstance(size, int) or size < EARLY_HASH_MIN_SIZE:
            continue
        if done != size:
            continue
        announced.add(name)
        if (dest / name).is_file():
            on_file(name, staged=name)


def store_hash_of(item: dict[str, Any]) -> str:
    """`md5:<hex>` from one `lsjson --hash` item, when the store gave a well-formed MD5."""
    hashes = item.get("Hashes")
    value = hashes.get("md5") if isinstance(hashes, dict) else None
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{32}", value):
        return f"md5:{value}"
    return ""
