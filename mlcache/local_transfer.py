"""`LocalTransfer`: artifact trees on a local (or mounted) disk, copied in Python, no subprocess.

For `file://` URLs and absolute paths; a pull copies each file into the destination and reports
it, so the artifact store verifies and hashes it as it would after rclone. The in-memory plugin
keeps its artifacts this way; any api can use it (`transfer=LocalTransfer()`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote, urlparse

from .errors import EntityNotFound, UnsupportedUrl
from .transfer import Listing, OnFile, Progress, PullPlan, RemoteFile, Transfer, file_by_file


def local_path(url: str) -> Path:
    """The local path of a `file://` URL or an absolute path."""
    if url.startswith("/"):
        return Path(url)
    parsed = urlparse(url)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise UnsupportedUrl(f"not a local path or file:// URL: {url!r}")
    return Path(unquote(parsed.path))


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _mtime(info: os.stat_result) -> str:
    when = datetime.fromtimestamp(info.st_mtime_ns // 1_000_000_000, tz=timezone.utc)
    return f"{when:%Y-%m-%dT%H:%M:%S}.{info.st_mtime_ns % 1_000_000_000:09d}Z"


class LocalTransfer(Transfer):
    """List, pull, push and delete trees of the local filesystem (links are not followed). With
    `store_hashes`, listings give each file's MD5 as an object store would (read from the file:
    for stores that emulate one, such as the in-memory plugin's)."""

    def __init__(self, store_hashes: bool = False) -> None:
        self.store_hashes = store_hashes

    def _remote(self, rel: str, path: Path, info: os.stat_result) -> RemoteFile:
        digest = f"md5:{_md5(path)}" if self.store_hashes else ""
        return RemoteFile(rel, info.st_size, _mtime(info), digest)

    def list(self, url: str) -> Listing:
        root = local_path(url)
        try:
            info = root.lstat()
        except FileNotFoundError:
            raise EntityNotFound("artifact", url, "nothing at that location") from None
        if stat.S_ISREG(info.st_mode):
            return Listing(url, False, (self._remote(root.name, root, info),))
        files = []
        for folder, dirs, names in os.walk(root):
            dirs.sort()
            for name in sorted(names):
                path = Path(folder) / name
                item = path.lstat()
                if stat.S_ISREG(item.st_mode):
                    files.append(self._remote(path.relative_to(root).as_posix(), path, item))
        if not files:
            raise EntityNotFound("artifact", url, "nothing at that location")
        return Listing(url, True, tuple(files))

    def pull(
        self,
        url: str,
        dest: Path,
        progress: Progress = False,
        on_file: OnFile | None = None,
        only: Sequence[str] | None = None,
        plan: PullPlan | None = None,
    ) -> None:
        listing = self.list(url)
        files = listing.selected(only)
        root = local_path(url)
        dest.mkdir(parents=True, exist_ok=True)
        with file_by_file(progress, url, sum(f.size for f in files), dest) as advanced:
            for item in files:
                src = root.joinpath(*item.path.split("/")) if listing.is_dir else root
                out = dest.joinpath(*item.path.split("/"))
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, out, follow_symlinks=False)
                info = src.lstat()
                os.utime(out, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)
                if on_file is not None:
                    on_file(item.path)
                advanced(item.size)

    def push(self, src: Path, url: str, progress: Progress = False) -> None:
        target = local_path(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, dirs_exist_ok=True)
        else:
            shutil.copyfile(src, target)

    def delete(self, url: str) -> None:
        target = local_path(url)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        else:
            raise EntityNotFound("artifact", url, "nothing at that location")
