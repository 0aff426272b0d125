"""README.md as a tested document: its install lines install this project, and its code runs.

Every fenced block is accounted for: ``python`` blocks run in order in one namespace (like a
notebook's cells), ``console`` blocks run each ``$ lmkit ...`` command in order and compare the
shape of the output shown (numbers, hashes and absolute paths aside), ``bash`` blocks run unless
listed in ``NOT_RUN`` with the reason, ``yaml`` blocks must be valid settings files, and ``text``
blocks are pictures of output. Training is shrunk ten-fold (``--max-iters 300`` runs 30 steps),
otherwise each command runs as written, in a temporary directory holding Tiny Shakespeare.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

# bash blocks the test does not run, by their first line, and why.
NOT_RUN = {
    "uv run lmkit train --demo": "the set-up commands themselves: this suite is the second one, and the demo has its own CLI test",
    "lmkit train --nproc-per-node 8": "needs 8 GPUs",
    "# on each of 2 nodes": "needs two machines",
    "lmkit --install-completion": "would edit the shell's start-up files",
}
# Flags of `lmkit train` whose values are divided by SHRINK (300 steps -> 30), and the settings the
# commands leave to the config file, shrunk the same way through the environment (flags win).
SHRINK = 10
SHRUNK_FLAGS = ("--max-iters", "--lr-decay-iters", "--checkpoint-interval")
SHRUNK_ENV = {"LMKIT_EVAL_INTERVAL": "10", "LMKIT_EVAL_ITERS": "2", "LMKIT_WARMUP_ITERS": "5"}
# Output lines not compared: progress and timing diagnostics, and messages other changes reword.
UNCHECKED = re.compile(r"^(\.\.\.|\[checkpoint\]|lmkit: (?!error:)|(pretokenize|merge|encode|eval): )")


@dataclass
class Block:
    lang: str
    line: int  # where the block starts in README.md, for messages
    text: str


@dataclass
class Command:
    argv: list[str]
    env: dict[str, str]
    expected: list[str] = field(default_factory=list)  # the output lines the README shows


def readme_blocks() -> list[Block]:
    """Every fenced code block of the README, in order."""
    blocks, lang, start, body = [], None, 0, []
    for n, line in enumerate(README.read_text(encoding="utf-8").splitlines(), 1):
        if lang is None and line.startswith("```"):
            lang, start, body = line[3:].strip(), n, []
        elif lang is not None and line.startswith("```"):
            blocks.append(Block(lang, start, "\n".join(body) + "\n"))
            lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, f"README.md:{start}: unterminated code block"
    return blocks


def console_commands(block: Block) -> list[Command]:
    """The ``$ ...`` commands of a console block (continuation lines joined), with their output."""
    commands: list[Command] = []
    lines = block.text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            cmd = line[2:]
            while cmd.endswith("\\"):
                i += 1
                cmd = cmd[:-1] + " " + lines[i].strip()
            words = shlex.split(cmd)
            env = {}
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
                key, _, value = words.pop(0).partition("=")
                env[key] = value
            commands.append(Command(words, env))
        elif commands:
            commands[-1].expected.append(line)
        i += 1
    return commands


_SHAPES = [
    (re.compile(r"sha256:[0-9a-f]+"), "sha256:HASH"),
    (re.compile(r"(?<![\w/.])/[^\s)]+"), "PATH"),  # absolute paths: /tmp/tour/tok
    (re.compile(r"(?<![A-Za-z])\d[\d,]*(\.\d+)?(e[+-]?\d+)?[kMG]?"), "N"),
    (re.compile(r"\s+"), " "),
]


def shape(line: str) -> str:
    """A line with what varies between runs taken out: numbers, hashes, absolute paths, spacing."""
    for pattern, repl in _SHAPES:
        line = pattern.sub(repl, line)
    return line.strip()


def test_shape_ignores_what_varies():
    assert shape("step 10/300 | loss 6.7700 | lr 6.00e-04 | 14.9k tok/s | eta 0:00:40") == shape(
        "step 20/30 | loss 5.1 | lr 1.20e-03 | 8.1k tok/s | eta 0:01:02")
    assert shape("tokenizer      sha256:e29e3004a8a0af01 (1024 ids) at /tmp/tour/tok") == shape(
        "tokenizer sha256:00ff (1024 ids) at /tmp/pytest-1/x/tok")
    assert shape("data/train.bin: 411,228 tokens (uint16)") != shape("data/train.bin: 411,228 tokens (uint32)")
    assert shape("wall time      40.8s") == shape("wall time 9.1s")


# ------------------------------------------------------------------ install instructions

def test_install_instructions_install_this_project():
    """`pip install 'lmkit[plot]'` fetched an unrelated package of that name from PyPI."""
    text = README.read_text(encoding="utf-8")
    for m in re.finditer(r"\b(pip|pipx|uv pip|uv tool) install ([^`\n]*)", text):
        targets = [w for w in shlex.split(m.group(2)) if not w.startswith("-")]
        for target in targets:
            if target == "uv":  # the installer itself
                continue
            assert target.startswith((".", "/", "git+")) or "@ git+" in target, (
                f"README.md: `{m.group(0)}` installs {target!r} from a package index, not this project"
            )
    assert not re.search(r"\buv add ['\"]?lmkit", text)
    assert re.search(r"not yet published", text), "the README should say the name lmkit is not yet published"


def test_no_message_names_the_registry_package():
    for path in (REPO / "lmkit").rglob("*.py"):
        hit = re.search(r"(pip|uv) (install|add) ['\"]?lmkit\b", path.read_text(encoding="utf-8"))
        assert hit is None, f"{path.relative_to(REPO)}: {hit.group(0)!r} installs someone else's lmkit"


def test_every_block_is_accounted_for():
    for block in readme_blocks():
        assert block.lang in ("python", "console", "bash", "yaml", "text"), f"README.md:{block.line}: block of {block.lang!r}"
        if block.lang == "console":
            assert console_commands(block), f"README.md:{block.line}: console block without a `$ ` command"


# ------------------------------------------------------------------ running the blocks

@pytest.fixture
def workdir(tmp_path: Path, shared_data: Path, monkeypatch) -> Path:
    """A directory as the tour starts: Tiny Shakespeare, the example configs, a clean LMKIT_* env."""
    shutil.copy(shared_data / "tinyshakespeare.txt", tmp_path / "tinyshakespeare.txt")
    shutil.copytree(REPO / "examples" / "configs", tmp_path / "examples" / "configs")
    for key in list(os.environ):
        if key.startswith("LMKIT_") or key == "WANDB_API_KEY":
            monkeypatch.delenv(key)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.chdir(tmp_path)
    import torch

    # One thread: on a shared CI box, two OpenMP threads spinning against other jobs made each
    # step of the tiny model 60 times slower than on an idle machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)


def run_bash_blocks(cwd: Path) -> int:
    """Run the bash blocks not in NOT_RUN, with this environment's Python first on PATH."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    ran = 0
    for block in readme_blocks():
        if block.lang != "bash":
            continue
        first = block.text.splitlines()[0].strip()
        if any(first.startswith(k) for k in NOT_RUN):
            continue
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block.text], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, f"README.md:{block.line}: exit {proc.returncode}\n{proc.stderr[-2000:]}"
        ran += 1
    return ran


def test_not_run_names_real_blocks():
    firsts = [b.text.splitlines()[0].strip() for b in readme_blocks() if b.lang == "bash"]
    for key in NOT_RUN:
        assert any(f.startswith(key) for f in firsts), f"NOT_RUN names {key!r}, which the README no longer has"


def test_yaml_blocks_are_valid_settings(tmp_path: Path):
    from lmkit.settings import resolve_settings

    yamls = [b for b in readme_blocks() if b.lang == "yaml"]
    assert yamls
    for block in yamls:
        path = tmp_path / f"block{block.line}.yaml"
        path.write_text(block.text, encoding="utf-8")
        resolve_settings(path, environ={})  # raises ConfigError, naming the key, on a bad block


def _shrunk(cmd: Command) -> Command:
    """`lmkit train` ten times shorter; every other command as written."""
    if cmd.argv[:2] != ["lmkit", "train"] or "--print-config" in cmd.argv:
        return cmd
    argv = list(cmd.argv)
    for i, word in enumerate(argv[:-1]):
        if word in SHRUNK_FLAGS:
            argv[i + 1] = str(max(1, int(argv[i + 1]) // SHRINK))
    return Command(argv, {**SHRUNK_ENV, **cmd.env}, cmd.expected)


def _check_output(where: str, cmd: Command, out: str) -> None:
    # One string, so that a line the terminal width wrapped still matches the README's.
    shown = " ".join(shape(line) for line in out.splitlines())
    is_generate = cmd.argv[:2] == ["lmkit", "generate"]
    missing = [
        line for line in cmd.expected
        if line.strip() and not UNCHECKED.match(line)
        and not (is_generate and not line.startswith("lmkit:"))  # sampled text differs with training
        and not line.startswith("lmkit: error:")
        and shape(line) not in shown
    ]
    assert not missing, (f"{where}: `{shlex.join(cmd.argv)}` printed nothing shaped like these README lines "
                         "(update the README's output):\n  " + "\n  ".join(missing) + "\n--- output:\n" + out[-3000:])


@pytest.mark.slow
def test_console_blocks_run_as_shown(workdir: Path):
    from typer.testing import CliRunner

    from lmkit.cli.app import app

    assert run_bash_blocks(workdir) >= 1  # the split into data/train.txt and data/val.txt
    ran = 0
    for block in readme_blocks():
        if block.lang != "console":
            continue
        for cmd in console_commands(block):
            where = f"README.md:{block.line}"
            cmd = _shrunk(cmd)
            if cmd.argv[0] == "ls":
                names = {shape(w) for line in cmd.expected for w in line.split()}  # ckpt_0000300.pt: 30 here
                present = {shape(name) for name in os.listdir(cmd.argv[1])}
                assert names <= present, f"{where}: {sorted(names - present)} not in {cmd.argv[1]}: {sorted(present)}"
                continue
            assert cmd.argv[0] == "lmkit", f"{where}: the test only knows how to run lmkit and ls, not {cmd.argv[0]!r}"
            started = time.monotonic()
            result = CliRunner(env=cmd.env).invoke(app, cmd.argv[1:])
            print(f"{where}: {time.monotonic() - started:.1f}s  {shlex.join(cmd.argv)}")  # shown by pytest on failure
            failing = any(line.startswith("lmkit: error:") for line in cmd.expected)
            expected_code = 2 if failing else 0
            assert result.exit_code == expected_code, (
                f"{where}: `{shlex.join(cmd.argv)}` exited {result.exit_code}, not {expected_code}\n{result.output[-3000:]}"
                + (f"\n{result.exc_info}" if result.exception and not isinstance(result.exception, SystemExit) else "")
            )
            if failing:
                assert "lmkit: error:" in result.stderr
            if cmd.argv[:2] == ["lmkit", "generate"]:
                prompt = cmd.argv[cmd.argv.index("--prompt") + 1]
                assert result.stdout.startswith(prompt), result.stdout[:200]
            _check_output(where, cmd, result.output)
            ran += 1
    assert ran >= 8


def _expected_prints(code: str) -> list[str]:
    """``# ...`` comment lines right after a ``print(...)`` line: the output the README shows."""
    out, after_print = [], False
    for line in code.splitlines():
        stripped = line.strip()
        if after_print and stripped.startswith("# "):
            out.append(stripped[2:])
            continue
        after_print = stripped.startswith("print(")
    return out


@pytest.mark.slow
def test_python_blocks_run_in_order(workdir: Path):
    pytest.importorskip("matplotlib")  # the README shows the PNG's path; without it, text charts
    run_bash_blocks(workdir)
    namespace: dict = {"__name__": "__readme__"}
    blocks = [b for b in readme_blocks() if b.lang == "python"]
    assert len(blocks) >= 3  # tokenizer + encode, train + plot, generate + eval
    for block in blocks:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(compile(block.text, f"README.md:{block.line}", "exec"), namespace)  # noqa: S102
        shown = " ".join(shape(line) for line in buf.getvalue().splitlines())
        for line in _expected_prints(block.text):
            assert shape(line) in shown, f"README.md:{block.line}: printed no line like {line!r}:\n{buf.getvalue()}"
    # The notebook run wrote the run directory the CLI writes.
    run_dir = workdir / "runs" / "notebook"
    for name in ("metrics.jsonl", "settings.yaml", "latest.pt", "metrics.png"):
        assert (run_dir / name).is_file(), name
