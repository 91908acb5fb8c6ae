"""Artifact URLs -> rclone paths, and the environment each rclone process needs for them.

`s3://`, `gs://`, `az://` and `wasbs://` map to an rclone remote. A remote the user configured the
rclone way (config file or `RCLONE_CONFIG_<NAME>_*` variables) under the scheme's name (`s3`, `gs`,
`az`) wins; otherwise one is defined from the variables MLflow users already set
(`MLFLOW_S3_ENDPOINT_URL` and `AWS_*`, `AZURE_STORAGE_CONNECTION_STRING`,
`GOOGLE_APPLICATION_CREDENTIALS`), handed to the rclone process through its own environment.
`file://` URLs and absolute paths are local. The process environment is never modified.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlparse

from .errors import UnsupportedUrl


@dataclass(frozen=True)
class RclonePath:
    """Where rclone reads or writes, and the extra environment its process needs."""

    path: str
    env: dict[str, str] = field(default_factory=dict)
    local: bool = False


_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f]")


def check_url_text(url: str) -> str:
    """Refuse control characters and leading dashes; everything else is passed literally (no shell)."""
    if not isinstance(url, str) or not url:
        raise UnsupportedUrl(f"artifact location must be a non-empty string, got {url!r}")
    if _FORBIDDEN.search(url):
        raise UnsupportedUrl(f"artifact location contains control characters: {url!r}")
    if url.startswith("-"):
        raise UnsupportedUrl(f"artifact location must not start with '-': {url!r}")
    return url


def join_url(base: str, path: str) -> str:
    """`base` + `/` + `path` without doubled separators."""
    return f"{base.rstrip('/')}/{path.lstrip('/')}" if path else base


def _remote_configured(name: str, env: Mapping[str, str], configured: frozenset[str]) -> bool:
    return name in configured or f"RCLONE_CONFIG_{name.upper()}_TYPE" in env


def _s3_env(env: Mapping[str, str]) -> dict[str, str]:
    prefix = "RCLONE_CONFIG_MLCACHE_S3_"
    out = {f"{prefix}TYPE": "s3", f"{prefix}PROVIDER": "Other"}
    region = env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1"
    out[f"{prefix}REGION"] = region
    if env.get("MLFLOW_S3_ENDPOINT_URL"):
        out[f"{prefix}ENDPOINT"] = env["MLFLOW_S3_ENDPOINT_URL"]
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        out[f"{prefix}ACCESS_KEY_ID"] = env["AWS_ACCESS_KEY_ID"]
        out[f"{prefix}SECRET_ACCESS_KEY"] = env["AWS_SECRET_ACCESS_KEY"]
        if env.get("AWS_SESSION_TOKEN"):
            out[f"{prefix}SESSION_TOKEN"] = env["AWS_SESSION_TOKEN"]
    else:
        out[f"{prefix}ENV_AUTH"] = "true"
    return out


def _azure_env(env: Mapping[str, str], account: str | None) -> dict[str, str]:
    prefix = "RCLONE_CONFIG_MLCACHE_AZ_"
    out = {f"{prefix}TYPE": "azureblob"}
    conn = env.get("AZURE_STORAGE_CONNECTION_STRING")
    if conn:
        parts = dict(p.split("=", 1) for p in conn.split(";") if "=" in p)
        if parts.get("AccountName"):
            out[f"{prefix}ACCOUNT"] = parts["AccountName"]
        if parts.get("AccountKey"):
            out[f"{prefix}KEY"] = parts["AccountKey"]
        if parts.get("SharedAccessSignature"):
            out[f"{prefix}SAS_URL"] = f"{parts.get('BlobEndpoint', '')}?{parts['SharedAccessSignature']}"
        if parts.get("BlobEndpoint"):
            out[f"{prefix}ENDPOINT"] = parts["BlobEndpoint"]
    else:
        if account:
            out[f"{prefix}ACCOUNT"] = account
        if env.get("AZURE_STORAGE_ACCESS_KEY"):
            out[f"{prefix}KEY"] = env["AZURE_STORAGE_ACCESS_KEY"]
        else:
            out[f"{prefix}ENV_AUTH"] = "true"
    return out


def _gcs_env(env: Mapping[str, str]) -> dict[str, str]:
    prefix = "RCLONE_CONFIG_MLCACHE_GS_"
    out = {f"{prefix}TYPE": "google cloud storage"}
    if env.get("GOOGLE_APPLICATION_CREDENTIALS"):
        out[f"{prefix}SERVICE_ACCOUNT_FILE"] = env["GOOGLE_APPLICATION_CREDENTIALS"]
    else:
        out[f"{prefix}ENV_AUTH"] = "true"
    return out


def to_rclone(url: str, env: Mapping[str, str] | None = None, configured: frozenset[str] = frozenset()) -> RclonePath:
    """The rclone path of an artifact URL; `configured` names the remotes of the rclone config file."""
    env = os.environ if env is None else env
    check_url_text(url)
    if url.startswith("/"):
        return RclonePath(url, local=True)
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise UnsupportedUrl(f"file URL with a host is not a local path: {url!r}")
        return RclonePath(unquote(parsed.path), local=True)
    if scheme in ("s3", "s3a", "gs", "az", "wasbs", "wasb") and not parsed.netloc:
        raise UnsupportedUrl(f"artifact URL without a bucket or container: {url!r}")
    key = parsed.path.lstrip("/")
    if scheme in ("s3", "s3a"):
        if _remote_configured("s3", env, configured):
            return RclonePath(f"s3:{parsed.netloc}/{key}")
        return RclonePath(f"MLCACHE_S3:{parsed.netloc}/{key}", _s3_env(env))
    if scheme == "gs":
        if _remote_configured("gs", env, configured):
            return RclonePath(f"gs:{parsed.netloc}/{key}")
        return RclonePath(f"MLCACHE_GS:{parsed.netloc}/{key}", _gcs_env(env))
    if scheme in ("az", "wasbs", "wasb"):
        container, _, host = parsed.netloc.partition("@")
        account = host.split(".", 1)[0] if host else None
        if _remote_configured("az", env, configured):
            return RclonePath(f"az:{container}/{key}")
        return RclonePath(f"MLCACHE_AZ:{container}/{key}", _azure_env(env, account))
    raise UnsupportedUrl(f"no rclone mapping for artifact URL {url!r} (supported: s3, gs, az, wasbs, file, /path)")


_GLOB_SPECIAL = frozenset("\\*?[]{}")


def literal_pattern(name: str) -> str:
    """An rclone filter glob matching exactly `name`: every special character escaped with `\\`, so
    globs, braces and backslashes in names are taken literally (and rclone can still prune folders)."""
    return "".join(f"\\{c}" if c in _GLOB_SPECIAL else c for c in name)
