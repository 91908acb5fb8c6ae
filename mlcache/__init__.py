"""mlcache: an offline-first caching store for ML artifacts and metadata in front of MLflow."""

from __future__ import annotations

from .artifact_store import UnsafeArtifact
from .artifacts import ArtifactUploadError
from .base import BaseMlflowApi, CacheFallbackWarning
from .bundle import BundleError
from .entities import Experiment, LoggedModel, Model, ModelVersion, Run, RunStatus
from .errors import (
    BackendError,
    CacheMiss,
    CacheNotWritable,
    CorruptMetadata,
    EntityExists,
    EntityNotFound,
    InvalidIdentifier,
    InvalidSetting,
    LockTimeout,
    MlcacheError,
    OfflineModeError,
    PluginNotFound,
    ServerUnreachable,
    UntrustedSource,
)
from .handles import ExpApi, LoggedModelApi, ModelApi, ModelVersionApi, RunApi
from .locks import release_holds
from .names import UnsafePath
from .plugins import get_api
from .query import InvalidQuery
from .retry import RetryPolicy
from .transfer import RcloneTransfer, Transfer, TransferError

__version__ = "0.1.0"

__all__ = [
    "ArtifactUploadError",
    "BackendError",
    "BaseMlflowApi",
    "BundleError",
    "CacheFallbackWarning",
    "CacheMiss",
    "CacheNotWritable",
    "CorruptMetadata",
    "EntityExists",
    "EntityNotFound",
    "ExpApi",
    "Experiment",
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
    "RcloneTransfer",
    "RetryPolicy",
    "Run",
    "RunApi",
    "RunStatus",
    "ServerUnreachable",
    "Transfer",
    "TransferError",
    "UnsafeArtifact",
    "UnsafePath",
    "UntrustedSource",
    "__version__",
    "get_api",
    "release_holds",
]
