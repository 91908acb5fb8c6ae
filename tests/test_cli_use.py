"""The command line driven as a person drives it: a pseudo-terminal of 80 and 120 columns, stdout
captured by `$(...)`, stderr a log file; every error one line with the right exit code."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from mlcache.plugins.mlflow import MlflowApi

from servers import MlflowServer

CLI = [sys.executable, "-c", "from mlcache.cli import run; run()"]
BIG = 24 << 20


def _env(server: MlflowServer, cache: Path, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLCACHE_", "RCLONE_"))}
    return {**clean, "MLFLOW_TRACKING_URI": server.url, "MLCACHE_CACHE_DIR": str(cache), **extra}


def cli(*args: str, env: dict[str, str], stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env=env, stdin=stdin)


def on_a_terminal(args: list[str], env: dict[str, str], columns: int, answer: bytes = b"") -> tuple[int, str, str]:
    """Run the CLI with stderr (and stdin) on a pseudo-terminal of `columns` columns and stdout a pipe;
    returns the exit code, stdout, and everything the terminal showed."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen([*CLI, *args], stdin=follower, stdout=subprocess.PIPE, stderr=follower, env=env)
    os.close(follower)
    if answer:
        os.write(leader, answer)
    shown = b""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
        elif proc.poll() is not None:
            break
    out = proc.stdout.read().decode() if proc.stdout else ""
    proc.wait(timeout=60)
    os.close(leader)
    return proc.returncode, out, shown.decode(errors="replace")


@pytest.fixture(scope="module")
def published(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A model `cli-use-<n>` with a 24 MiB weights file as version 1, aliased `champion`."""
    writer = MlflowApi(tracking_uri=mlflow_server.url, cache_dir=tmp_path_factory.mktemp("cli-writer"))
    name = f"cli-use-{os.getpid()}-{time.time_ns() % 10**6}"
    run = writer.create_exp(name).start_run("train")
    run.log_params({"lr": 0.1})

    def write(folder: Path) -> None:
        folder.mkdir()
        (folder / "weights.bin").write_bytes(os.urandom(BIG))
        (folder / "MLmodel").write_text("flavors: {}\n")

    mv = writer.log_model_version(name, run, write, "model", aliases=["champion"])
    return {"name": name, "version": mv.version, "run": run.id, "uri": f"models:/{name}@champion"}


def _lines(shown: str) -> list[str]:
    """What a terminal shows, line by line: each carriage return starts the line over."""
    return [part for line in shown.replace("\r\n", "\n").split("\n") for part in line.split("\r") if part]


@pytest.mark.parametrize("columns", [80, 120])
def test_the_bar_fits_the_terminal_and_stdout_is_only_the_path(
    mlflow_server: MlflowServer, published: dict[str, str], tmp_path: Path, columns: int
) -> None:
    env = _env(mlflow_server, tmp_path / "cache", RCLONE_BWLIMIT="48M")
    code, out, shown = on_a_terminal(["pull", published["uri"]], env, columns)
    assert code == 0, shown
    assert out.endswith("\n") and out.count("\n") == 1 and Path(out.strip()).is_dir()
    drawn = [line for line in _lines(shown) if "%" in line]
    assert drawn, shown
    assert all(len(line.rstrip()) < columns for line in drawn), [len(x) for x in drawn]
    assert all(line.startswith(published["uri"]) for line in drawn), drawn
    assert re.search(r"\d+%\s+[\d.]+ [KMG]iB/[\d.]+ MiB", shown), shown
    assert "\x1b" not in shown


def test_a_log_gets_plain_progress_lines_and_the_variable_gets_the_path(
    mlflow_server: MlflowServer, published: dict[str, str], tmp_path: Path
) -> None:
    env = _env(mlflow_server, tmp_path / "cache", RCLONE_BWLIMIT="16M", MLCACHE_PROGRESS_INTERVAL="0.3")
    log = tmp_path / "pull.log"
    with log.open("w") as stderr:
        result = subprocess.run([*CLI, "pull", published["uri"]], stdout=subprocess.PIPE, stderr=stderr, env=env)
    assert result.returncode == 0
    path = result.stdout.decode()
    assert path.count("\n") == 1 and (Path(path.strip()) / "weights.bin").stat().st_size == BIG
    text = log.read_text()
    assert "\r" not in text and "\x1b" not in text
    progress = [line for line in text.splitlines() if line.startswith(f"pulling {published['uri']}: ")]
    assert progress and all(re.search(r"\d+%  [\d.]+ [KMG]?i?B/24\.0 MiB", line) for line in progress), text
    assert text.splitlines()[-1].startswith(f"pulled {published['uri']}: 24.0 MiB in ")
    quiet = subprocess.run([*CLI, "--quiet", "pull", published["uri"]], capture_output=True, text=True, env=env)
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == path


def test_pull_to_a_folder_info_du_and_prune_dry_run(
    mlflow_server: MlflowServer, published: dict[str, str], tmp_path: Path
) -> None:
    env = _env(mlflow_server, tmp_path / "cache")
    dest = tmp_path / "deploy"
    placed = cli("pull", published["uri"], "--to", str(dest), env=env)
    assert placed.returncode == 0, placed.stderr
    assert placed.stdout == f"{dest}\n" and (dest / "weights.bin").stat().st_size == BIG
    again = cli("pull", published["uri"], "--to", str(dest), env=env)
    assert (
        again.returncode == 1
        and again.stderr == f"error: {dest} already exists and is not an empty folder; choose a new one\n"
    )

    info = json.loads(cli("info", published["uri"], "--json", env=env).stdout)
    assert info["model"] == published["name"] and info["version"] == published["version"]
    assert info["aliases"] == ["champion"] and info["params"] == {"lr": 0.1} and info["run"] == published["run"]
    assert info["size"] == BIG + 12 and Path(info["cached"]).is_dir()
    shown = cli("info", published["uri"], env=env).stdout
    assert re.search(r"^size:\s+24\.0 MiB$", shown, re.M) and re.search(r"^aliases:\s+\[\"champion\"\]$", shown, re.M)

    rows = [json.loads(line) for line in cli("du", "--json", env=env).stdout.splitlines()]
    assert [r["versions"] for r in rows[:-1]] == [[f"{published['name']}/{published['version']}@champion"]]
    assert rows[-1]["total"]["on_disk"] == rows[0]["size"]
    table = cli("du", env=env).stdout
    assert rows[0]["entry"] in table and "24.0 MiB" in table
    dry = cli("prune", "--max-size", "1M", "--dry-run", env=env)
    assert dry.stdout == f"would remove {rows[0]['entry']} (24.0 MiB)\n" and "would free 24.0 MiB" in dry.stderr
    assert Path(info["cached"]).is_dir()


def test_clean_all_asks_on_a_terminal_and_not_in_scripts(
    mlflow_server: MlflowServer, published: dict[str, str], tmp_path: Path
) -> None:
    env = _env(mlflow_server, tmp_path / "cache")
    path = Path(cli("pull", published["uri"], env=env).stdout.strip())
    code, out, shown = on_a_terminal(["clean", "--all"], env, 100, answer=b"n\n")
    assert code == 1 and "remove everything in the cache at" in shown and "nothing removed" in shown
    assert path.is_dir() and out == ""
    scripted = cli("clean", "--all", env=env)
    assert scripted.returncode == 0 and scripted.stdout.startswith("removed 1 artifact entries") and not path.exists()


def test_status_says_which_cached_aliases_the_server_moved(
    mlflow_server: MlflowServer, published: dict[str, str], tmp_path: Path
) -> None:
    env = _env(mlflow_server, tmp_path / "cache")
    assert cli("info", published["uri"], env=env).returncode == 0
    before = [json.loads(line) for line in cli("status", "--json", env=env).stdout.splitlines()]
    assert before == [
        {
            "model": published["name"],
            "alias": "champion",
            "cached": published["version"],
            "server": "1",
            "state": "current",
        }
    ]
    writer = MlflowApi(tracking_uri=mlflow_server.url, cache_dir=tmp_path / "writer")
    second = writer.register_model_version(published["name"], published["run"], "model")
    writer.set_model_alias(second, "champion")
    after = cli("status", env=env)
    assert after.returncode == 0
    assert re.search(rf"models:/{published['name']}@champion\s+1\s+{second.version}\s+moved", after.stdout)
    assert "1 cached aliases, 1 moved or removed on the server" in after.stderr
    writer.set_model_alias((published["name"], 1), "champion")
    offline = cli("--offline", "status", env=env)
    assert offline.returncode == 1 and offline.stderr.startswith("error: status compares the cache with the server")


def test_doctor_says_what_mlcache_uses(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "tmp").mkdir(parents=True)
    facts = json.loads(cli("doctor", "--json", env=_env(mlflow_server, cache)).stdout)
    assert facts["cache dir"] == str(cache) and facts["tracking uri"] == mlflow_server.url
    assert facts["offline"] == "no" and facts["hardlinks"] == "yes" and facts["lock mode"] == "os"
    assert facts["rclone"].startswith("v") and facts["mlflow"][0].isdigit()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["nonsense"], 2, "error: No such command 'nonsense'. (see `mlcache --help`)"),
        (["find"], 2, "error: Missing argument 'kind'. (see `mlcache find --help`)"),
        (["find", "runs", "{bad"], 2, "error: Invalid value: the query is not valid JSON"),
        (
            ["--offline", "pull", "models:/absent@prod"],
            1,
            "error: model version 'models:/absent@prod' is not in the cache",
        ),
        (["--offline", "pull", "models:/m-doesnotexist"], 1, "error: logged model 'm-doesnotexist' does not exist"),
        (["export", "models:/absent/1", "--to", "release.zip"], 1, "error: release.zip: a bundle is a folder"),
        (["verify", "no-such-bundle"], 1, "error: no bundle or cache dir at no-such-bundle: no such file or folder"),
        (["prune", "--max-size", "lots"], 2, "error: Invalid value: not a size: 'lots'"),
    ],
)
def test_every_error_is_one_line_with_its_exit_code(
    mlflow_server: MlflowServer, tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    env = _env(mlflow_server, tmp_path / "cache")
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == code, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(message), result.stderr
    assert result.stdout == ""


def test_a_cli_offline_hint_speaks_cli(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLCACHE_"))}
    env["MLCACHE_CACHE_DIR"] = str(tmp_path / "cache")
    result = subprocess.run(
        [*CLI, "--offline", "pull", "models:/fraud@champion"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 1
    assert "without --offline" in result.stderr and "api." not in result.stderr


def test_verify_repair_pulls_a_damaged_entry_again(
    mlflow_server: MlflowServer, published: dict[str, str], tmp_path: Path
) -> None:
    env = _env(mlflow_server, tmp_path / "cache")
    weights = Path(cli("pull", published["uri"], env=env).stdout.strip()) / "weights.bin"
    good = weights.read_bytes()
    weights.chmod(0o644)
    weights.write_bytes(b"x" * 10)
    bad = cli("verify", env=env)
    assert bad.returncode == 1 and bad.stdout.startswith("BAD ") and "size 10 != " in bad.stdout
    fixed = cli("verify", "--repair", env=env)
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stdout.splitlines() == [f"repaired runs:/{published['run']}/model", f"OK {tmp_path / 'cache'}"]
    assert weights.read_bytes() == good


def test_without_mlflow_installed_the_cache_answers_and_errors_stay_one_line(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoMlflow:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'mlflow':\n"
        "            raise ModuleNotFoundError(\"No module named 'mlflow'\")\n"
        "sys.meta_path.insert(0, _NoMlflow())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLCACHE_"))}
    env.update({"PYTHONPATH": str(site), "MLCACHE_CACHE_DIR": str(tmp_path / "cache")})
    chosen = subprocess.run(
        [sys.executable, "-c", "import mlcache; print(type(mlcache.get_api()).__name__)"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert chosen.stdout.strip() == "OfflineApi", chosen.stderr
    pulled = cli("pull", "models:/fraud@champion", env=env)
    assert pulled.returncode == 1 and pulled.stderr.count("\n") == 1, pulled.stderr
    assert pulled.stderr.startswith("error: model version 'models:/fraud@champion' is not in the cache")
    found = cli("find", "runs", env=env)
    assert found.returncode == 0 and "Traceback" not in found.stderr and found.stdout.startswith("id  ")


def test_names_from_the_server_cannot_rewrite_the_terminal(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    writer = MlflowApi(tracking_uri=mlflow_server.url, cache_dir=tmp_path / "writer")
    exp = writer.create_exp(f"escapes-{time.time_ns()}")
    run = writer.create_run(exp, "clear\x1b[2Jscreen\u202egnp.exe", tags={"note": "bell\x07"})
    env = _env(mlflow_server, tmp_path / "cache")
    table = cli("find", "runs", json.dumps({"exp.id": exp.id}), env=env)
    assert table.returncode == 0, table.stderr
    assert "\x1b" not in table.stdout and "\u202e" not in table.stdout
    assert f"{run.id}  clear\\x1b[2Jscreen\\u202egnp.exe" in table.stdout
    lines = cli("find", "runs", json.dumps({"exp.id": exp.id}), "--json", env=env).stdout
    assert "\x1b" not in lines and "\x07" not in lines and "\u202e" not in lines
    assert json.loads(lines)["name"] == "clear\x1b[2Jscreen\u202egnp.exe"


def test_pull_to_the_cache_itself_is_refused_and_touches_nothing(
    mlflow_server: MlflowServer, published: dict[str, str], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    env = _env(mlflow_server, cache)
    assert cli("pull", published["uri"], env=env).returncode == 0
    assert (cache / "tmp").is_dir()
    refused = cli("pull", published["uri"], "--to", str(cache / "tmp"), env=env)
    assert refused.returncode == 1 and "cannot place an artifact inside the cache" in refused.stderr
    assert refused.stderr.count("\n") == 1 and (cache / "tmp").is_dir()
    (cache / "tmp").rmdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (cache / "tmp").symlink_to(outside)
    facts = json.loads(cli("doctor", "--json", env=env).stdout)
    assert facts["hardlinks"].startswith("unknown") and list(outside.iterdir()) == []
