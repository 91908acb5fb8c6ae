"""mlcache's own REST reads of an MLflow server: they give the documents MlflowClient gives; a cold
pull imports no MLflow; an online alias check over a warm cache sends one request; they honour the
tracking token; a hostile server's malformed answers fail with one line and write nothing."""

from __future__ import annotations

import contextlib
import gc
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mlcache import BackendError, EntityNotFound, Run
from mlcache.plugins.mlflow import MlflowApi

from servers import MlflowServer, ServerProcess, _port_open, free_port, start_proxy, wait_until

ALIAS_CHECK = """
import json, sys
from mlcache.plugins.mlflow import MlflowApi
api = MlflowApi(tracking_uri=sys.argv[1], cache_dir=sys.argv[2])
path = api.get_model_artifact((sys.argv[3], "@prod"))
version = api.get_model_version((sys.argv[3], "@prod")).version
print(json.dumps({"text": path.read_text(), "version": version, "mlflow": "mlflow" in sys.modules}))
"""


def test_rest_reads_give_the_documents_mlflow_client_gives(
    mlflow_server: MlflowServer, tmp_path: Path, unique: str
) -> None:
    client = MlflowClient(mlflow_server.url)
    exp_name = f"agree-{unique}"
    exp_id = client.create_experiment(exp_name, tags={"team": "search", "deep.key": "1"})
    run_id = client.create_run(exp_id).info.run_id
    name = f"agree-{unique}"
    client.create_registered_model(name, tags={"stage": "beta"}, description="the model")
    client.create_model_version(name, "s3://bucket/agree/model", run_id)
    client.create_model_version(name, "s3://bucket/agree/model2", run_id)
    client.set_registered_model_alias(name, "prod", "1")
    client.set_registered_model_alias(name, "next", "2")
    logged = client.create_logged_model(
        exp_id, name="lm", source_run_id=run_id, tags={"t": "v"}, params={"lr": "0.1"}, model_type="clf"
    )
    client.log_metric(run_id, "acc", 0.5, step=1, model_id=logged.model_id)
    client.log_metric(run_id, "acc", 0.75, step=2, model_id=logged.model_id)
    client.finalize_logged_model(logged.model_id, "READY")
    pending = client.create_logged_model(exp_id, name="pending")

    def documents(api: MlflowApi) -> list[object]:
        return [
            api._impl_fetch_exp(exp_id),
            api._impl_fetch_exp_by_name(exp_name),
            api._impl_fetch_model(name),
            api._impl_fetch_model_version(name, "2"),
            api._impl_fetch_model_version_by_alias(name, "prod"),
            api._impl_fetch_run(run_id),
            api._impl_fetch_logged_model(logged.model_id),
            api._impl_fetch_logged_model(pending.model_id),
        ]

    by_rest = MlflowApi(tracking_uri=mlflow_server.url, cache_dir=tmp_path / "rest")
    by_client = MlflowApi(tracking_uri=mlflow_server.url, cache_dir=tmp_path / "client")
    by_client._readers = {True: None, False: None}
    rest_docs = documents(by_rest)
    assert rest_docs == documents(by_client)
    model, logged_doc, pending_doc = rest_docs[2], rest_docs[6], rest_docs[7]
    assert model["aliases"] == {"prod": "1", "next": "2"}  # type: ignore[index]
    assert model["tags"] == {"stage": "beta"}  # type: ignore[index]
    assert rest_docs[0]["tags"] == {"team": "search", "deep": {"key": 1}}  # type: ignore[index]
    assert (logged_doc["status"], logged_doc["metrics"], logged_doc["params"]) == ("READY", {"acc": 0.75}, {"lr": 0.1})  # type: ignore[index]
    assert pending_doc["status"] == "PENDING"  # type: ignore[index]
    for api in (by_rest, by_client):
        with pytest.raises(EntityNotFound):
            api._impl_fetch_model(f"no-such-{unique}")
        with pytest.raises(EntityNotFound):
            api._impl_fetch_exp_by_name(f"no-such-{unique}")
        with pytest.raises(EntityNotFound):
            api._impl_fetch_logged_model("m-" + "0" * 32)


COLD_PULL = """
import json, sys
from mlcache.plugins.mlflow import MlflowApi
api = MlflowApi(tracking_uri=sys.argv[1], cache_dir=sys.argv[2])
text = api.get_model_artifact((sys.argv[3], "1")).read_text()
model = api.get_model(sys.argv[3])
exp = api.get_exp(api.get_run(api.get_model_version((sys.argv[3], "1")).run_id).exp.id)
print(json.dumps({"text": text, "aliases": model.aliases, "exp": exp.name, "mlflow": "mlflow" in sys.modules}))
"""


def _in_child(script: str, url: str, cache: Path, name: str) -> dict:
    """What `script` prints last as JSON, run in a fresh interpreter (so its imports are its own)."""
    done = subprocess.run(
        [sys.executable, "-c", script, url, str(cache), name], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _writer_with_model(url: str, cache: Path, name: str, text: str) -> tuple[MlflowApi, Run]:
    """An api on `cache` that has registered `name` version 1 (alias prod, holding `text`), and its run."""
    writer = MlflowApi(tracking_uri=url, cache_dir=cache)
    run = writer.create_exp(f"exp-{name}").start_run("train")
    writer.log_model_version(name, run, lambda p: p.write_text(text), "model", aliases=["prod"])
    return writer, run


def test_a_cold_pull_with_its_metadata_imports_no_mlflow(
    mlflow_server: MlflowServer, tmp_path: Path, unique: str
) -> None:
    name = f"rest-cold-{unique}"
    _writer_with_model(mlflow_server.url, tmp_path / "writer", name, "weights")
    assert _in_child(COLD_PULL, mlflow_server.url, tmp_path / "cold", name) == {
        "text": "weights",
        "aliases": {"prod": "1"},
        "exp": f"exp-{name}",
        "mlflow": False,
    }


def test_an_alias_checked_online_over_a_warm_cache_sends_one_request_and_imports_no_mlflow(
    mlflow_server: MlflowServer, tmp_path: Path, unique: str
) -> None:
    name = f"rest-alias-{unique}"
    writer, run = _writer_with_model(mlflow_server.url, tmp_path / "writer", name, "v1")
    writer.log_model_version(name, run, lambda p: p.write_text("v2"), "model2")
    cache = tmp_path / "cache"
    MlflowApi(tracking_uri=mlflow_server.url, cache_dir=cache).get_model_artifact((name, "@prod"))
    proxy = start_proxy(tmp_path / "proxy", mlflow_server.url)
    try:
        assert _in_child(ALIAS_CHECK, proxy.url, cache, name) == {"text": "v1", "version": "1", "mlflow": False}
        asked = proxy.stats()["paths"]
        assert list(asked) == ["GET"]
        assert set(asked["GET"]) == {f"/api/2.0/mlflow/registered-models/alias?name={name}&alias=prod"}
        writer.set_model_alias((name, 2), "prod")
        moved = _in_child(ALIAS_CHECK, proxy.url, tmp_path / "cold", name)
        assert (moved["text"], moved["version"]) == ("v2", "2")
    finally:
        proxy.stop()


def test_rest_reads_send_the_tracking_token(
    mlflow_server: MlflowServer, tmp_path: Path, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = MlflowApi(tracking_uri=mlflow_server.url, cache_dir=tmp_path / "writer")
    run_id = writer.create_exp(f"exp-token-{unique}").start_run("train").id
    proxy = start_proxy(tmp_path / "auth", mlflow_server.url, require_token="s3cret")
    try:
        with pytest.raises(BackendError, match=r"^MLflow refused run '[0-9a-f]+': UNAUTHENTICATED: token required$"):
            MlflowApi(tracking_uri=proxy.url, cache_dir=tmp_path / "no-token").get_run(run_id)
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "s3cret")
        assert MlflowApi(tracking_uri=proxy.url, cache_dir=tmp_path / "token").get_run(run_id).id == run_id
    finally:
        proxy.stop()


HOSTILE_SERVER = """
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

answers = json.loads(open(sys.argv[2]).read())

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        return

    def _answer(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = answers.get(self.path, answers.get(urlparse(self.path).path, "{}")).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
server.timeout = 1.0
for _ in range(600):
    server.handle_request()
"""

API = "/api/2.0/mlflow/"
RUN_INFO = {"run_id": "a" * 32, "experiment_id": "1", "status": "FINISHED", "lifecycle_stage": "active"}
M1, M2 = "m-" + "1" * 32, "m-" + "2" * 32
HOSTILE_ANSWERS = {
    f"{API}runs/get": json.dumps({"run": {"info": {**RUN_INFO, "run_id": 5}}}),
    f"{API}model-versions/get": "<html>not json</html>",
    f"{API}registered-models/alias": json.dumps({"model_version": {"name": "m", "version": "1", "tags": "x"}}),
    f"{API}experiments/search": json.dumps({"experiments": [{"experiment_id": "1"}], "next_page_token": 7}),
    f"{API}runs/search": json.dumps({"runs": [{"info": RUN_INFO, "data": {"metrics": [{"key": "m", "value": "x"}]}}]}),
    f"{API}experiments/get": json.dumps({"experiment": {"experiment_id": "1", "name": ["e"]}}),
    f"{API}experiments/get-by-name": json.dumps({"experiment": {"experiment_id": "1", "name": "e", "tags": [{}]}}),
    f"{API}registered-models/get": json.dumps({"registered_model": {"name": "m", "aliases": [{"alias": "a"}]}}),
    f"{API}registered-models/get?name=m2": json.dumps({"registered_model": {"name": "m2", "aliases": {}}}),
    f"{API}registered-models/get?name=m3": json.dumps({"registered_model": {"name": "m3", "tags": {"k": "v"}}}),
    f"{API}runs/get?run_id=r2": json.dumps({"run": {"info": RUN_INFO, "data": {"params": {}}}}),
    f"{API}logged-models/{M1}": json.dumps({"model": {"info": {"model_id": M1, "name": "x", "experiment_id": 1}}}),
    f"{API}logged-models/{M2}": json.dumps(
        {"model": {"info": {"model_id": M2, "name": "x", "experiment_id": "1"}, "data": {"metrics": [{}]}}}
    ),
}


@contextlib.contextmanager
def answering_server(tmp_path: Path, answers: dict[str, str]) -> Iterator[str]:
    """A server giving these answers (by path, with or without its query), and `{}` elsewhere."""
    answers_file = tmp_path / "answers.json"
    answers_file.write_text(json.dumps(answers))
    port = free_port()
    server = ServerProcess(
        "hostile", [sys.executable, "-c", HOSTILE_SERVER, str(port), str(answers_file)], tmp_path / "hostile.log"
    )
    server.start()
    wait_until(lambda: _port_open(port), 20, "hostile server", server.proc)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def hostile_server(tmp_path: Path) -> Iterator[str]:
    with answering_server(tmp_path, HOSTILE_ANSWERS) as url:
        yield url


MALFORMED = "the server's answer has no well-formed"


def test_malformed_answers_fail_with_one_line_and_write_nothing(hostile_server: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    api = MlflowApi(tracking_uri=hostile_server, cache_dir=cache)
    expected: list[tuple[Callable[[], object], str]] = [
        (lambda: api.get_run("r1"), f"run 'r1' wrongly: {MALFORMED} run id"),
        (lambda: api.get_model_version(("m", "1")), "model version 'models:/m/1' wrongly: the answer to GET "),
        (lambda: api.get_model_version(("m", "@prod")), f"model version 'models:/m@prod' wrongly: {MALFORMED} model"),
        (lambda: list(api.find_runs({})), f"search 'experiments' wrongly: {MALFORMED} page of experiments"),
        (lambda: list(api.find_runs({"exp.id": "1"})), f"search 'runs' wrongly: {MALFORMED} run metric value"),
        (lambda: api.get_exp("1"), f"experiment '1' wrongly: {MALFORMED} experiment name"),
        (lambda: api.get_exp_by_name("e"), f"experiment 'e' wrongly: {MALFORMED} experiment tags"),
        (lambda: api.get_model("m"), f"model 'm' wrongly: {MALFORMED} registered model alias version"),
        (lambda: api.get_model("m2"), f"model 'm2' wrongly: {MALFORMED} registered model aliases"),
        (lambda: api.get_model("m3"), f"model 'm3' wrongly: {MALFORMED} registered model tags"),
        (lambda: api.get_run("r2"), f"run 'r2' wrongly: {MALFORMED} run params"),
        (lambda: api.get_logged_model(M1), f"logged model '{M1}' wrongly: {MALFORMED} logged model experiment id"),
        (lambda: api.get_logged_model(M2), f"logged model '{M2}' wrongly: {MALFORMED} logged model metric key"),
    ]
    for call, message in expected:
        with pytest.raises(BackendError) as caught:
            call()
        assert str(caught.value).startswith(f"MLflow answered {message}"), str(caught.value)
        assert "\n" not in str(caught.value)
    metadata = cache / "metadata"
    assert not metadata.exists() or [p for p in metadata.rglob("*") if p.is_file()] == []


def test_a_page_of_runs_is_read_with_the_collector_paused(tmp_path: Path, eager_collector: list[int]) -> None:
    runs = [
        {
            "info": {**RUN_INFO, "run_id": f"{i:032x}", "run_name": f"run-{i}", "start_time": 1700000000000 + i},
            "data": {
                "metrics": [{"key": "acc", "value": 0.5, "timestamp": 1, "step": 0}],
                "params": [{"key": "lr", "value": "0.1"}, {"key": "layers", "value": "4"}],
                "tags": [{"key": "team", "value": "a"}],
            },
        }
        for i in range(500)
    ]
    with answering_server(tmp_path, {f"{API}runs/search": json.dumps({"runs": runs})}) as url:
        api = MlflowApi(tracking_uri=url, cache_dir=tmp_path / "cache")
        api._impl_search_runs(["1"], {}, None)
        assert gc.isenabled()
        eager_collector.clear()
        page = api._impl_search_runs(["1"], {}, None)
        collections = len(eager_collector)
    assert [doc["id"] for doc in page.items] == [f"{i:032x}" for i in range(500)]
    assert page.items[7]["params"] == {"lr": 0.1, "layers": 4}
    assert collections < 100
