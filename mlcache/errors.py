"""Errors raised by mlcache: one base class, one subclass per thing a user must react to."""

from __future__ import annotations

from pathlib import Path


class MlcacheError(Exception):
    """Base class of every error mlcache raises on purpose."""

    cli_text: str | None = None
    """The message in CLI terms, where it differs from the library's."""

    def for_cli(self) -> str:
        """The message as a command-line user should read it (hints in CLI terms, not Python's)."""
        return self.cli_text or str(self)


class InvalidIdentifier(MlcacheError, ValueError):
    """An identifier (id, name, URI, tuple) that cannot name an entity of the expected kind."""


class EntityNotFound(MlcacheError, LookupError):
    """The backend answered that the entity does not exist."""

    def __init__(self, kind: str, key: str, detail: str = "") -> None:
        self.kind = kind
        self.key = key
        msg = f"{kind} {key!r} does not exist"
        super().__init__(f"{msg}: {detail}" if detail else msg)


class EntityExists(MlcacheError):
    """The backend refused to create an entity whose name is taken."""


class BackendError(MlcacheError):
    """The backend refused a request for a reason other than a missing entity; `status` is the
    HTTP status when there was one (5xx/429 are transient)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class CacheMiss(MlcacheError, LookupError):
    """Offline (or with the server unreachable), the cache holds no copy of what was asked."""

    def __init__(self, kind: str, key: str, cache_dir: Path, hint: str) -> None:
        self.kind = kind
        self.key = key
        self.cache_dir = cache_dir
        super().__init__(
            f"{kind} {key!r} is not in the cache at {cache_dir}; to fill it, {hint} "
            "while online (or import a bundle that holds it)"
        )

    def for_cli(self) -> str:
        return (
            f"{self.kind} {self.key!r} is not in the cache at {self.cache_dir}; to fill it, run the same command "
            "online (without --offline or MLCACHE_OFFLINE), or `mlcache import` a bundle that holds it"
        )


class CorruptMetadata(MlcacheError):
    """A metadata file of the cache cannot be parsed; the message names the file."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"malformed cache file {path}: {reason}")


class ServerUnreachable(MlcacheError, ConnectionError):
    """The tracking server did not answer within the configured timeout; `what` says what happened."""

    LIBRARY_HINT = "to read the cache without trying the server, use offline_mode=True or MLCACHE_OFFLINE=1"
    CLI_HINT = "to read the cache without trying the server, add --offline (or set MLCACHE_OFFLINE=1)"

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(f"{what}; {self.LIBRARY_HINT}")

    def for_cli(self) -> str:
        return f"{self.what.replace('raise timeout=', 'raise --timeout')}; {self.CLI_HINT}"


class OfflineModeError(MlcacheError):
    """An operation that needs the server was called in offline mode."""


class UntrustedSource(MlcacheError):
    """An artifact location outside the artifact roots the server itself uses (a version whose
    source points elsewhere, a climbing URL): refused unless its prefix is explicitly allowed."""


class CacheNotWritable(MlcacheError, OSError):
    """The cache dir (or an export target) cannot be written: read-only, full, or not ours to
    write. Nothing half-made is left behind; the message says what to do."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class LockTimeout(MlcacheError, TimeoutError):
    """A cache lock could not be acquired in time."""


class InvalidSetting(MlcacheError, ValueError):
    """A setting (an argument or an environment variable) whose value mlcache does not accept;
    the message names it and the accepted values."""


class PluginNotFound(MlcacheError, LookupError):
    """No plugin of that name is installed in the `mlcache.plugins` entry point group."""


class CacheFallbackWarning(UserWarning):
    """The server could not be reached (or a cache file was bad), so the answer comes from the cache."""


class ArtifactUploadError(MlcacheError):
    """An upload failed; a temporary artifact made by a dumper is kept at `kept_path`."""

    def __init__(self, message: str, kept_path: Path | None) -> None:
        super().__init__(message)
        self.kept_path = kept_path


class UnsafeArtifact(MlcacheError):
    """A pulled tree that holds links pointing outside it, or content that differs from its listing."""


class BundleError(MlcacheError):
    """A bundle that is damaged, unlisted content, or one that would replace different content."""


class IncompatibleCache(MlcacheError):
    """A cache dir (or bundle) whose layout marker this mlcache cannot read: another layout
    version, or a marker that is not what mlcache writes."""


class UnsafePath(MlcacheError, ValueError):
    """A name or path that is empty, absolute, climbs out of its tree, or cannot be a file name."""


class InvalidQuery(MlcacheError, ValueError):
    """A query with an unknown operator, a malformed argument or a shape mlcache cannot evaluate."""


class UnsupportedUrl(MlcacheError, ValueError):
    """An artifact URL that no transfer can read, or that could be misread as a flag or command."""


class TransferError(MlcacheError):
    """A transfer failed; `retryable` tells transient faults from permanent ones."""

    def __init__(
        self, message: str, retryable: bool = False, exit_code: int | None = None, errno: int | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.exit_code = exit_code
        self.errno = errno
        """Set when the local side failed: the disk is full (`ENOSPC`, `EDQUOT`) or read-only (`EROFS`)."""
