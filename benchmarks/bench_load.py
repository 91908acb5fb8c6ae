#!/usr/bin/env python
"""Benchmark "process start to loaded model": `mlflow.pyfunc.load_model` through `mlcache://` vs `models:/`.

One run does everything, against real local servers started here (`rclone serve s3` as the
S3-compatible store, `mlflow server` with artifact root `s3://bucket/mlartifacts`):

1. plain MLflow (in a subprocess) logs a pyfunc model whose artifact `weights` is one file of
   random bytes (100 MiB; 20 MiB with --quick), registers it as `bench-model` version 1 and sets
   the alias `champion`; the model's `load_context` reads the whole file;
2. each measurement spawns a fresh `python -c` process that imports mlflow, calls
   `mlflow.pyfunc.load_model(URI)` and prints a marker; the wall clock from spawn to exit is timed:
     - import mlflow                 `python -c "import mlflow"` alone (the startup floor);
     - mlcache cold                  `mlcache://models/bench-model@champion`, empty cache (once);
     - mlcache warm @champion        the same URI once the cache is filled (alias resolved online);
     - mlcache warm /1               `mlcache://models/bench-model/1`;
     - mlcache offline @champion /1  both URIs with MLCACHE_OFFLINE=1;
     - mlflow models:/@champion      plain MLflow against the live server (downloads every time);
     - mlflow local dir              diagnostic: `load_model(<a plain copy of the model folder>)`, i.e.
                                     MLflow's own cost of loading this model with nothing to fetch;
   repetitions are interleaved across cases; best and median are reported;
3. every load runs with TMPDIR set to a fresh empty folder, whose size is measured after the
   process exits: that is what a load leaves on disk outside the cache (MLflow downloads
   `models:/` into `tempfile.mkdtemp()` and never removes it). The cache dir is measured before
   and after each mlcache load too.

Usage: python benchmarks/bench_load.py [--quick] [--repeats N] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from common import disk_bytes, rmtree, tree_stats  # noqa: E402

from servers import start_mlflow_server, start_s3_server  # noqa: E402

MiB = 1024 * 1024
MODEL = "bench-model"

LOG_MODEL = textwrap.dedent(
    """
    import json, sys
    import mlflow

    class Weights(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            self.path = context.artifacts["weights"]
            n = 0
            with open(self.path, "rb") as handle:
                while chunk := handle.read(8 << 20):
                    n += len(chunk)
            self.nbytes = n

        def predict(self, context, model_input, params=None):
            return [self.nbytes] * len(model_input)

    url, weights, registered = sys.argv[1:4]
    mlflow.set_tracking_uri(url)
    mlflow.set_experiment("bench-load")
    with mlflow.start_run() as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=Weights(), artifacts={"weights": weights},
                                       registered_model_name=registered, pip_requirements=["mlflow"])
    mlflow.MlflowClient().set_registered_model_alias(registered, "champion", info.registered_model_version)
    print(json.dumps({"run_id": run.info.run_id, "model_id": info.model_id,
                      "version": str(info.registered_model_version)}))
    """
)

# What a user's process does, plus timestamps (perf_counter is per process: only differences).
LOAD = textwrap.dedent(
    """
    import json, sys, time
    t0 = time.perf_counter()
    import mlflow
    t1 = time.perf_counter()
    model = mlflow.pyfunc.load_model(sys.argv[1])
    t2 = time.perf_counter()
    inner = model.unwrap_python_model()
    print("LOADED " + json.dumps({"nbytes": inner.nbytes, "path": inner.path, "import": t1 - t0, "load": t2 - t1}))
    """
)

IMPORT_ONLY = textwrap.dedent(
    """
    import time
    t0 = time.perf_counter()
    import mlflow
    t1 = time.perf_counter()
    import json
    print("LOADED " + json.dumps({"nbytes": 0, "path": "", "import": t1 - t0, "load": 0.0}))
    """
)

PROFILE = textwrap.dedent(
    """
    import cProfile, io, pstats, sys, time
    import mlflow
    profile = cProfile.Profile()
    t0 = time.perf_counter()
    profile.enable()
    model = mlflow.pyfunc.load_model(sys.argv[1])
    profile.disable()
    print(f"load_model {time.perf_counter() - t0:.3f}s (under cProfile)")
    top = int(sys.argv[2])
    for title, restrict in (("top by cumulative time", (top,)), ("mlcache's functions", ("/mlcache/", top))):
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(*restrict)
        body = out.getvalue()
        print(f"-- {title}:" + body[body.find("   ncalls") - 1 :].rstrip())
    """
)

PROFILE_IMPORTS = textwrap.dedent(
    """
    import sys
    import mlflow
    sys.stderr.write("==LOAD==\\n")
    sys.stderr.flush()
    mlflow.pyfunc.load_model(sys.argv[1])
    """
)


# ----------------------------------------------------------------------------- helpers


def make_weights(path: Path, size: int) -> None:
    with open(path, "wb") as handle:
        left = size
        while left:
            chunk = min(left, 8 * MiB)
            handle.write(os.urandom(chunk))
            left -= chunk


def human(nbytes: float) -> str:
    if nbytes == 0:
        return "0 B"
    for unit, scale in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1024)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes:.0f} B"


@dataclass
class Case:
    key: str
    label: str
    script: str
    uri: str
    env: dict[str, str]
    in_cache: bool  # an mlcache load: the weights must be read from the cache dir
    times: list[float] = field(default_factory=list)
    inner_import: list[float] = field(default_factory=list)
    inner_load: list[float] = field(default_factory=list)
    tmp_bytes: list[int] = field(default_factory=list)
    tmp_files: list[int] = field(default_factory=list)
    cache_growth: list[int] = field(default_factory=list)


# ----------------------------------------------------------------------------- the benchmark
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.size = (20 if args.quick else 100) * MiB
        self.repeats = args.repeats or (3 if args.quick else 5)
        self.scratch = Path(tempfile.mkdtemp(prefix="mlcache-bench-load-", dir="/tmp"))
        self.cache = self.scratch / "cache"
        self.s3: Any = None
        self.server: Any = None
        self.cold: Case | None = None
        self.cases: list[Case] = []
        self.n_loads = 0
        self.local = self.scratch / "local-model"

    # ------------------------------------------------------------------ setup
    def base_env(self) -> dict[str, str]:
        """The benchmark's environment, without any mlcache/MLflow setting that would leak in."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLCACHE_", "MLFLOW_"))}
        env.update(self.s3.env)
        env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        env["TMPDIR"] = str(self.scratch / "tmp")
        return env

    def start(self) -> None:
        t = time.perf_counter()
        self.s3 = start_s3_server(self.scratch / "s3")
        self.s3.bucket("bucket")
        (self.scratch / "tmp").mkdir()
        self.server = start_mlflow_server(
            self.scratch / "mlflow", artifact_root="s3://bucket/mlartifacts", env=self.s3.env
        )
        print(f"servers up in {time.perf_counter() - t:.1f}s: mlflow {self.server.url}, s3 {self.s3.endpoint}")

    def log_model(self) -> None:
        weights = self.scratch / "src" / "weights.bin"
        weights.parent.mkdir()
        make_weights(weights, self.size)
        t = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-c", LOG_MODEL, self.server.url, str(weights), MODEL],
            capture_output=True,
            text=True,
            timeout=600,
            env=self.base_env(),
        )
        if result.returncode != 0:
            raise RuntimeError(f"logging the model failed:\n{result.stderr[-3000:]}")
        self.info = json.loads(result.stdout.strip().splitlines()[-1])
        rmtree(weights.parent)
        rmtree(self.scratch / "tmp")
        (self.scratch / "tmp").mkdir()
        print(
            f"logged {MODEL} v{self.info['version']} ({human(self.size)} weights, model {self.info['model_id']}) "
            f"with plain MLflow in {time.perf_counter() - t:.1f}s; alias champion"
        )

    def define_cases(self) -> None:
        plain = {**self.base_env(), "MLFLOW_TRACKING_URI": self.server.url}
        cached = {**plain, "MLCACHE_CACHE_DIR": str(self.cache)}
        offline = {**cached, "MLCACHE_OFFLINE": "1"}
        patient = {**cached, "MLCACHE_METADATA_MAX_AGE": "3600"}
        alias, version = f"mlcache://models/{MODEL}@champion", f"mlcache://models/{MODEL}/1"
        self.cold = Case("cold", "mlcache cold @champion (empty cache)", LOAD, alias, cached, True)
        self.cases = [
            Case("floor", "python -c 'import mlflow' (floor)", IMPORT_ONLY, "", plain, False),
            Case("local", "mlflow load_model(<local dir>) (diag.)", LOAD, str(self.local), plain, False),
            Case("alias", "mlcache warm @champion", LOAD, alias, cached, True),
            Case("version", "mlcache warm /1", LOAD, version, cached, True),
            Case("max-age", "mlcache warm @champion, max age 1h", LOAD, alias, patient, True),
            Case("off-alias", "mlcache warm @champion OFFLINE", LOAD, alias, offline, True),
            Case("off-version", "mlcache warm /1 OFFLINE", LOAD, version, offline, True),
            Case("mlflow", "mlflow models:/bench-model@champion", LOAD, f"models:/{MODEL}@champion", plain, False),
        ]

    # ------------------------------------------------------------------ one load
    def load(self, case: Case) -> dict:
        """One fresh process; TMPDIR is a new empty folder, measured after the process exits."""
        self.n_loads += 1
        tmp = self.scratch / "tmp-loads" / f"{case.key}-{self.n_loads}"
        tmp.mkdir(parents=True)
        env = {**case.env, "TMPDIR": str(tmp)}
        cache_before = disk_bytes(self.cache)
        args = [sys.executable, "-c", case.script] + ([case.uri] if case.uri else [])
        t = time.perf_counter()
        result = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, stdin=subprocess.DEVNULL)
        elapsed = time.perf_counter() - t
        marker = [line for line in result.stdout.splitlines() if line.startswith("LOADED ")]
        if result.returncode != 0 or not marker:
            raise RuntimeError(f"{case.label}: exit {result.returncode}\n{result.stderr[-3000:]}")
        info = json.loads(marker[-1][len("LOADED ") :])
        if case.script is LOAD:
            if info["nbytes"] != self.size:
                raise RuntimeError(f"{case.label}: load_context read {info['nbytes']} bytes, want {self.size}")
            inside = Path(info["path"]).resolve().is_relative_to(self.cache.resolve())
            if inside != case.in_cache:
                raise RuntimeError(f"{case.label}: weights loaded from {info['path']} (cache dir {self.cache})")
        files, size = tree_stats(tmp)
        case.times.append(elapsed)
        case.inner_import.append(info["import"])
        case.inner_load.append(info["load"])
        case.tmp_bytes.append(size)
        case.tmp_files.append(files)
        case.cache_growth.append(disk_bytes(self.cache) - cache_before)
        rmtree(tmp)
        return info

    def run(self) -> None:
        assert self.cold is not None
        entry = Path(self.load(self.cold)["path"])
        print(f"  cold load: {self.cold.times[0]:.2f}s")
        while not (entry / "MLmodel").exists():  # the cached model folder holding the weights
            entry = entry.parent
        shutil.copytree(entry, self.local)  # the diagnostic "local dir" case loads a plain copy of it
        for case in self.cases:  # one untimed warm-up per case (page cache, .pyc files)
            self.load(case)
            for series in (case.times, case.inner_import, case.inner_load, case.tmp_bytes, case.tmp_files):
                series.clear()
            case.cache_growth.clear()
        for rep in range(self.repeats):
            t = time.perf_counter()
            for case in self.cases:
                self.load(case)
            print(f"  repetition {rep + 1}/{self.repeats}: {time.perf_counter() - t:.1f}s")

    # ------------------------------------------------------------------ profile
    def profile(self, top: int = 25) -> None:
        for key in ("alias", "version"):
            case = next(c for c in self.cases if c.key == key)
            env = {**case.env, "TMPDIR": str(self.scratch / "tmp")}
            print(f"\n== python -X importtime: modules imported DURING load_model({case.uri}), warm ==")
            result = subprocess.run(
                [sys.executable, "-X", "importtime", "-c", PROFILE_IMPORTS, case.uri],
                capture_output=True,
                text=True,
                env=env,
            )
            lines = result.stderr.split("==LOAD==\n", 1)[-1].splitlines()
            rows = []
            for line in lines:
                if line.startswith("import time:") and "cumulative" not in line:
                    self_us, cum_us, name = line[len("import time:") :].split("|", 2)
                    rows.append((int(cum_us), int(self_us), name.rstrip()))
            outer = min((len(n) - len(n.lstrip()) for _, _, n in rows), default=0)
            total = sum(cum for cum, _, n in rows if len(n) - len(n.lstrip()) == outer)
            print(f"  {len(rows)} modules, {total / 1000:.1f} ms in total (top-level cumulative)")
            for cum, own, name in sorted(rows, reverse=True)[:top]:
                print(f"  {cum / 1000:9.1f} ms cum {own / 1000:8.1f} ms self  {name}")
            ours = [r for r in rows if r[2].strip().split(".")[0] == "mlcache"]
            print(f"  mlcache modules among them: {len(ours)}, self time {sum(r[1] for r in ours) / 1000:.1f} ms")
            print(f"\n== cProfile of load_model({case.uri}) alone (after import mlflow), warm ==")
            result = subprocess.run(
                [sys.executable, "-c", PROFILE, case.uri, str(top)], capture_output=True, text=True, env=env
            )
            print(result.stdout if result.returncode == 0 else result.stderr[-3000:])

    # ------------------------------------------------------------------ report
    def versions(self) -> str:
        import mlflow

        import mlcache

        return f"mlflow {mlflow.__version__}, mlcache {getattr(mlcache, '__version__', '?')}"

    def report(self, elapsed: float) -> bool:
        assert self.cold is not None
        a = self.args
        print("")
        now = datetime.datetime.now().isoformat(timespec="seconds")
        print(f"mlcache bench_load{' --quick' if a.quick else ''}: {now}")
        print(
            f"machine: {os.cpu_count()} cores (affinity {len(os.sched_getaffinity(0))}), {platform.machine()}, "
            f"Python {platform.python_version()}, {self.versions()}"
        )
        print(
            f"model: pyfunc, {human(self.size)} weights file read fully by load_context; store: rclone serve s3 "
            "on 127.0.0.1"
        )
        print(
            f"wall clock from spawn to exit of `python -c` (import mlflow + load_model), best / median of "
            f"{self.repeats}, interleaved"
        )
        print("in-process: median seconds of `import mlflow` and of `load_model` inside the child")
        print(
            "tmp/load: what one load left in its (fresh) TMPDIR, max; cache growth: of the cache dir on disk "
            "(hardlinks once), summed over the case's timed loads"
        )
        print("")
        head = (
            f"{'case':38s} {'best s':>7s} {'median s':>9s} {'import s':>9s} {'load s':>7s} "
            f"{'tmp/load':>10s} {'cache growth':>13s}"
        )
        print(head)
        print("-" * len(head))
        for case in [self.cold, *self.cases]:
            cache = human(sum(case.cache_growth)) if case.in_cache else "-"
            print(
                f"{case.label:38s} {min(case.times):7.3f} {statistics.median(case.times):9.3f} "
                f"{statistics.median(case.inner_import):9.3f} {statistics.median(case.inner_load):7.3f} "
                f"{human(max(case.tmp_bytes)):>10s} {cache:>13s}"
            )
        by = {c.key: c for c in self.cases}
        med = {k: statistics.median(c.times) for k, c in by.items()}
        best = {k: min(c.times) for k, c in by.items()}
        floor = med["floor"]
        ok = True

        def line(label: str, value: float | None, target: str, met: bool | None) -> None:
            shown = "n/a" if value is None else f"{value:.2f}x"
            flag = "(no target)" if met is None else ("yes" if met else "NO")
            print(f"  {label:58s} {shown:>9s}  {target:>7s}  {flag}")

        print("")
        print("Speedup of mlcache warm over mlflow models:/ (process start to loaded model)  value   target  met")
        for key in ("alias", "max-age", "version", "off-alias", "off-version"):
            ratio = med["mlflow"] / med[key]
            ok &= ratio >= 5
            line(f"{by[key].label}  (median)", ratio, ">= 5x", ratio >= 5)
            line(f"{by[key].label}  (best)", best["mlflow"] / best[key], "", None)
        print("")
        print(f"Same, ABOVE THE `import mlflow` FLOOR (median {floor:.3f}s subtracted from both; diagnostic)")
        for key in ("alias", "max-age", "version", "off-alias", "off-version"):
            above = med[key] - floor
            if above <= 0.010:  # within noise of the floor: the ratio is meaningless
                label = f"{by[key].label}  (median - floor)"
                print(f"  {label:58s} {'n/a':>9s}  mlcache {above * 1000:+.0f} ms over floor")
                continue
            line(f"{by[key].label}  (median - floor)", (med["mlflow"] - floor) / above, "", None)
            print(
                f"  {'':58s} mlcache {above * 1000:.0f} ms vs mlflow {(med['mlflow'] - floor) * 1000:.0f} ms over floor"
            )
        load = {k: statistics.median(c.inner_load) for k, c in by.items()}
        print("")
        print("In-process `load_model` time only (median; no interpreter start, no import; diagnostic)")
        for key in ("alias", "max-age", "version", "off-alias", "off-version"):
            line(
                f"{by[key].label}  (mlflow {load['mlflow']:.3f}s / {load[key]:.3f}s)",
                load["mlflow"] / load[key],
                "",
                None,
            )
        line(
            f"load_model(<local dir>)  (mlflow {load['mlflow']:.3f}s / {load['local']:.3f}s)",
            load["mlflow"] / load["local"],
            "",
            None,
        )
        local = load["local"]
        print("")
        print(
            f"mlcache's own cost: in-process load_model median minus `load_model(<local dir>)` ({local:.3f}s; "
            "diagnostic)"
        )
        for key in ("alias", "max-age", "version", "off-alias", "off-version"):
            print(f"  {by[key].label:58s} {(load[key] - local) * 1000:+7.0f} ms")
        print(
            f"  {by['mlflow'].label:58s} {(load['mlflow'] - local) * 1000:+7.0f} ms  (MLflow's download, for reference)"
        )
        alias_cost = (load["alias"] - load["version"]) * 1000
        ok &= alias_cost <= 50
        print("")
        print("Warm @alias, checked with the server, over warm /1 (in-process load_model medians)   value  target  met")
        print(
            f"  {'mlcache warm @champion minus mlcache warm /1':58s} {alias_cost:+7.0f} ms  <= 50 ms  "
            f"{'yes' if alias_cost <= 50 else 'NO'}"
        )
        print("")
        print("Disk per load outside the cache (fresh TMPDIR per load; max over loads)      value   target  met")
        for key in ("alias", "max-age", "version", "off-alias", "off-version"):
            worst = max(by[key].tmp_bytes)
            grew = sum(by[key].cache_growth)
            met = worst == 0 and grew < MiB  # the cache may not grow by model bytes either
            ok &= met
            print(
                f"  {by[key].label:58s} {human(worst):>9s}  {'0 B':>7s}  {'yes' if met else 'NO'}"
                f"   (cache dir: {human(grew)} over {len(by[key].cache_growth)} loads)"
            )
        mlflow_tmp = statistics.median(by["mlflow"].tmp_bytes)
        print(
            f"  {by['mlflow'].label:58s} {human(mlflow_tmp):>9s}  {'':>7s}  (reference: "
            f"{statistics.median(by['mlflow'].tmp_files):.0f} files left in TMPDIR per load, never removed)"
        )
        print(
            f"  {self.cold.label:58s} {human(self.cold.tmp_bytes[0]):>9s}  {'':>7s}  (cold: staging is in <cache>/tmp)"
        )
        print("")
        print(f"total benchmark time {elapsed:.0f}s")
        return ok

    def stop(self) -> None:
        for server in (self.server, self.s3):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()
        rmtree(self.scratch)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 MiB model, 3 repetitions (smoke run)")
    parser.add_argument("--repeats", type=int, default=0, help="timed loads per case (default 5; 3 with --quick)")
    parser.add_argument("--profile", action="store_true", help="also -X importtime and cProfile of one warm load")
    args = parser.parse_args()

    start = time.perf_counter()
    bench = Bench(args)
    print(f"cores: {os.cpu_count()}; scratch {bench.scratch}")
    try:
        bench.start()
        bench.log_model()
        bench.define_cases()
        print("loads:")
        bench.run()
        if args.profile:
            bench.profile()
        passed = bench.report(time.perf_counter() - start)
    finally:
        bench.stop()
    print("all targets met" if passed else "SOME TARGETS NOT MET")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
