"""Transfers through MLflow's own artifact client, for URLs only the MLflow server can serve
(its artifact proxy, `mlflow-artifacts:`). Entries land in the same atomic, manifested cache."""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ...errors import EntityNotFound
from ...transfer import Listing, OnFile, Progress, PullPlan, RemoteFile, Transfer, file_by_file

T = TypeVar("T")


class MlflowArtifactsTransfer(Transfer):
    """List, pull and push with MLflow's artifact repositories, errors translated by `call`."""

    def __init__(self, tracking_uri: str, call: Callable[[str, str, Callable[[], Any]], Any]) -> None:
        self.tracking_uri = tracking_uri
        self._call = call

    def _repo(self, url: str) -> Any:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        return get_artifact_repository(url, tracking_uri=self.tracking_uri)

    def list(self, url: str) -> Listing:
        repo = self._repo(url)
        files: list[RemoteFile] = []

        def walk(path: str | None) -> None:
            for info in self._call("artifact", url, lambda: repo.list_artifacts(path)):
                if info.is_dir:
                    walk(info.path)
                else:
                    files.append(RemoteFile(info.path, int(info.file_size or 0)))

        walk(None)
        if files:
            return Listing(url, True, tuple(files))
        parent, _, name = url.rstrip("/").rpartition("/")
        for info in self._call("artifact", url, lambda: self._repo(parent).list_artifacts(None)):
            if info.path.rstrip("/").rpartition("/")[2] == name and not info.is_dir:
                return Listing(url, False, (RemoteFile(name, int(info.file_size or 0)),))
        raise EntityNotFound("artifact", url, "nothing at that location")

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
        dest.mkdir(parents=True, exist_ok=True)
        with file_by_file(progress, url, sum(f.size for f in files), dest) as advanced:
            if listing.is_dir:
                repo = self._repo(listing.url)
                for item in files:
                    download = functools.partial(repo.download_artifacts, item.path, dst_path=str(dest))
                    self._call("artifact", listing.url, download)
                    advanced(item.size)
            else:
                parent, _, name = listing.url.rstrip("/").rpartition("/")
                self._call(
                    "artifact", listing.url, lambda: self._repo(parent).download_artifacts(name, dst_path=str(dest))
                )
                advanced(listing.files[0].size)

    def push(self, src: Path, url: str, progress: Progress = False) -> None:
        if src.is_dir():
            self._call("artifact", url, lambda: self._repo(url).log_artifacts(str(src)))
            return
        parent, _, name = url.rstrip("/").rpartition("/")
        if src.name == name:
            self._call("artifact", url, lambda: self._repo(parent).log_artifact(str(src)))
            return
        with tempfile.TemporaryDirectory() as tmp:
            renamed = Path(tmp) / name
            shutil.copy2(src, renamed)
            self._call("artifact", url, lambda: self._repo(parent).log_artifact(str(renamed)))

    def delete(self, url: str) -> None:
        listing = self.list(url)
        if listing.is_dir:
            self._call("artifact", url, lambda: self._repo(url).delete_artifacts(None))
        else:
            parent, _, name = url.rstrip("/").rpartition("/")
            self._call("artifact", url, lambda: self._repo(parent).delete_artifacts(name))
