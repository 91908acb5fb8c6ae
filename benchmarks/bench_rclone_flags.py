#!/usr/bin/env python
"""Which `rclone copy` flags pull fastest (and still correctly) from the store bench_cold uses.

Raw `rclone copy` (the binary mlcache runs, `mlcache.rclone.find_rclone()`) from `rclone serve s3`
on 127.0.0.1 into a fresh local folder, over loopback and through `pacing_proxy.py` (20 ms per
request, 40 MiB/s per connection), for one file of 256 MiB and 2,000 files of 4 KiB (`--quick`: 32
MiB, 200 files). The baseline is the command mlcache's pull runs today (`mlcache/rclone.py`:
`_copy` with `_PULL_FLAGS`, and `_transfer`'s JSON log and stats); each variant adds flags to it.
Variants that cannot matter for a case are not run on it (multi-thread flags on 4 KiB files,
`--transfers` on one file).

Per case, the variants are interleaved in each repetition (the order flipped every repetition),
`os.sync()` before each copy. Every copy is checked: file count, sizes and MD5 of every file
against the source; through the proxy, the bytes it sent must cover the files (nothing bypassed
it). Reported: medians, min-max, the ratio to the baseline's median, requests through the proxy,
and whether rclone used a multi-thread download.

Usage: python benchmarks/bench_rclone_flags.py [--quick] [--repeats 3] [--delay-ms 20] [--rate-mib 40]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from common import rmtree, snapshot_mlcache  # noqa: E402
from pacing_proxy import start_pacing_proxy  # noqa: E402

MiB = 1024 * 1024

# mlcache's pull today: `_transfer` (JSON log, stats) + `_copy` + `_PULL_FLAGS`.
BASE = [
    "copy",
    "--stats",
    "0.1s",
    "--stats-unit",
    "bytes",
    "--use-json-log",
    "-v",
    "--transfers",
    "16",
    "--checkers",
    "16",
    "--no-check-dest",
    "--use-server-modtime",
    "--inplace",
    "--retries",
    "1",
]

# name -> (extra flags, the cases it is run on)
BIG, SMALL = ("big",), ("small",)
BOTH = BIG + SMALL
CUTOFF = ["--multi-thread-cutoff", "16M"]
VARIANTS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "baseline (mlcache today)": ([], BOTH),
    "--ignore-checksum": (["--ignore-checksum"], BOTH),
    "--s3-no-head-object": (["--s3-no-head-object"], BOTH),
    "--buffer-size 64M": (["--buffer-size", "64M"], BIG),
    "--multi-thread-streams 8": (["--multi-thread-streams", "8"], BIG),
    "cutoff 16M": (CUTOFF, BIG),
    "cutoff 16M, chunk 16M": ([*CUTOFF, "--multi-thread-chunk-size", "16M"], BIG),
    "cutoff 16M, chunk 8M, streams 8": (
        [*CUTOFF, "--multi-thread-chunk-size", "8M", "--multi-thread-streams", "8"],
        BIG,
    ),
    "cutoff 16M, chunk 16M, streams 8": (
        [*CUTOFF, "--multi-thread-chunk-size", "16M", "--multi-thread-streams", "8"],
        BIG,
    ),
    "cutoff 16M, chunk 32M, streams 8": (
        [*CUTOFF, "--multi-thread-chunk-size", "32M", "--multi-thread-streams", "8"],
        BIG,
    ),
    "--transfers 32 --checkers 32": (["--transfers", "32", "--checkers", "32"], SMALL),
    "--transfers 64 --checkers 64": (["--transfers", "64", "--checkers", "64"], SMALL),
    "--no-traverse": (["--no-traverse"], SMALL),
    "--fast-list": (["--fast-list"], SMALL),
    "--s3-no-head --s3-no-check-bucket": (["--s3-no-head", "--s3-no-check-bucket"], SMALL),
    "combo: ignore-checksum, no-head-object, cutoff 16M, chunk 16M, streams 8": (
        [
            "--ignore-checksum",
            "--s3-no-head-object",
            *CUTOFF,
            "--multi-thread-chunk-size",
            "16M",
            "--multi-thread-streams",
            "8",
        ],
        BIG,
    ),
    "combo: ignore-checksum, no-head-object, transfers 32": (
        ["--ignore-checksum", "--s3-no-head-object", "--transfers", "32", "--checkers", "32"],
        SMALL,
    ),
}

W = max(map(len, VARIANTS))  # width of the variant column


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def digests(root: Path) -> dict[str, str]:
    """MD5 of every file under `root`, by relative path."""
    return {str(p.relative_to(root)): md5_of(p) for p in sorted(root.rglob("*")) if p.is_file()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 MiB and 200 files instead of 256 MiB and 2,000")
    parser.add_argument("--repeats", type=int, default=3, help="copies per variant and case (medians of these)")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="WAN: delay per request")
    parser.add_argument("--rate-mib", type=float, default=40.0, help="WAN: MiB/s per connection")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="mlcache-bench-flags-", dir="/tmp"))
    s3 = proxy = None
    try:
        snapshot_mlcache(scratch / "code")
        from mlcache.rclone import find_rclone

        from servers import start_s3_server  # after the snapshot: it imports mlcache

        rclone = find_rclone()
        s3 = start_s3_server(scratch / "s3")
        bucket = s3.bucket("bucket")
        sizes = {"big": ((32 if args.quick else 256) * MiB, 1), "small": (4096, 200 if args.quick else 2000)}
        expected: dict[str, dict[str, str]] = {}
        for key, (size, count) in sizes.items():
            root = bucket / "flags" / key
            for i in range(count):
                path = root / ("weights.bin" if count == 1 else f"shards/part-{i:05d}.bin")
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "wb") as handle:
                    for start in range(0, size, 8 * MiB):
                        handle.write(os.urandom(min(8 * MiB, size - start)))
            expected[key] = digests(root)
        env = {**os.environ, **s3.rclone_env("S3")}
        for key in sizes:  # the store computes each object's MD5 on its first listing: not timed
            subprocess.run([rclone, "lsjson", "-R", "--hash", f"S3:bucket/flags/{key}"], env=env, check=True,
                           capture_output=True)  # fmt: skip
        proxy = start_pacing_proxy(s3.endpoint, args.delay_ms, args.rate_mib, workdir=scratch / "proxy")
        version = subprocess.run([rclone, "version"], capture_output=True, text=True).stdout.split("\n", 1)[0]
        print(f"{version}; proxy {proxy.url} -> {s3.endpoint}; {os.cpu_count()} cores", flush=True)

        times: dict[tuple[str, str], list[float]] = defaultdict(list)
        requests: dict[tuple[str, str], list[int]] = defaultdict(list)
        multi: dict[tuple[str, str], bool] = {}
        cases = [(f"{net} {key}", key, net) for net in ("loopback", "WAN") for key in sizes]
        for case, key, net in cases:
            names = [n for n, (_, on) in VARIANTS.items() if key in on]
            for rep in range(args.repeats):
                for name in names if rep % 2 == 0 else reversed(names):
                    dest = scratch / f"dest-{uuid.uuid4().hex[:8]}"
                    run_env = dict(env)
                    if net == "WAN":
                        run_env["RCLONE_CONFIG_S3_ENDPOINT"] = proxy.url
                    before = proxy.stats()
                    os.sync()
                    t = time.perf_counter()
                    cmd = [rclone, *BASE, *VARIANTS[name][0], f"S3:bucket/flags/{key}", str(dest)]
                    done = subprocess.run(cmd, env=run_env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
                    dt = time.perf_counter() - t
                    if done.returncode != 0:
                        raise RuntimeError(f"{case} {name}: rclone exited {done.returncode}:\n{done.stderr[-2000:]}")
                    if digests(dest) != expected[key]:
                        raise RuntimeError(f"{case} {name}: the copy differs from the source")
                    rmtree(dest)
                    if net == "WAN":
                        time.sleep(0.15)  # the proxy's stats are at most 0.1 s old
                        after = proxy.stats()
                        moved = after["bytes_out"] - before["bytes_out"]
                        if moved < sizes[key][0] * sizes[key][1]:
                            raise RuntimeError(f"{case} {name}: only {moved:,} B went through the proxy")
                        requests[(case, name)].append(after["requests"] - before["requests"])
                    multi[(case, name)] = "Multi-thread Copied" in done.stderr
                    times[(case, name)].append(dt)
                    print(f"  {case:14s} rep {rep + 1} {name:{W}s} {dt:7.3f}s", flush=True)

        print()
        print(f"rclone copy flags, medians of {args.repeats} ({'--quick' if args.quick else 'full'}); "
              f"WAN: {args.delay_ms:g} ms per request, {args.rate_mib:g} MiB/s per connection")  # fmt: skip
        head = f"{'case':16s} {'variant':{W}s} {'median s':>9s} {'min-max s':>13s} {'vs base':>8s} {'reqs':>6s} multi"
        print(head)
        print("-" * len(head))
        for case, key, _net in cases:
            base = statistics.median(times[(case, "baseline (mlcache today)")])
            for name, (_, on) in VARIANTS.items():
                if key not in on:
                    continue
                ts = times[(case, name)]
                m = statistics.median(ts)
                reqs = requests.get((case, name))
                shown_reqs = str(int(statistics.median(reqs))) if reqs else ""
                print(
                    f"{case:16s} {name:{W}s} {m:9.3f} {min(ts):6.3f}-{max(ts):6.3f} {base / m:7.2f}x "
                    f"{shown_reqs:>6s} {'yes' if multi[(case, name)] else 'no'}"
                )
        print("(vs base: the baseline's median / the variant's median; > 1 is faster)")
        return 0
    finally:
        for part in (proxy, s3):
            if part is not None:
                part.stop()
        rmtree(scratch)


if __name__ == "__main__":
    sys.exit(main())
