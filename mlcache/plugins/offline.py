"""Plugin `offline`: cache-only over any cache dir or bundle; never imports mlflow."""

from __future__ import annotations

from typing import Any, NoReturn

from pydantic import field_validator

from ..base import BaseMlflowApi
from ..errors import OfflineModeError
from ..transfer import Transfer


class OfflineApi(BaseMlflowApi):
    """Reads a cache dir (or a bundle folder) with no backend at all; every write is refused."""

    offline_mode: bool = True

    @field_validator("offline_mode")
    @classmethod
    def _always_offline(cls, value: bool) -> bool:
        if not value:
            raise ValueError("the offline plugin has no backend; it cannot run with offline_mode=False")
        return value

    def _no_backend(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise OfflineModeError("the offline plugin has no backend to talk to")

    _impl_fetch_exp = _impl_fetch_exp_by_name = _impl_fetch_run = _impl_fetch_model = _no_backend
    _impl_fetch_model_version = _impl_fetch_model_version_by_alias = _impl_fetch_logged_model = _no_backend
    _impl_search_exps = _impl_search_runs = _impl_search_logged_models = _no_backend
    _impl_search_models = _impl_search_model_versions = _no_backend
    _impl_create_exp = _impl_set_exp_tags = _impl_rename_exp = _impl_delete_exp = _impl_restore_exp = _no_backend
    _impl_create_run = _impl_update_run = _impl_log_batch = _no_backend
    _impl_create_model = _impl_set_model_tags = _impl_create_model_version = _no_backend
    _impl_set_model_version_tags = _impl_set_model_alias = _no_backend

    def _impl_transfer_for(self, url: str) -> Transfer | None:
        """No transfer of its own: with `pull_artifacts_in_offline_mode`, the api's transfer pulls."""
        return None
