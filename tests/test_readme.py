"""The README's Python snippets run as written.

Every ```python block of README.md is run as a user would paste it, on the embedded default (a
local sqlite MLflow store, no server) with HOME, the XDG dirs, MLCACHE_CACHE_DIR and the working
directory in a temporary folder, and none of the developer's MLFLOW_* or MLCACHE_* variables.

The blocks of one README section build on each other: they run in order, in one fresh process.
The Quickstart runs first, and every other section runs after it, on the store and cache it
filled (the user stories load, export and import the model it registers).

Two conventions in the README:
- `<!-- snippet: skip (why) -->` on the line before a fence skips that block, for blocks that
  need a service the test cannot give (a real bucket, a remote server);
- `print(...)  # -> text`: the process must print `text` as one line of its output.

A failing block fails its section's test, naming the block's README line and its first line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
SETUP = "Quickstart"
PYTHON_FENCES = {"python", "py", "python3"}
MARKER = re.compile(r"^<!--\s*snippet:(.*)-->\s*$")
SKIP = re.compile(r"^\s*skip\s*\((.+)\)\s*$")
EXPECTED = re.compile(r"^print\(.*\)\s+#\s*->\s*(.+?)\s*$")
FAILED = "README-SNIPPET-FAILED"

# Runs the blocks of one section in one namespace, as one pasted script; each block is compiled
# at its own README line numbers, so a traceback points into README.md.
RUNNER = f"""
import json, sys, traceback
namespace = {{"__name__": "__main__"}}
for block in json.loads(sys.stdin.read()):
    code = compile("\\n" * (block["line"] - 1) + block["code"], block["file"], "exec")
    try:
        exec(code, namespace)
    except BaseException:
        traceback.print_exc()
        print("{FAILED}", block["line"], file=sys.stderr)
        sys.exit(1)
    sys.stdout.flush()
"""


@dataclass(frozen=True)
class Block:
    """One ```python block: where its code starts in README.md, the code, and why it is skipped."""

    section: str
    line: int
    code: str
    skip: str | None = None

    @property
    def first_line(self) -> str:
        return next((text for text in self.code.splitlines() if text.strip()), "")

    @property
    def where(self) -> str:
        return f"README.md:{self.line} ({self.first_line!r})"


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)

    @property
    def runnable(self) -> list[Block]:
        return [block for block in self.blocks if block.skip is None]


def parse(text: str) -> list[Section]:
    """The README's sections holding ```python blocks, in order, each with its blocks in order."""
    sections: dict[str, Section] = {}
    title = "(top)"
    lines = text.splitlines()
    fence: str | None = None
    start = 0
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if fence is None:
            if stripped.startswith("```"):
                fence, start = stripped[3:].strip().lower(), number
            elif line.startswith("#"):
                title = line.lstrip("#").strip()
            continue
        if stripped != "```":
            continue
        if fence in PYTHON_FENCES:
            before = lines[start - 2].strip() if start >= 2 else ""
            block = Block(title, start + 1, "\n".join(lines[start : number - 1]) + "\n", skip_reason(before, start))
            sections.setdefault(title, Section(title)).blocks.append(block)
        fence = None
    if fence is not None:
        raise AssertionError(f"README.md:{start}: a ``` fence is never closed")
    return list(sections.values())


def skip_reason(line: str, fence_line: int) -> str | None:
    """The reason of a `<!-- snippet: skip (why) -->` marker; any other snippet marker is an error."""
    marker = MARKER.match(line)
    if marker is None:
        return None
    skip = SKIP.match(marker.group(1))
    if skip is None:
        raise AssertionError(
            f"README.md:{fence_line - 1}: unknown snippet marker {line!r}; write <!-- snippet: skip (why) -->"
        )
    return skip.group(1).strip()


def ordered(sections: list[Section]) -> list[Section]:
    """The Quickstart first, then the others in README order."""
    return sorted(sections, key=lambda section: section.title != SETUP)


SECTIONS = ordered(parse(README.read_text(encoding="utf-8")))


@dataclass
class Sandbox:
    """Where the snippets run: a home, data and cache dirs and a working directory of their own."""

    cwd: Path
    env: dict[str, str]


@dataclass
class Outcome:
    section: Section
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    root = tmp_path_factory.mktemp("readme")
    env = {name: value for name, value in os.environ.items() if not name.startswith(("MLFLOW_", "MLCACHE_"))}
    dirs = {
        "HOME": root / "home",
        "XDG_DATA_HOME": root / "data",
        "XDG_CACHE_HOME": root / "cache",
        "XDG_CONFIG_HOME": root / "config",
        "MLCACHE_CACHE_DIR": root / "mlcache-cache",
    }
    for name, path in dirs.items():
        path.mkdir()
        env[name] = str(path)
    # The snippets document this checkout, so they run against its package.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    cwd = root / "work"
    cwd.mkdir()
    return Sandbox(cwd, env)


def run_section(section: Section, sandbox: Sandbox) -> Outcome:
    blocks = [{"file": str(README), "line": block.line, "code": block.code} for block in section.runnable]
    result = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps(blocks),
        capture_output=True,
        text=True,
        cwd=sandbox.cwd,
        env=sandbox.env,
        timeout=240,
    )
    return Outcome(section, result.returncode, result.stdout, result.stderr)


def check(outcome: Outcome) -> None:
    """Fail naming the block that raised, or the `# ->` line whose output is missing."""
    blocks = outcome.section.runnable
    if outcome.returncode != 0:
        found = re.search(rf"^{FAILED} (\d+)$", outcome.stderr, re.MULTILINE)
        failed = next((block for block in blocks if found and block.line == int(found.group(1))), None)
        what = f"the block at {failed.where}" if failed else f"section {outcome.section.title!r}"
        pytest.fail(
            f"{what} failed (exit {outcome.returncode}):\n{outcome.stderr.strip()[-4000:]}\n"
            f"stdout:\n{outcome.stdout.strip()[-2000:]}",
            pytrace=False,
        )
    printed = {line.rstrip() for line in outcome.stdout.splitlines()}
    for block in blocks:
        for offset, text in enumerate(block.code.splitlines()):
            expected = EXPECTED.match(text)
            if expected and expected.group(1) not in printed:
                pytest.fail(
                    f"README.md:{block.line + offset} ({text.strip()!r}) in the block at {block.where}: "
                    f"expected the line {expected.group(1)!r}, the snippets printed:\n{outcome.stdout}",
                    pytrace=False,
                )


@pytest.fixture(scope="module")
def quickstart(sandbox: Sandbox) -> Outcome:
    """The Quickstart, run once: every other section runs on the store and cache it filled."""
    setup = next((section for section in SECTIONS if section.title == SETUP), None)
    assert setup is not None and setup.runnable, f"README.md has no runnable ```python block under ## {SETUP}"
    return run_section(setup, sandbox)


def test_the_readme_has_snippets() -> None:
    assert sum(len(section.blocks) for section in SECTIONS) >= 5
    for section in SECTIONS:
        for block in section.blocks:
            assert block.first_line, f"README.md:{block.line}: an empty ```python block"


@pytest.mark.parametrize("section", SECTIONS, ids=[section.title for section in SECTIONS])
def test_readme_section_runs_as_written(section: Section, sandbox: Sandbox, quickstart: Outcome) -> None:
    if not section.runnable:
        reasons = "; ".join(f"{block.where}: {block.skip}" for block in section.blocks)
        pytest.skip(f"every block is marked skip: {reasons}")
    if section.title == SETUP:
        check(quickstart)
        return
    if quickstart.returncode != 0:
        pytest.fail(f"runs on what the {SETUP} creates, and the {SETUP} failed", pytrace=False)
    check(run_section(section, sandbox))


def _cli_lines() -> list[tuple[int, str]]:
    """The `mlcache ...` command lines of the README's shell blocks, with their line numbers."""
    found, fence = [], None
    for number, line in enumerate(README.read_text().splitlines(), 1):
        if line.startswith("```"):
            fence = line[3:].strip() if fence is None else None
            continue
        if fence in ("bash", "sh", "shell"):
            command = line.split("#")[0].strip()
            command = re.sub(r"^(\w+=\S+\s+)+", "", re.sub(r"^\w+=\$\((.*)\)$", r"\1", command))
            if command.startswith("mlcache "):
                found.append((number, command))
    return found


def test_every_cli_line_names_a_command_and_options_it_has() -> None:
    from typer.main import get_command

    from mlcache.cli import app

    root = get_command(app)
    global_options = {opt for param in root.params for opt in param.opts + param.secondary_opts}
    lines = _cli_lines()
    assert len(lines) > 10
    for number, command in lines:
        words = command.split()[1:]
        while words and words[0].startswith("--"):
            words = words[2:] if words[0] in ("--cache-dir", "--tracking-uri", "--timeout", "--plugin") else words[1:]
        assert words, f"README.md:{number}: no command in {command!r}"
        sub = root.commands.get(words[0])  # type: ignore[attr-defined]
        assert sub is not None, f"README.md:{number}: no command {words[0]!r}"
        known = {opt for param in sub.params for opt in param.opts + param.secondary_opts} | global_options
        for word in words[1:]:
            if word.startswith("--"):
                assert word.split("=")[0] in known, f"README.md:{number}: {words[0]} has no option {word}"
