"""mlcache: an offline-first caching store for ML artifacts and metadata in front of MLflow."""

from __future__ import annotations

from .base import BaseMlflowApi
from .bundle import BundleLimits
from .cache_admin import AliasStatus, CleanReport, EntryUsage, PruneReport, RepairReport
from .entities import Experiment, LoggedModel, Model, ModelVersion, Run, RunStatus
from .errors import (
    ArtifactUploadError,
    BackendError,
    BundleError,
    CacheFallbackWarning,
    CacheMiss,
    CacheNotWritable,
    CorruptMetadata,
    EntityExists,
    EntityNotFound,
    IncompatibleCache,
    InvalidIdentifier,
    InvalidQuery,
    InvalidSetting,
    LockTimeout,
    MlcacheError,
    OfflineModeError,
    PluginNotFound,
    ServerUnreachable,
    TransferError,
    UnsafeArtifact,
    UnsafePath,
    UnsupportedUrl,
    UntrustedSource,
)
from .handles import ExpApi, LoggedModelApi, ModelApi, ModelVersionApi, RunApi
from .locks import release_holds
from .plugins import get_api
from .ranged import RangedSettings
from .rclone import RcloneTransfer
from .retry import RetryPolicy
from .transfer import Transfer

__version__ = "0.1.0"

__all__ = [
    "AliasStatus",
    "ArtifactUploadError",
    "BackendError",
    "BaseMlflowApi",
    "BundleError",
    "BundleLimits",
    "CacheFallbackWarning",
    "CacheMiss",
    "CacheNotWritable",
    "CleanReport",
    "CorruptMetadata",
    "EntityExists",
    "EntityNotFound",
    "EntryUsage",
    "ExpApi",
    "Experiment",
    "IncompatibleCache",
    "InvalidIdentifier",
    "InvalidQuery",
    "InvalidSetting",
    "LockTimeout",
    "LoggedModel",
    "LoggedModelApi",
    "MlcacheError",
    "Model",
    "ModelApi",
    "ModelVersion",
    "ModelVersionApi",
    "OfflineModeError",
    "PluginNotFound",
    "PruneReport",
    "RangedSettings",
    "RcloneTransfer",
    "RepairReport",
    "RetryPolicy",
    "Run",
    "RunApi",
    "RunStatus",
    "ServerUnreachable",
    "Transfer",
    "TransferError",
    "UnsafeArtifact",
    "UnsafePath",
    "UnsupportedUrl",
    "UntrustedSource",
    "__version__",
    "get_api",
    "release_holds",
]
