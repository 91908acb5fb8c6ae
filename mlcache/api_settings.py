"""`ApiSettings`: what configures an api, validated once and frozen.

Each setting has a default, most of them from an `MLCACHE_*` variable (`mlcache.settings`). A bad
value is an `InvalidSetting` naming it; a live api's settings cannot change, and a copy with
others (`model_copy`) gets stores and engines of its own, built by `model_post_init`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from typing_extensions import Self

from .errors import InvalidSetting
from .progress import TransferProgress
from .rclone import RcloneTransfer
from .retry import RetryPolicy
from .settings import env_bool, env_choice, env_list, env_path, env_seconds
from .transfer import Transfer

LOCK_MODES = ("os", "soft")
MIN_TIMEOUT = 0.1


def default_cache_dir() -> Path:
    """`MLCACHE_CACHE_DIR`, else the user's cache dir."""
    return env_path("MLCACHE_CACHE_DIR") or Path(platformdirs.user_cache_dir("mlcache"))


class ApiSettings(BaseModel):
    """The settings every api has; plugins add their own fields."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", frozen=True)

    cache_dir: Path = Field(default_factory=default_cache_dir)
    offline_mode: bool = Field(default_factory=lambda: env_bool("MLCACHE_OFFLINE"))
    metadata_max_age: timedelta = Field(
        default_factory=lambda: timedelta(seconds=env_seconds("MLCACHE_METADATA_MAX_AGE", 0.0))
    )
    timeout: float = Field(
        default_factory=lambda: env_seconds("MLCACHE_TIMEOUT", 10.0, minimum=MIN_TIMEOUT), ge=MIN_TIMEOUT
    )
    lock_timeout: float = 60.0
    lock_mode: Literal["os", "soft"] = Field(
        default_factory=lambda: env_choice("MLCACHE_LOCK_MODE", LOCK_MODES, "os")  # type: ignore[arg-type]
    )
    stale_lock_age: float = 900.0
    pull_lock_timeout: float = 3600.0
    transfer: Transfer = Field(default_factory=RcloneTransfer)
    always_pull_artifacts: bool = False
    allowed_sources: tuple[str, ...] = Field(default_factory=lambda: env_list("MLCACHE_ALLOWED_SOURCES"))
    pull_artifacts_in_offline_mode: bool = False
    cache_local_artifacts: bool = True
    show_progress: bool = False
    progress: Callable[[str], TransferProgress] | None = None
    """Makes the progress reporter of each pull or upload, given what to call it; by default, with
    `show_progress`, a bar when stderr is a terminal and plain lines elsewhere."""
    retry: RetryPolicy = Field(default_factory=RetryPolicy.from_env)
    signing_key: Path | None = Field(default_factory=lambda: env_path("MLCACHE_SIGNING_KEY"))
    """The private key (PEM, EC P-256; `mlcache keygen`) exports sign with."""
    trusted_keys: Path | None = Field(default_factory=lambda: env_path("MLCACHE_TRUSTED_KEYS"))
    """A public key file, or a folder of them: imports then refuse what they did not sign."""

    def __init__(self, **conf: Any) -> None:
        """Settings are validated here: a bad argument is an `InvalidSetting` naming it."""
        try:
            super().__init__(**conf)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "settings"
            raise InvalidSetting(f"{type(self).__name__}: {where}: {first['msg']}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name in type(self).model_fields:
            raise InvalidSetting(
                f"settings of a live api cannot change ({name}); make a copy: api.with_cache_dir(...), "
                "api.in_offline_mode, or type(api)(**settings)"
            )
        super().__setattr__(name, value)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy with `update` applied and validated (an `InvalidSetting` for a bad value), its
        stores and engines built for the new settings."""
        settings = {name: getattr(self, name) for name in type(self).model_fields}
        if deep:
            settings = copy.deepcopy(settings)
        return type(self)(**{**settings, **(update or {})})
