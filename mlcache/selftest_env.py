"""The environments `selftest` builds from a bundle's wheels: the parent copies the wheels the
import checked into its work folder (each checked again against what the import read); the child,
with no network, installs each model folder's requirements from them alone (`pip --no-index`)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tarfile
from pathlib import Path
from typing import IO, Any

from .bundle_reader import BundleTree
from .errors import BundleError
from .names import UnsafePath, safe_relative_path
from .requirements import WHEELS, RequirementsRecord, install_wheels, this_platform, wheel_problem


class NotLoadable(Exception):
    """A model this process cannot load for a reason stated in full (its message is the detail)."""


def wheel_environments(
    document: dict[str, Any], tree: BundleTree | None, source: Path, work: Path
) -> dict[str, Any] | None:
    """What the child needs to build the models' environments: the bundle's wheels copied to
    `work/wheels`, each model folder's wheel count, the platform they are for; None when the
    bundle holds no wheels."""
    raw = document.get("requirements")
    if raw is None or tree is None:
        return None
    requirements = RequirementsRecord.model_validate(raw)
    if not requirements.models:
        return None
    expected = {rel: member for rel, member in tree.members.items() if rel.startswith(f"{WHEELS}/")}
    wheels = work / WHEELS
    wheels.mkdir()
    copy_wheels(source, expected, wheels)
    return {
        "wheels": str(wheels),
        "root": str(work),
        "models": {folder: len(names) for folder, names in requirements.models.items()},
        "platform": requirements.platform,
    }


def copy_wheels(source: Path, expected: dict[str, Any], wheels: Path) -> None:
    """Copy the bundle's wheels (folder: each file; archive: its `wheels/` members, regular files
    only, names checked as the import checks them) into `wheels`, each checked against the size
    and digest the import read; a wheel that changed since is a `BundleError`."""
    found: dict[str, tuple[int, str]] = {}

    def keep(rel: str, data: IO[bytes]) -> None:
        if rel not in expected or wheel_problem(rel) is not None or rel in found:
            return
        digest, size = hashlib.sha256(), 0
        with (wheels / rel.split("/", 1)[1]).open("xb") as out:
            while chunk := data.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        found[rel] = (size, digest.hexdigest())

    try:
        if source.is_dir():
            for rel in sorted(expected):
                fd = os.open(source.joinpath(*rel.split("/")), os.O_RDONLY | os.O_NOFOLLOW)
                with os.fdopen(fd, "rb") as data:
                    keep(rel, data)
        else:
            with tarfile.open(source, "r|*") as tar:
                for member in tar:
                    with contextlib.suppress(UnsafePath):
                        rel = safe_relative_path(member.name, "bundle member")
                        handle = tar.extractfile(member) if member.isreg() else None
                        if handle is not None:
                            keep(rel, handle)
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise BundleError(f"{source}: cannot read its wheels ({exc})") from None
    for rel, member in sorted(expected.items()):
        if found.get(rel) != (member.size, member.sha256):
            raise BundleError(f"{source}: {rel} changed after the bundle was checked; run selftest again")


class Environments:
    """The child's side of the bundle's wheels: builds each model folder's environment once
    (`requirements.install_wheels`) and says how, per item."""

    def __init__(self, cache: Path, job: dict[str, Any]) -> None:
        self.cache = Path(os.path.realpath(cache))
        self.wheels = Path(job["wheels"])
        self.root = Path(job["root"])
        self.models: dict[str, int] = {str(k): int(v) for k, v in job["models"].items()}
        self.platform: dict[str, str] = dict(job.get("platform") or {})
        self.built: dict[str, tuple[Path | None, str]] = {}
        self.said: dict[str, str] = {}

    def target(self, uri: str, path: Path) -> tuple[Path, str] | None:
        """The folder to put first on `sys.path` to load the model at `path`, and how it was
        built (None: it has no wheels in the bundle); `NotLoadable` when pip could not build it."""
        try:
            rel = Path(os.path.realpath(path)).relative_to(self.cache).as_posix()
        except ValueError:
            return None
        count = self.models.get(rel)
        if count is None:
            return None
        if rel not in self.built:
            target = self.root / f"env-{len(self.built)}"
            failed = install_wheels(path, self.wheels, target)
            wheels = f"{count} wheel{'s' if count != 1 else ''}"
            if failed is None:
                self.built[rel] = (target, f"environment built from {wheels} with no index")
            else:
                mine = this_platform()
                other = {k: v for k, v in self.platform.items() if mine.get(k) != v}
                hint = (
                    f" (the wheels are for {self.platform.get('abi')} {self.platform.get('platform')}, "
                    f"this is {mine['abi']} {mine['platform']})"
                    if other
                    else ""
                )
                self.built[rel] = (None, f"environment not built from the bundle's {wheels}: {failed}{hint}")
        built, said = self.built[rel]
        self.said[uri] = said
        if built is None:
            raise NotLoadable(said)
        return built, said
