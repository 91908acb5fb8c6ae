"""Content-addressed blobs under real SIGKILLs and real races between processes.

Every kill is real: a process of its own runs one cache operation (pull, gc, prune) on a cache
the test prepared, and the test SIGKILLs it while it is paused at a chosen step. Those processes
are forked, one fresh process per operation, by a small script (`ZYGOTE`) that imported mlcache
once, so thirty kills cost no thirty interpreter starts. Inside its process an operation pauses
through this test's breakpoint: `os.link`, `os.rename`, `os.replace`, `os.unlink`, `os.rmdir`,
`os.chmod`, each MiB a download writes and `BlobStore.held` (after it answers, and before it
looks when `adopt` asks) are wrapped and counted as steps; at the step the test named, the
process prints `PAUSED` and waits until it is killed or let go on. A run of the same operation
without breakpoint first traces its steps with their paths, and kill points are picked from that
trace, so they follow the code as it is. The in-memory registry lives in one process, so the
test pickles it and each process builds its own `MemoryBackend` over the same artifact folder;
caches are prepared once and copied (`cp -a` keeps their hardlinks) for each kill.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mlcache import CacheMiss
from mlcache.manifest import EntryKey
from mlcache.testing import InMemoryPlugin, MemoryBackend

MODEL = "fraud"
MIB = 1 << 20
CHILD_TIMEOUT = 60.0

ZYGOTE = r"""
# Forks one process per request (a JSON line on stdin: the operation and its breakpoint), says
# its pid, and writes its exit status to the request's status file once it reaped it.
import hashlib, json, os, pickle, select, shutil, sys, time, traceback
from pathlib import Path

from mlcache.blobs import BlobStore
from mlcache.manifest import EntryKey
from mlcache.testing import InMemoryPlugin, MemoryBackend

STEPS = []
spec = {}
seen_on = 0


def relative(path):
    if not isinstance(path, (str, bytes, os.PathLike)):
        return ""
    text = os.fsdecode(path)
    root = spec["cache"].rstrip("/") + "/"
    return text[len(root):] if text.startswith(root) else text


def step(kind, paths):
    global seen_on
    STEPS.append([kind, *[relative(p) for p in paths[:2]]])
    hit = len(STEPS) == spec.get("break_at")
    on = spec.get("break_on")  # [kind, how one of its paths starts (relative to the cache), nth such step]
    if on is not None and kind == on[0] and any(p.startswith(on[1]) for p in STEPS[-1][1:]):
        seen_on += 1
        hit = hit or seen_on == on[2]
    if hit:
        print(f"PAUSED {len(STEPS)} {json.dumps(STEPS[-1])}", flush=True)
        resume = spec.get("resume")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (resume and os.path.exists(resume)):
            time.sleep(0.005)


def wrapped(name):
    real = getattr(os, name)

    def call(*args, **kwargs):
        paths = list(args[:2])
        for index, key in ((0, "dir_fd"), (0, "src_dir_fd"), (1, "dst_dir_fd")):
            fd = kwargs.get(key)
            if fd is not None and len(paths) > index:
                paths[index] = os.path.join(os.readlink(f"/proc/self/fd/{fd}"), os.fsdecode(paths[index]))
        step(name, paths)
        return real(*args, **kwargs)

    return call


def copyfile(src, dst, *, follow_symlinks=True):
    with open(src, "rb") as source, open(dst, "wb") as target:
        while chunk := source.read(1 << 20):
            step("write", (dst,))
            target.write(chunk)
            target.flush()
    return dst


real_held = BlobStore.held
real_link_into = BlobStore.link_into
linked = [0]


def held(self, digest, size):
    caller = sys._getframe(1).f_code.co_name
    if caller == "adopt":
        step("look", (self.path(digest), caller))
    found = real_held(self, digest, size)
    step("held", (found or "", caller))
    return found


def link_into(self, digest, size, dest):
    done = real_link_into(self, digest, size, dest)
    linked[0] += done
    return done


def digest_tree(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def loosen(api, key):
    store = api._artifacts
    with store.lock(key):
        store.manifest_path(key).unlink()
        store._used_path(key).unlink(missing_ok=True)
        store.discard_tree(store.entry_path(key))


def run():
    backend = MemoryBackend(Path(spec["artifact_root"]))
    with open(spec["state"], "rb") as handle:
        vars(backend).update(pickle.load(handle))
    api = InMemoryPlugin(cache_dir=spec["cache"], backend=backend)
    BlobStore.link_into = link_into
    if spec.get("ready"):
        Path(spec["ready"]).touch()
        deadline = time.monotonic() + 60
        while not os.path.exists(spec["go"]) and time.monotonic() < deadline:
            time.sleep(0.005)
    if spec.get("steps", True):
        for name in ("link", "rename", "replace", "unlink", "rmdir", "chmod"):
            setattr(os, name, wrapped(name))
        shutil.copyfile = copyfile
        BlobStore.held = held
    op = spec["op"]
    out = {}
    if op == "pull":
        for version in spec["versions"]:
            api.get_model_artifact((spec["model"], version))
    elif op == "gc":
        out = vars(api.gc())
    elif op == "prune":
        report = api.prune(spec["max_size"])
        out = {"removed": [row.label for row in report.removed], "busy": [row.label for row in report.busy]}
    elif op == "gc-loop":
        out = {"rounds": 0, "removed": 0, "kept": 0, "errors": []}
        end = time.monotonic() + spec["seconds"]
        while time.monotonic() < end and out["rounds"] < 20000:
            try:
                report = api.gc()
            except Exception:
                out["errors"].append(traceback.format_exc())
                continue
            out["rounds"] += 1
            out["removed"] += report.blobs_removed
            out["kept"] += report.blobs_kept
    elif op == "pull-loop":
        out = {"pulls": 0, "errors": [], "wrong": []}
        end = time.monotonic() + spec["seconds"]
        turn = 0
        while time.monotonic() < end and turn < 300:
            version = spec["versions"][turn % len(spec["versions"])]
            turn += 1
            try:
                for again in (False, True):
                    path = api.get_model_artifact((spec["model"], version))
                    if digest_tree(path) != spec["truth"][version]:
                        out["wrong"].append(version)
                    out["pulls"] += 1
                    if not again:
                        loosen(api, EntryKey("models", (spec["ids"][version],)))
                api.clean_cached_model_artifact((spec["model"], version))
            except Exception:
                out["errors"].append(traceback.format_exc())
    out["linked"] = linked[0]
    if spec.get("trace"):
        Path(spec["trace"]).write_text(json.dumps(STEPS))
    print("DONE " + json.dumps(out), flush=True)


def child(request):
    global spec
    spec = request
    for fd, name in ((1, "out"), (2, "err")):
        os.dup2(os.open(spec[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    code = 0
    try:
        run()
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def reap(children):
    for pid, status in list(children.items()):
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            with open(status + ".tmp", "w") as handle:
                handle.write(str(os.waitstatus_to_exitcode(code)))
            os.replace(status + ".tmp", status)
            del children[pid]


children = {}
while True:
    reap(children)
    if not select.select([sys.stdin], [], [], 0.005)[0]:
        continue
    line = sys.stdin.readline()
    if not line:
        break
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        child(request)
    children[pid] = request["status"]
    print(pid, flush=True)
"""


# --------------------------------------------------------------------------- the world


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def digest_tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_of(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _write_version(folder: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


@dataclass
class World:
    """An in-memory server holding five versions of `fraud` (logged models) that share files."""

    base: Path
    backend: MemoryBackend
    state: Path
    ids: dict[str, str] = field(default_factory=dict)
    truth: dict[str, dict[str, str]] = field(default_factory=dict)
    templates: dict[str, Path] = field(default_factory=dict)
    zygote: Zygote = field(init=False)

    def api(self, cache: Path, offline: bool = False) -> InMemoryPlugin:
        return InMemoryPlugin(cache_dir=cache, backend=self.backend, offline_mode=offline)

    def key(self, version: str) -> EntryKey:
        return EntryKey("models", (self.ids[version],))

    def version_of(self, model_id: str) -> str:
        return next(v for v, i in self.ids.items() if i == model_id)

    def spec(self, cache: Path, op: str, **extra: Any) -> dict[str, Any]:
        return {
            "artifact_root": str(self.backend.artifact_root),
            "state": str(self.state),
            "cache": str(cache),
            "model": MODEL,
            "op": op,
            **extra,
        }

    def template(self, name: str, build: Callable[[Path], None]) -> Path:
        """A cache made once by `build`; tests copy it (`fresh`)."""
        if name not in self.templates:
            path = self.base / "templates" / name
            build(path)
            self.templates[name] = path
        return self.templates[name]

    def fresh(self, name: str, build: Callable[[Path], None], dest: Path) -> Path:
        """A copy of template `name` at `dest`, hardlinks between entries and blobs kept."""
        template = self.template(name, build)
        dest.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", str(template), str(dest)], check=True, timeout=60)
        return dest


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """v1..v5 share 20 layer files and a tokenizer; v1 and v2 each add a 4 MiB file of their own
    (v2 also one new file twice), v3 40 small files of its own, v4 512 KiB, v5 six small files."""
    base = tmp_path_factory.mktemp("blob-crashes")
    backend = MemoryBackend(base / "server")
    api = InMemoryPlugin(cache_dir=base / "scratch", backend=backend)
    exp = api.create_exp("blobs")
    run = api.create_run(exp, "train")
    shared = {f"w/layer-{i:02d}.bin": os.urandom(32 * 1024) for i in range(20)}
    shared["conf/tokenizer.json"] = b'{"vocab": 32000}\n' * 200
    notes = os.urandom(24 * 1024)
    own = {
        "1": {"big.bin": os.urandom(4 * MIB)},
        "2": {"big.bin": os.urandom(4 * MIB), "notes.txt": notes, "docs/notes.txt": notes},
        "3": {f"extra/e-{i:02d}.bin": os.urandom(8 * 1024) for i in range(40)},
        "4": {"head.bin": os.urandom(MIB // 2)},
        "5": {f"small/s-{i}.bin": os.urandom(4 * 1024) for i in range(6)},
    }
    world = World(base, backend, base / "state.pkl")
    for number, files in own.items():
        files = {**shared, "MLmodel": f"flavors: {{}}\nversion: {number}\n".encode(), **files}
        folder = _write_version(base / "sources" / number, files)
        model_id, version = backend.add_logged_model(exp.id, "model", folder, run.id, MODEL)
        assert version == number
        world.ids[number] = model_id
        world.truth[number] = digest_tree(folder)
    with open(world.state, "wb") as handle:
        pickle.dump({k: getattr(backend, k) for k in ("exps", "runs", "models", "versions", "logged")}, handle)
    world.zygote = Zygote(base / "processes")
    try:
        yield world
    finally:
        world.zygote.stop()


def cache_meta(world: World, api: InMemoryPlugin) -> None:
    """Every version's metadata cached, so offline reads of a version miss only on its files."""
    for version, model_id in world.ids.items():
        api.cache_model_version_meta((MODEL, version))
        api.cache_logged_model_meta(model_id)


def loosen(api: InMemoryPlugin, key: EntryKey) -> None:
    """Drop an entry the way a removal killed after moving its tree aside leaves it: no manifest,
    no tree, and its blobs no longer linked by it (loose, for `gc`)."""
    store = api._artifacts
    with store.lock(key):
        store.manifest_path(key).unlink()
        store._used_path(key).unlink(missing_ok=True)
        store.discard_tree(store.entry_path(key))


# --------------------------------------------------------------------------- child processes


@dataclass(frozen=True)
class Step:
    """One traced step of a child: its number (1-based), kind and the paths it was given
    (relative to the cache dir)."""

    n: int
    kind: str
    args: tuple[str, ...]

    def touches(self, prefix: str) -> bool:
        return any(arg.startswith(prefix) for arg in self.args)

    def src(self, prefix: str) -> bool:
        return bool(self.args) and self.args[0].startswith(prefix)

    def dst(self, prefix: str) -> bool:
        return len(self.args) > 1 and self.args[1].startswith(prefix)


@dataclass
class Child:
    """One operation running in a process of its own (forked by the zygote): its stdout, stderr,
    and exit status (written by the zygote once it reaped it)."""

    pid: int
    out: Path
    err: Path
    status: Path

    def exit_code(self) -> int | None:
        return int(self.status.read_text()) if self.status.exists() else None

    def stderr(self) -> str:
        return self.err.read_text()[-3000:] if self.err.exists() else ""

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines() if self.out.exists() else []

    def wait(self, timeout: float = CHILD_TIMEOUT) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.exit_code()) is None:
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"child {self.pid} still ran after {timeout:g}s: {self.stderr()}")
            time.sleep(0.005)
        return code

    def kill(self) -> None:
        """SIGKILL it and wait until it is gone."""
        if self.exit_code() is None:
            os.kill(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.exit_code() is None and time.monotonic() < deadline:
            time.sleep(0.005)

    def paused(self, timeout: float = CHILD_TIMEOUT) -> str:
        """The `PAUSED` line once the child is paused at its breakpoint."""
        deadline = time.monotonic() + timeout
        while not (hit := [x for x in self.lines() if x.startswith("PAUSED")]):
            if self.exit_code() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"the child never paused (stdout {self.lines()}); stderr: {self.stderr()}")
            time.sleep(0.005)
        return hit[0]

    def result(self) -> dict[str, Any]:
        """What it printed after `DONE`, once it ended well."""
        assert self.wait() == 0, self.stderr()
        return json.loads(next(x for x in self.lines() if x.startswith("DONE "))[5:])


class Zygote:
    """A process (the script `ZYGOTE`) that imported mlcache once and forks a fresh process for
    each operation, so that thirty kills cost no thirty interpreter starts."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir()
        self.folder = folder
        self.log = open(folder / "zygote.err", "w")  # noqa: SIM115 (closed by `stop`)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True
        )
        self.children: list[Child] = []

    def start(self, spec: dict[str, Any]) -> Child:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        stem = self.folder / f"child-{len(self.children) + 1}"
        files = {name: f"{stem}.{name}" for name in ("out", "err", "status")}
        self.proc.stdin.write(json.dumps({**spec, **files}) + "\n")
        self.proc.stdin.flush()
        ready = select.select([self.proc.stdout], [], [], CHILD_TIMEOUT)[0]
        line = self.proc.stdout.readline() if ready else ""
        assert line.strip().isdigit(), (
            f"the zygote forked nothing ({line!r}): {(self.folder / 'zygote.err').read_text()}"
        )
        child = Child(int(line), Path(files["out"]), Path(files["err"]), Path(files["status"]))
        self.children.append(child)
        return child

    def stop(self) -> None:
        for child in self.children:
            child.kill()
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


def run_child(world: World, spec: dict[str, Any]) -> dict[str, Any]:
    """Run an operation in a process of its own to its end; what it printed after `DONE`."""
    return world.zygote.start(spec).result()


def trace(world: World, cache: Path, op: str, **extra: Any) -> list[Step]:
    """The steps `op` takes on `cache` when nothing interrupts it (the cache is used up)."""
    out = cache.parent / f"{cache.name}.trace.json"
    run_child(world, world.spec(cache, op, trace=str(out), **extra))
    return [Step(n, kind, tuple(args)) for n, (kind, *args) in enumerate(json.loads(out.read_text()), 1)]


def kill_at(world: World, spec: dict[str, Any]) -> str:
    """Start an operation with a breakpoint and SIGKILL its process once it is paused there; the
    step it was killed at."""
    child = world.zygote.start(spec)
    line = child.paused()
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(10) == -signal.SIGKILL, child.stderr()
    return line


@dataclass
class Paused:
    """A process paused at its breakpoint, which `resume` lets go on to its end."""

    child: Child
    resume_file: Path
    at: str

    def resume(self) -> tuple[int, dict[str, Any] | None, str]:
        self.resume_file.touch()
        code = self.child.wait()
        done = [x for x in self.child.lines() if x.startswith("DONE ")]
        return code, json.loads(done[0][5:]) if done else None, self.child.stderr()


def pause_at(world: World, spec: dict[str, Any], resume_file: Path) -> Paused:
    child = world.zygote.start({**spec, "resume": str(resume_file)})
    return Paused(child, resume_file, child.paused())


def pick(steps: list[Step], marks: dict[str, Callable[[Step], bool]], total: int) -> dict[int, str]:
    """Kill points: the first step matching each mark, then steps spread evenly over the rest of
    the trace, `total` in all; step number -> what the cache looks like when killed there."""
    points: dict[int, str] = {}
    for label, match in marks.items():
        hit = next((s for s in steps if match(s)), None)
        assert hit is not None, f"the operation never reached {label!r}; its steps: {[s.kind for s in steps]}"
        points.setdefault(hit.n, label)
    spare = [s for s in steps if s.n not in points]
    extra = max(0, total - len(points))
    for i in range(min(extra, len(spare))):
        chosen = spare[(2 * i + 1) * len(spare) // (2 * extra)]
        points.setdefault(chosen.n, f"step {chosen.n} of {len(steps)}: {chosen.kind} {' -> '.join(chosen.args)}")
    return dict(sorted(points.items()))


def nth(n: int, match: Callable[[Step], bool]) -> Callable[[Step], bool]:
    """A mark matching the `n`th step that `match` matches."""
    count = 0

    def mark(s: Step) -> bool:
        nonlocal count
        if match(s):
            count += 1
        return count == n and match(s)

    return mark


# --------------------------------------------------------------------------- what must hold


def blob_files(cache: Path) -> Iterator[Path]:
    top = cache / "blobs" / "sha256"
    if top.is_dir():
        yield from sorted(p for p in top.glob("*/*"))


def manifest_files(cache: Path) -> list[Path]:
    return sorted((cache / "manifests").rglob("*.json")) if (cache / "manifests").is_dir() else []


def orphans(cache: Path) -> list[Path]:
    """Files under `artifacts/` that belong to no entry with a manifest."""
    held = {cache / "artifacts" / "models" / json.loads(m.read_text())["key"][0] for m in manifest_files(cache)}
    folder = cache / "artifacts"
    return sorted(p for p in folder.rglob("*") if p.is_file() and not any(h in p.parents for h in held))


def is_link_of(path: Path, blob: Path) -> bool:
    """Whether `path` is a hardlink of the blob file `blob`."""
    return blob.exists() and os.path.samefile(path, blob)


def assert_safe(world: World, cache: Path, where: str) -> None:
    """What a cache holds whatever was killed, before and after cleanup: every blob is whole (its
    bytes hash to its name, read-only); every manifest's entry holds exactly the bytes the
    version has; `verify_cache` finds nothing; offline reads hit a complete entry or miss."""
    problems = []
    for blob in blob_files(cache):
        info = blob.lstat()
        name = blob.parent.name + blob.name
        if not stat.S_ISREG(info.st_mode) or not re.fullmatch(r"[0-9a-f]{64}", name):
            problems.append(f"{blob}: not a blob")
        elif sha256_of(blob) != name:
            problems.append(f"{blob}: partial or wrong bytes ({info.st_size} bytes)")
        elif info.st_mode & 0o222:
            problems.append(f"{blob}: writable")
    for manifest in manifest_files(cache):
        doc = json.loads(manifest.read_text())
        model_id = doc["key"][0]
        version = world.version_of(model_id)
        entry = cache / "artifacts" / "models" / model_id
        if {f["path"]: f["sha256"] for f in doc["files"]} != world.truth[version]:
            problems.append(f"{manifest}: names other bytes than version {version} has")
        if not entry.is_dir():
            problems.append(f"{manifest}: its entry {entry} is missing")
        elif digest_tree(entry) != world.truth[version]:
            problems.append(f"{manifest}: its entry {entry} has missing, partial or extra files")
    problems += world.api(cache).verify_cache()
    offline = world.api(cache, offline=True)
    for version, files in world.truth.items():
        try:
            path = offline.get_model_artifact((MODEL, version))
        except CacheMiss:
            continue
        if digest_tree(path) != files:
            problems.append(f"an offline read of version {version} served {path} with other bytes")
    assert problems == [], f"{where}:\n" + "\n".join(problems)


def recover(world: World, cache: Path, where: str) -> None:
    """Cleanup after a kill: leftovers of dead processes and loose blobs go, nothing else."""
    api = world.api(cache)
    api.clean_temp_artifacts()
    api.gc()
    assert [p.name for p in (cache / "tmp").iterdir() if p.is_dir()] == [], f"{where}: stages left in tmp/"
    assert [b for b in blob_files(cache) if b.stat().st_nlink == 1] == [], f"{where}: gc left loose blobs"
    assert_safe(world, cache, f"{where}, after clean_temp_artifacts and gc")


def drain(world: World, cache: Path, where: str) -> list[Path]:
    """`prune(0)` and `gc` empty the cache of entries and blobs, and it works afterwards (a pull of
    v1 lands complete); returns the files under `artifacts/` that no manifest names (nothing
    removes them; the blobs left must be theirs)."""
    api = world.api(cache)
    report = api.prune(0)
    assert report.busy == [], where
    api.gc()
    assert manifest_files(cache) == [], where
    left = orphans(cache)
    inodes = {p.stat().st_ino for p in left}
    assert [b for b in blob_files(cache) if b.stat().st_ino not in inodes] == [], f"{where}: blobs left by prune+gc"
    assert digest_tree(api.get_model_artifact((MODEL, "1"))) == world.truth["1"], where
    assert api.verify_cache() == [], where
    return left


# --------------------------------------------------------------------------- 1. a deduplicating pull


def build_v1_cached(world: World) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        api = world.api(path)
        cache_meta(world, api)
        api.get_model_artifact((MODEL, "1"))

    return build


def test_a_deduplicating_pull_killed_at_any_step_is_never_served_half_made(world: World, tmp_path: Path) -> None:
    """v2 is pulled into a cache holding v1: its 21 shared files are linked from v1's blobs, the rest
    (a 4 MiB file, a file present twice, MLmodel) downloaded. Killed (SIGKILL) at ten steps from
    the first link to the remembering of store hashes, mid-download included, the cache never serves a half
    made v2 and never holds a partial blob; v1 stays whole; cleanup leaves nothing behind; a new
    pull of v2 completes and still shares v1's blobs; prune and gc then empty the cache."""
    build = build_v1_cached(world)
    probe = world.fresh("v1", build, tmp_path / "probe")
    steps = trace(world, probe, "pull", versions=["2"])
    marks = {
        "nothing linked yet, the first held blob next": lambda s: (
            s.kind == "link" and s.src("blobs/sha256/") and s.dst("tmp/pull-")
        ),
        "every shared file linked, nothing downloaded": lambda s: s.kind == "write",
        "half the big file downloaded": nth(3, lambda s: s.kind == "write" and s.args[0].endswith("/big.bin")),
        "all downloaded, not yet read-only": lambda s: s.kind == "chmod",
        "a downloaded file about to become a blob": lambda s: (
            s.kind == "link" and s.src("tmp/pull-") and s.dst("blobs/sha256/")
        ),
        "a duplicate about to be swapped for a link of its blob": lambda s: (
            s.kind == "replace" and s.args[0].endswith(".blob")
        ),
        "tree shared with the blobs, not yet in place": lambda s: s.kind == "replace" and s.dst("artifacts/models/"),
        "tree in place, no manifest yet": lambda s: s.kind == "replace" and s.dst("manifests/models/"),
        "manifest written, store hashes not yet remembered": lambda s: s.kind == "replace" and s.dst("blobs/store/"),
    }
    points = pick(steps, marks, total=10)
    shared = sorted(rel for rel, digest in world.truth["2"].items() if world.truth["1"].get(rel) == digest)
    assert len(shared) == 21
    for n, label in points.items():
        where = f"pull of v2 killed just before step {n} ({label})"
        cache = world.fresh("v1", build, tmp_path / f"kill-{n}")
        kill_at(world, world.spec(cache, "pull", versions=["2"], break_at=n))
        assert_safe(world, cache, where)
        assert world.api(cache)._artifacts.lookup_quiet(world.key("1")) is not None, where
        recover(world, cache, where)

        api = world.api(cache)
        v1 = api.get_model_artifact((MODEL, "1"))
        v2 = api.get_model_artifact((MODEL, "2"))
        assert digest_tree(v2) == world.truth["2"], where
        unshared = [rel for rel in shared if not os.path.samefile(v1 / rel, v2 / rel)]
        assert unshared == [], f"{where}: a new pull of v2 no longer shares {unshared[:3]} with v1"
        assert os.path.samefile(v2 / "notes.txt", v2 / "docs/notes.txt"), where
        recover(world, cache, f"{where}, pulled again")
        assert drain(world, cache, where) == [], where


# --------------------------------------------------------------------------- 2. gc


def build_with_loose_blobs(world: World) -> Callable[[Path], None]:
    """v1 and v2 complete; v3 dropped as a removal killed before collecting leaves it (41 loose
    blobs); a pull of v4 killed (for real) once its files became blobs, before its tree moved into
    place: a stage holding links of shared blobs and of two blobs only it holds."""

    def build(path: Path) -> None:
        api = world.api(path)
        cache_meta(world, api)
        for version in ("1", "2", "3"):
            api.get_model_artifact((MODEL, version))
        loosen(api, world.key("3"))
        kill_at(world, world.spec(path, "pull", versions=["4"], break_on=["replace", "artifacts/models/", 1]))
        assert len(list(path.glob("tmp/pull-*"))) == 1

    return build


def test_gc_killed_at_any_step_keeps_every_entry_whole(world: World, tmp_path: Path) -> None:
    """gc removes a dead pull's stage and then 43 loose blobs by rename-into-a-stage, recheck,
    delete. Killed (SIGKILL) at nine steps (in the stage removal, after a blob was moved aside and
    before it was rechecked or deleted, among the hints), every entry stays whole, no blob is
    partial, no name of a blob an entry holds is lost; a second gc finishes the work, v3 and v4
    pull again complete and share the blobs left, and prune plus gc empty the cache."""
    build = build_with_loose_blobs(world)
    probe = world.fresh("loose", build, tmp_path / "probe")
    before = {b.name for b in blob_files(probe)}
    loose = {b.parent.name + b.name for b in blob_files(probe) if b.stat().st_nlink == 1}
    assert len(loose) == 41
    steps = trace(world, probe, "gc")
    assert len(before) - len(list(blob_files(probe))) == 43
    aside = [s for s in steps if s.kind == "rename" and s.src("blobs/sha256/")]
    marks = {
        "the dead pull's stage partly removed": nth(10, lambda s: s.kind == "unlink" and s.touches("tmp/pull-")),
        "first blob moved aside, not rechecked": lambda s: s.n == aside[0].n + 1,
        "first blob moved aside and rechecked, not deleted": lambda s: s.kind == "unlink" and s.touches("tmp/gc-"),
        "half the blobs collected": lambda s: s.n == aside[len(aside) // 2].n,
        "last blob moved aside, not rechecked": lambda s: s.n == aside[-1].n + 1,
        "blobs collected, stale hints being dropped": lambda s: s.kind == "unlink" and s.touches("blobs/store/"),
    }
    points = pick(steps, marks, total=9)
    in_entries = set(world.truth["1"].values()) | set(world.truth["2"].values())
    for n, label in points.items():
        where = f"gc killed just before step {n} ({label})"
        cache = world.fresh("loose", build, tmp_path / f"kill-{n}")
        kill_at(world, world.spec(cache, "gc", break_at=n))
        assert_safe(world, cache, where)
        names = {b.parent.name + b.name for b in blob_files(cache)}
        lost = in_entries - names
        assert lost == set(), f"{where}: names of blobs that entries hold are gone: {sorted(lost)[:3]}"
        recover(world, cache, where)
        assert len(list(blob_files(cache))) == len(before) - 43, where

        api = world.api(cache)
        v1 = api.get_model_artifact((MODEL, "1"))
        for version in ("3", "4"):
            path = api.get_model_artifact((MODEL, version))
            assert digest_tree(path) == world.truth[version], where
            assert os.path.samefile(path / "w/layer-00.bin", v1 / "w/layer-00.bin"), where
        recover(world, cache, f"{where}, pulled again")
        assert drain(world, cache, where) == [], where


# --------------------------------------------------------------------------- 3. prune


PRUNE_BUDGET = int(2.5 * MIB)


def build_for_prune(world: World) -> Callable[[Path], None]:
    """v1..v4 complete, last used in the order v1, v3, v2, v4 (oldest first), v5 dropped with its
    seven blobs loose: prune to 2.5 MiB collects those, then evicts v1, v3 and v2."""

    def build(path: Path) -> None:
        api = world.api(path)
        cache_meta(world, api)
        for version in ("5", "1", "2", "3", "4"):
            api.get_model_artifact((MODEL, version))
        loosen(api, world.key("5"))
        now = time.time()
        for age, version in enumerate(("4", "2", "3", "1")):
            os.utime(api._artifacts._used_path(world.key(version)), (now - 100 * (age + 1),) * 2)

    return build


ORPHAN = "an evicted entry's manifest removed, its tree not yet moved aside"


def test_prune_killed_at_any_step_keeps_every_kept_entry_whole(world: World, tmp_path: Path) -> None:
    """prune (budget 2.5 MiB) collects seven loose blobs, then removes v1, v3 and v2 one by one
    (manifest, tree moved aside and deleted, the blobs each held alone collected), counting the
    20 shared layers once so v4 stays. Killed (SIGKILL) at ten steps, every entry that still has a
    manifest is whole and served, the others miss, no blob is partial; cleanup and a second prune
    bring the entries within budget with v4 whole; prune(0) plus gc empty the cache, except for the
    tree of an entry whose manifest was removed and whose tree was not yet moved aside at the kill:
    gc leaves such a tree until it is ten minutes old (a pull may be about to write its manifest),
    then removes it (`test_files_of_an_entry_whose_removal_was_killed_are_reclaimed`)."""
    build = build_for_prune(world)
    probe = world.fresh("prune", build, tmp_path / "probe")
    steps = trace(world, probe, "prune", max_size=PRUNE_BUDGET)
    assert sorted(m.stem for m in manifest_files(probe)) == [world.ids["4"]]
    dropped = [s for s in steps if s.kind == "unlink" and s.src("manifests/models/") and s.args[0].endswith(".json")]
    moved = [s for s in steps if s.kind == "replace" and s.dst("tmp/old-")]
    assert len(dropped) == len(moved) == 3
    evicted = [Path(s.args[0]).stem for s in dropped]
    assert evicted == [world.ids[v] for v in ("1", "3", "2")]
    first_aside = next(s for s in steps if s.kind == "rename" and s.src("blobs/sha256/"))
    marks = {
        "a loose blob moved aside, not rechecked": lambda s: s.n == first_aside.n + 1,
        ORPHAN: lambda s: s.n == dropped[0].n + 1,
        "v1's tree moved aside, not deleted": lambda s: s.n == moved[0].n + 1,
        "v1's tree half deleted": nth(12, lambda s: s.kind == "unlink" and s.touches("tmp/old-")),
        "v1's own blob moved aside, not rechecked": lambda s: (
            s.n > moved[0].n and s.kind != "rename" and steps[s.n - 2].kind == "rename"
        ),
        "v1 removed, v3 not yet": lambda s: s.n == dropped[1].n,
        "v3's lone blobs being collected": lambda s: s.n > moved[1].n and s.kind == "unlink" and s.touches("tmp/gc-"),
        "v3 removed, v2 not yet": lambda s: s.n == dropped[2].n,
    }
    points = pick(steps, marks, total=10)
    for n, label in points.items():
        where = f"prune killed just before step {n} ({label})"
        cache = world.fresh("prune", build, tmp_path / f"kill-{n}")
        kill_at(world, world.spec(cache, "prune", max_size=PRUNE_BUDGET, break_at=n))
        assert_safe(world, cache, where)
        assert world.api(cache)._artifacts.lookup_quiet(world.key("4")) is not None, where
        recover(world, cache, where)

        api = world.api(cache)
        assert api.prune(PRUNE_BUDGET).busy == [], where
        usage = api.cache_usage()
        assert world.key("4") in [row.key for row in usage.entries], where
        assert usage.on_disk - usage.loose_blobs <= PRUNE_BUDGET, where
        recover(world, cache, f"{where}, pruned again")
        left = {p.relative_to(cache).parts[2] for p in drain(world, cache, where)}
        half_removed = {model_id for model_id, a, b in zip(evicted, dropped, moved, strict=True) if a.n < n <= b.n}
        assert left == half_removed, f"{where}: trees without manifest left: {left}"
        assert label != ORPHAN or half_removed, where


def test_files_of_an_entry_whose_removal_was_killed_are_reclaimed(world: World, tmp_path: Path) -> None:
    """A prune SIGKILLed right after it removed v1's manifest (its tree still in artifacts/): gc
    and prune afterwards reclaim that tree and the 4 MiB blob only it holds."""
    build = build_for_prune(world)
    cache = world.fresh("prune", build, tmp_path / "cache")
    at = kill_at(world, world.spec(cache, "prune", max_size=PRUNE_BUDGET, break_on=["unlink", "manifests/models/", 2]))
    assert ".used" in at
    assert_safe(world, cache, "prune killed after a manifest went")
    api = world.api(cache)
    api.clean_temp_artifacts()
    assert orphans(cache) != []
    assert api.gc().orphans_removed == 0  # young: a pull may be about to write its manifest
    assert api.gc(orphan_age=0).orphans_removed == 1
    api.prune(0)
    api.gc()
    assert orphans(cache) == []
    assert api.cache_usage().loose_blobs == 0
    assert list(blob_files(cache)) == []


# --------------------------------------------------------------------------- 4. gc racing pulls


def build_v1_no_hints(world: World) -> Callable[[Path], None]:
    """v1's blobs loose and no store hash remembered (as a store that gives none leaves a cache):
    a pull of v1 downloads every file, and each then finds its blob held."""

    def build(path: Path) -> None:
        api = world.api(path)
        cache_meta(world, api)
        api.get_model_artifact((MODEL, "1"))
        loosen(api, world.key("1"))
        shutil.rmtree(path / "blobs" / "store")

    return build


def build_v1_loose(world: World) -> Callable[[Path], None]:
    """v1's blobs loose, their store hashes remembered: a pull of v2 links the 21 it shares."""

    def build(path: Path) -> None:
        api = world.api(path)
        cache_meta(world, api)
        api.get_model_artifact((MODEL, "1"))
        loosen(api, world.key("1"))

    return build


RACES: dict[str, tuple[str, str, list[Any]]] = {
    # case: (cache, version pulled, where the pull pauses)
    "gc between a pull's hint lookup and its link": ("v1-loose", "2", ["held", "link_into", 1]),
    "gc after a pull linked a first loose blob": ("v1-loose", "2", ["link", "tmp/pull-", 2]),
    "gc between adopt's refused link and its look at the blob": ("v1-no-hints", "1", ["look", "adopt", 1]),
    "gc between adopt finding the blob held and linking to it": ("v1-no-hints", "1", ["held", "adopt", 1]),
}


@pytest.mark.parametrize("case", RACES)
def test_a_pull_racing_gc_at_a_chosen_step_completes_whole_and_shared(world: World, tmp_path: Path, case: str) -> None:
    """The race protocol at fixed interleavings of two real processes: a pull paused at a step
    where it links loose blobs into its stage (v2 over v1's loose blobs) or makes its downloaded
    files share the blobs already held (v1 again, with no store hashes remembered), a whole gc
    (which takes every blob at link count 1) run meanwhile, then the pull let go. The pull
    completes, its entry holds every byte, each of its files is the blob of its bytes (a
    collector taking a blob never costs an entry its sharing), and cleanup empties the cache.
    (The last two cases failed before `BlobStore.adopt` looked again: the pull kept its files as
    copies, or died of FileNotFoundError.)"""
    name, version, pause = RACES[case]
    build = build_v1_loose(world) if name == "v1-loose" else build_v1_no_hints(world)
    cache = world.fresh(name, build, tmp_path / "cache")
    paused = pause_at(world, world.spec(cache, "pull", versions=[version], break_on=pause), tmp_path / "resume")
    assert world.api(cache).gc().blobs_removed > 0, paused.at
    code, out, err = paused.resume()
    assert code == 0, err
    assert out is not None
    api = world.api(cache)
    path = api.get_model_artifact((MODEL, version))
    assert digest_tree(path) == world.truth[version]
    store = api._artifacts.blobs
    copies = [rel for rel, digest in world.truth[version].items() if not is_link_of(path / rel, store.path(digest))]
    assert copies == [], f"{case}: files that are not their blob: {copies[:3]}"
    assert_safe(world, cache, case)
    recover(world, cache, case)
    assert drain(world, cache, case) == []


def test_gc_put_back_a_blob_a_pull_linked_after_gc_listed_it(world: World, tmp_path: Path) -> None:
    """gc paused after it listed v1's loose blobs and before it moved the first aside; a pull of v2
    (this process) links 21 of them meanwhile; gc let go moves each aside, sees the pull's link,
    puts it back: v2 is whole and its shared files keep their blob names (kept = 21)."""
    cache = world.fresh("v1-loose", build_v1_loose(world), tmp_path / "cache")
    paused = pause_at(world, world.spec(cache, "gc", break_on=["rename", "blobs/sha256/", 1]), tmp_path / "resume")
    v2 = world.api(cache).get_model_artifact((MODEL, "2"))
    code, out, err = paused.resume()
    assert code == 0, err[-3000:]
    assert out is not None and out["blobs_kept"] == 21 and out["blobs_removed"] == 2, out
    assert digest_tree(v2) == world.truth["2"]
    kept = [rel for rel in world.truth["1"] if world.truth["2"].get(rel) == world.truth["1"][rel]]
    store = world.api(cache)._artifacts.blobs
    assert all(os.path.samefile(v2 / rel, store.path(world.truth["2"][rel])) for rel in kept)
    assert_safe(world, cache, "gc resumed after a pull linked its candidates")
    recover(world, cache, "gc resumed after a pull linked its candidates")


def test_gc_in_a_loop_never_takes_bytes_from_pulls_in_another_process(world: World, tmp_path: Path) -> None:
    """Two processes for four seconds over a cache holding v1: one runs gc back to back; the other
    pulls v2, v3, v4 in turn, each twice: pulled (linking the layers v1 holds), dropped as a
    removal killed before collecting leaves it (its own blobs loose), pulled again (linking those
    loose blobs while gc takes them) and removed by `clean_cached_model_artifact` (whose own
    collection races gc's); every pull's bytes are checked. No pull fails or serves other bytes,
    blobs were linked and collected meanwhile, and the cache is whole and cleans up afterwards."""
    cache = world.fresh("v1", build_v1_cached(world), tmp_path / "cache")
    go = tmp_path / "go"
    truth = {"truth": world.truth, "ids": world.ids, "versions": ["2", "3", "4"]}
    children = {
        name: world.zygote.start(
            world.spec(cache, op, steps=False, seconds=4.0, ready=str(tmp_path / name), go=str(go), **truth)
        )
        for name, op in (("gc", "gc-loop"), ("puller", "pull-loop"))
    }
    deadline = time.monotonic() + CHILD_TIMEOUT
    while not all((tmp_path / name).exists() for name in children) and time.monotonic() < deadline:
        assert all(c.exit_code() is None for c in children.values()), [c.stderr() for c in children.values()]
        time.sleep(0.01)
    go.touch()
    results = {name: child.result() for name, child in children.items()}
    gc, puller = results["gc"], results["puller"]
    assert puller["errors"] == [] and gc["errors"] == [], (puller["errors"] + gc["errors"])[:2]
    assert puller["wrong"] == []
    assert puller["pulls"] >= 8 and gc["rounds"] >= 20, results
    assert puller["linked"] > 0 and gc["removed"] > 0, results
    assert_safe(world, cache, "after gc raced pulls")
    recover(world, cache, "after gc raced pulls")
    assert drain(world, cache, "after gc raced pulls") == []
