#!/usr/bin/env python
"""Where the CPU of a big cold pull goes: mlcache against MLflow's `download_artifacts`, same run.

On a machine where the store shares the cores with the client (here: `rclone serve s3` on
127.0.0.1, 2 cores), a pull is bound by CPU, not by the link, so the wall time follows the CPU
seconds spent by every process taking part. This measures them, per pull of one 256 MiB file
registered as version 1 of a model (`--size-mib` to change), medians of `--repeats`, the two tools
interleaved (order flipped every repetition), `os.sync()` before each:
  - client: this process's CPU (all threads: MLflow's boto3 workers, mlcache's streams and hashes);
  - rclone: the CPU of the rclone processes the pull ran (mlcache only; counted once reaped);
  - store: the CPU of the `rclone serve s3` process serving the bytes;
  - proxy (`--wan`): the CPU of `pacing_proxy.py` (20 ms per request, 40 MiB/s per connection),
    put in front of the store for both tools, as in bench_cold's WAN rows.
Beside them, the cost of the two hashes mlcache computes and MLflow does not (the sha256 every
manifest records, the MD5 compared with the store's), each over the file's bytes in memory. From
these: the shortest wall time any pull that hashes like mlcache could take on this many cores
(`floor`: MLflow's CPU plus the hashes, spread perfectly over the cores), and the ratio to MLflow
it would give.

Usage: python benchmarks/bench_cpu.py [--repeats 5] [--size-mib 256] [--wan] [--report FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from common import code_state, rmtree, s3_endpoint, start_store_and_server  # noqa: E402
from pacing_proxy import start_pacing_proxy  # noqa: E402

MODEL = "bench-cpu-big"


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def hash_seconds(algorithm: Callable[[], hashlib._Hash], data: bytes, repeats: int = 3) -> float:
    """Median seconds to hash `data` in 1 MiB pieces (as the pulls feed their hashes)."""
    view = memoryview(data)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        digest = algorithm()
        for offset in range(0, len(view), 1 << 20):
            digest.update(view[offset : offset + (1 << 20)])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--wan", action="store_true", help="through the pacing proxy (20 ms, 40 MiB/s per connection)")
    parser.add_argument("--report", type=Path, default=None)
    args = parser.parse_args()
    import mlflow
    from mlflow import MlflowClient

    from mlcache.plugins.mlflow import MlflowApi
    from mlcache.rclone import find_rclone

    cores = len(os.sched_getaffinity(0))
    scratch = Path(tempfile.mkdtemp(prefix="mlcache-bench-cpu-", dir="/tmp"))
    s3, server = start_store_and_server(scratch)
    lines: list[str] = []
    proxy = None

    def out(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    try:
        data = os.urandom(args.size_mib << 20)
        source = scratch / "src"
        source.mkdir()
        (source / "weights.bin").write_bytes(data)
        client = MlflowClient(tracking_uri=server.url)
        run = client.create_run(mlflow.create_experiment("bench-cpu"))
        with contextlib.redirect_stdout(io.StringIO()):
            client.log_artifacts(run.info.run_id, str(source), "model")
        client.create_registered_model(MODEL)
        client.create_model_version(MODEL, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        env = {**os.environ, **s3.rclone_env("S3")}
        folder = f"S3:{run.info.artifact_uri.removeprefix('s3://')}/model"
        # the store computes an object's MD5 on its first listing: not part of any timing
        subprocess.run([find_rclone(), "lsjson", "-R", "--hash", folder], env=env, check=True, capture_output=True)
        rmtree(source)
        proxy = start_pacing_proxy(s3.endpoint, 20.0, 40.0, workdir=scratch / "proxy") if args.wan else None
        watched = [s3.process.proc.pid] + ([proxy.proc.pid] if proxy is not None else [])
        endpoint = proxy.url if proxy is not None else None

        def mlcache_pull(dest: Path) -> Path:
            with s3_endpoint(endpoint):
                return Path(MlflowApi(tracking_uri=server.url, cache_dir=dest).get_model_artifact((MODEL, "1")))

        def mlflow_pull(dest: Path) -> Path:
            dest.mkdir()
            with s3_endpoint(endpoint), contextlib.redirect_stdout(io.StringIO()):
                return Path(
                    mlflow.artifacts.download_artifacts(
                        artifact_uri=f"models:/{MODEL}/1", dst_path=str(dest), tracking_uri=server.url
                    )
                )

        tools = {"mlcache": mlcache_pull, "mlflow": mlflow_pull}
        for name, pull in tools.items():  # one-off imports and clients, untimed
            pull(scratch / f"warm-{name}")
            rmtree(scratch / f"warm-{name}")
        rows: dict[str, list[tuple[float, ...]]] = {name: [] for name in tools}
        for repeat in range(args.repeats):
            for name in list(tools)[:: 1 if repeat % 2 == 0 else -1]:
                dest = scratch / f"{name}-{repeat}"
                os.sync()
                time.sleep(1)
                before = (own_cpu(), children_cpu(), *map(process_cpu, watched))
                start = time.perf_counter()
                got = tools[name](dest)
                wall = time.perf_counter() - start
                after = (own_cpu(), children_cpu(), *map(process_cpu, watched))
                if sum(f.stat().st_size for f in got.rglob("*") if f.is_file()) != len(data):
                    raise RuntimeError(f"{name}: pulled the wrong number of bytes into {got}")
                rows[name].append((wall, *(b - a for a, b in zip(before, after, strict=True))))
                rmtree(dest)
        sha256 = hash_seconds(hashlib.sha256, data)
        md5 = hash_seconds(hashlib.md5, data)

        out(f"mlcache bench_cpu: {time.strftime('%Y-%m-%dT%H:%M:%S')}; {code_state()}")
        link = "the pacing proxy (20 ms per request, 40 MiB/s per connection)" if args.wan else "loopback"
        out(f"{cores} cores; one file of {args.size_mib} MiB over {link}; medians of {args.repeats}, interleaved")
        out()
        names = ["client cpu", "rclone cpu", "store cpu"] + (["proxy cpu"] if args.wan else [])
        out(f"{'tool':10} {'wall s':>8} " + " ".join(f"{name:>11}" for name in names) + f" {'total cpu':>10}")
        medians = {}
        for name, values in rows.items():
            wall, *parts = (statistics.median(column) for column in zip(*values, strict=True))
            spread = f"{min(v[0] for v in values):.3f}-{max(v[0] for v in values):.3f}"
            total = sum(parts)
            cells = " ".join(f"{part:11.3f}" for part in parts)
            out(f"{name:10} {wall:8.3f} {cells} {total:10.3f}  wall {spread}")
            medians[name] = (wall, total)
        out()
        mlflow_wall, mlflow_total = medians["mlflow"]
        mlcache_wall = medians["mlcache"][0]
        out(f"hashes over the {args.size_mib} MiB in this process: sha256 {sha256:.3f} s, md5 {md5:.3f} s")
        for label, extra in (("sha256 and md5 (mlcache)", sha256 + md5), ("sha256 only", sha256)):
            floor = (mlflow_total + extra) / cores
            out(
                f"floor with {label}: MLflow's CPU + {extra:.3f} s over {cores} cores = {floor:.3f} s, "
                f"at best {mlflow_wall / floor:.2f}x MLflow"
            )
        out(f"measured: mlcache {mlcache_wall:.3f} s = {mlflow_wall / mlcache_wall:.2f}x MLflow ({mlflow_wall:.3f} s)")
        if args.report is not None:
            args.report.write_text("\n".join(lines) + "\n")
    finally:
        if proxy is not None:
            proxy.stop()
        server.stop()
        s3.stop()
        rmtree(scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
