"""The `mlflow` plugin's search hooks: one page of MLflow's own search per call, the mongo query
pushed down as far as MLflow's filter language carries it (`filters`), runs read by mlcache's own
REST where it can send what MlflowClient would."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ...hooks import ExpDoc, LoggedModelDoc, ModelDoc, ModelVersionDoc, Page, RunDoc
from .docs import exp_doc, logged_doc, model_doc, mv_doc, run_doc
from .filters import exps_filter, model_versions_filter, models_filter, quote_string, runs_filter
from .paging import SearchState
from .rest import RestReader, read_experiment_ids_page, read_runs_page

if TYPE_CHECKING:
    from mlflow import MlflowClient

T = TypeVar("T")


def _run_docs_page(answer: dict[str, Any]) -> tuple[list[RunDoc], str | None]:
    """The run documents and next page token of a runs search answer."""
    runs, token = read_runs_page(answer)
    return [run_doc(run) for run in runs], token


class MlflowSearches:
    """Mixed into `MlflowApi`, which provides the client, the REST readers, `_call` and `_rest`."""

    if TYPE_CHECKING:

        @property
        def client(self) -> MlflowClient: ...

        def _call(self, what: str, key: str, fn: Callable[[], T]) -> T: ...

        def _reader(self, registry: bool) -> RestReader | None: ...

        def _rest(
            self,
            reader: RestReader,
            what: str,
            key: str,
            request: tuple[str, str, dict[str, Any]],
            read: Callable[[dict[str, Any]], T],
        ) -> T: ...

        def _impl_fetch_model(self, name: str) -> ModelDoc: ...

    def _all_exp_ids(self) -> list[str]:
        """Ids of every experiment (deleted ones included), for searches over all of them."""
        reader = self._reader(registry=False)
        if reader is not None:
            return self._all_exp_ids_by_rest(reader)
        from mlflow.entities import ViewType

        ids: list[str] = []
        token: str | None = None
        while True:
            page = self._call(
                "search",
                "experiments",
                functools.partial(self.client.search_experiments, ViewType.ALL, max_results=1000, page_token=token),
            )
            ids.extend(exp.experiment_id for exp in page)
            token = page.token
            if not token:
                return sorted(ids)

    def _all_exp_ids_by_rest(self, reader: RestReader) -> list[str]:
        ids: list[str] = []
        body: dict[str, Any] = {"view_type": "ALL", "max_results": 1000}
        for _ in range(100_000):
            request = ("POST", "experiments/search", body)
            found, token = self._rest(reader, "search", "experiments", request, read_experiment_ids_page)
            ids.extend(found)
            if not token:
                break
            body["page_token"] = token
        return sorted(ids)

    def _impl_search_exps(self, query: dict[str, Any], page_token: str | None) -> Page[ExpDoc]:
        from mlflow.entities import ViewType

        pushed = exps_filter(query)
        page = self._call(
            "search",
            "experiments",
            lambda: self.client.search_experiments(
                ViewType.ALL, max_results=1000, filter_string=pushed.filter_string or None, page_token=page_token
            ),
        )
        return Page([exp_doc(exp) for exp in page], page.token or None)

    def _impl_search_logged_models(
        self, exp_ids: list[str] | None, query: dict[str, Any], page_token: str | None
    ) -> Page[LoggedModelDoc]:
        state = SearchState.read(page_token)
        ids = state.exp_ids if state.exp_ids is not None else (sorted(exp_ids) if exp_ids else self._all_exp_ids())
        if not ids:
            return Page()
        name = query.get("name")
        literal = quote_string(name) if isinstance(name, str) else None
        filter_string = f"name = {literal}" if literal else None
        page = self._call(
            "search",
            "logged models",
            lambda: self.client.search_logged_models(
                ids, filter_string=filter_string, max_results=100, page_token=state.token
            ),
        )
        return Page([logged_doc(lm) for lm in page], SearchState(ids, 0, page.token).next(1))

    def _impl_search_runs(
        self, exp_ids: list[str] | None, query: dict[str, Any], page_token: str | None
    ) -> Page[RunDoc]:
        pushed = runs_filter(query)
        if exp_ids is not None:
            pushed.narrow_exp_ids(set(exp_ids))
        state = SearchState.read(page_token)
        ids = state.exp_ids
        if ids is None:
            ids = self._all_exp_ids() if pushed.exp_ids is None else sorted(pushed.exp_ids)
        chunks = list(pushed.filter_strings())
        if not ids or not chunks:
            return Page()
        flt = chunks[state.chunk]
        reader = self._reader(registry=False)
        if reader is not None:
            body = {"experiment_ids": ids, "filter": flt, "run_view_type": "ALL", "max_results": 1000}
            if state.token:
                body["page_token"] = state.token
            docs, token = self._rest(reader, "search", "runs", ("POST", "runs/search", body), _run_docs_page)
            return Page(docs, SearchState(ids, state.chunk, token).next(len(chunks)))
        from mlflow.entities import ViewType

        page = self._call(
            "search",
            "runs",
            lambda: self.client.search_runs(ids, flt, ViewType.ALL, max_results=1000, page_token=state.token),
        )
        return Page([run_doc(run) for run in page], SearchState(ids, state.chunk, page.token).next(len(chunks)))

    def _impl_search_models(self, query: dict[str, Any], page_token: str | None) -> Page[ModelDoc]:
        pushed = models_filter(query)
        page = self._call(
            "search",
            "models",
            lambda: self.client.search_registered_models(
                pushed.filter_string or None, max_results=1000, page_token=page_token
            ),
        )
        return Page([model_doc(model) for model in page], page.token or None)

    def _impl_search_model_versions(self, query: dict[str, Any], page_token: str | None) -> Page[ModelVersionDoc]:
        """MLflow's version search leaves out aliases; they are taken from each model (one request per
        model a page meets), so write-through never erases what `get_model_version` stored."""
        pushed = model_versions_filter(query)
        chunks = list(pushed.filter_strings())
        if not chunks:
            return Page()
        state = SearchState.read(page_token)
        flt = chunks[state.chunk]
        page = self._call(
            "search",
            "model versions",
            lambda: self.client.search_model_versions(flt or None, max_results=1000, page_token=state.token),
        )
        aliases: dict[str, dict[str, str]] = {}
        docs = []
        for mv in page:
            doc = mv_doc(mv)
            name = doc["model_name"]
            if name not in aliases:
                aliases[name] = self._impl_fetch_model(name).get("aliases") or {}
            doc["aliases"] = sorted(a for a, version in aliases[name].items() if version == doc["version"])
            docs.append(doc)
        return Page(docs, SearchState(None, state.chunk, page.token).next(len(chunks)))
