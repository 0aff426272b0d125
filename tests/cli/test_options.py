"""Flags from the settings tree (lmkit/cli/options.py): values, bounds, on/off flags, hostile input."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
import yaml
from typer.testing import CliRunner

from lmkit.cli.app import app

runner = CliRunner()


def _config(args: list[str]) -> dict:
    result = runner.invoke(app, ["train", "--print-config", *args], env={"LMKIT_MAX_ITERS": None})
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.stdout)


@pytest.mark.parametrize(
    "args, wandb",
    [(["--wandb", "false"], False), (["--wandb=false"], False), (["--wandb", "true"], True), (["--wandb=yes"], True),
     (["--no-wandb"], False), (["--no-wandb=false"], True), (["--wandb", "0"], False), (["--wandb", "False"], False)],
)
def test_on_off_flags_also_take_true_or_false(args, wandb):
    assert _config(args)["logging"]["wandb"] is wandb


def test_plain_flag_set_false_is_left_out():
    result = runner.invoke(app, ["train", "--print-config=false", "--train-data-path", "/nonexistent/t.bin", "--device", "cpu"])
    # Not printed: it went on to train, and stopped at the missing data.
    assert result.exit_code == 2 and "model:" not in result.stdout and "/nonexistent/t.bin" in result.stderr
    assert _config(["--activation-checkpointing", "true"])["train"]["activation_checkpointing"] is True
    assert _config(["--compile=off"])["runtime"]["compile"] is False


def test_flag_with_a_non_boolean_value_is_one_line():
    result = runner.invoke(app, ["train", "--print-config", "--wandb=maybe"])
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "lmkit: error: --wandb takes no value or one of true/false (got 'maybe') (see 'lmkit train --help')"


def test_integral_spellings_on_flags():
    cfg = _config(["--max-iters", "1e4", "--batch-size", "8.0", "--seed", "0"])
    assert (cfg["train"]["max_iters"], cfg["train"]["batch_size"], cfg["runtime"]["seed"]) == (10000, 8, 0)


# --- every numeric flag of every command, with values no run wants ---------------------------

# (More spellings per type are in tests/test_settings.py; here every flag gets the main kinds.)
INT_VALUES = ["-1", "18446744073709551616", "1e23", "nan", "1.5", "x"]
FLOAT_VALUES = ["inf", "nan", "1e400", "x"]
# Required options and arguments filled with values that fail only later (nothing is read before the flags).
FILLERS = {"--checkpoint": "/nonexistent/ck.pt", "--data": "/nonexistent/v.bin", "--input": "/nonexistent/in.txt",
           "--output": "/nonexistent/out", "--vocab-size": "300"}
EXTRA = {("train",): ["--print-config"], ("generate",): ["--prompt", "hi"]}


def _annotation_name(p) -> str:
    """``int``/``float`` for a typed option: typer >= 0.29 keeps the annotation, older releases
    (the GPU machine's) hand click's parameter type ("integer", "float range", ...)."""
    desc = getattr(p, "type_descriptor", None)
    if desc is not None:
        return getattr(desc.annotation, "__name__", "")
    name = getattr(getattr(p, "type", None), "name", "").split(" ")[0]
    return {"integer": "int", "float": "float"}.get(name, name)


def _numeric_flags():
    def walk(group, path=()):
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                yield from walk(cmd, (*path, name))
                continue
            for p in cmd.params:
                if p.param_type_name != "option" or getattr(p, "is_flag", False) or p.hidden:
                    continue
                # Settings flags travel as text with an <int>/<float> metavar; the others are typed.
                kind = p.metavar if p.metavar in ("<int>", "<float>") else _annotation_name(p)
                if kind.strip("<>") in ("int", "float"):
                    yield (*path, name), cmd, next(o for o in p.opts if o.startswith("--")), "float" in kind

    return list(walk(typer.main.get_command(app)))


NUMERIC = _numeric_flags()
CASES = [(path, cmd, flag, v) for path, cmd, flag, is_float in NUMERIC for v in (FLOAT_VALUES if is_float else INT_VALUES)]


def test_the_table_covers_every_command_with_numbers():
    paths = {" ".join(path) for path, *_ in NUMERIC}
    assert {"train", "generate", "eval", "tokenize train", "tokenize import-ids", "tokenize encode"} <= paths
    assert len(NUMERIC) > 30


@pytest.mark.parametrize("path, cmd, flag, value", CASES, ids=[f"{' '.join(c[0])} {c[2]} {c[3]}" for c in CASES])
def test_hostile_numeric_flag_is_one_line_naming_the_flag(tmp_path, path, cmd, flag, value):
    argv = [*path]
    for p in cmd.params:
        if p.param_type_name == "argument":
            argv.append("/nonexistent/path")
        elif p.required and (p.opts[-1] if p.opts[-1].startswith("--") else p.opts[0]) != flag:
            argv += [next(o for o in p.opts if o.startswith("--")), FILLERS.get(next(o for o in p.opts if o.startswith("--")), "x")]
    argv += [*EXTRA.get(path, []), "--checkpoint-dir", str(tmp_path / "run")] if path == ("train",) else EXTRA.get(path, [])
    argv += [f"{flag}={value}"]
    result = runner.invoke(app, argv, env={"COLUMNS": "80"})
    assert result.exit_code == 2, (argv, result.output)
    assert "Traceback" not in result.stderr and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("lmkit: error: ") and flag in line, (argv, line)


@pytest.mark.parametrize("value", [str(2**64), "!!python/name:os.system"])
def test_hostile_seed_in_a_real_process(tmp_path, value):
    """`python -m lmkit` as a user runs it: the seed flag and variable each give one line, exit 2."""
    for argv, env, name in ((["--seed", value], {}, "--seed"), ([], {"LMKIT_SEED": value}, "LMKIT_SEED")):
        proc = subprocess.run([sys.executable, "-m", "lmkit", "generate", "-k", str(tmp_path / "no.pt"), "-p", "hi", *argv],
                              capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **env}, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout == "" and "Traceback" not in proc.stderr
        assert proc.stderr.startswith(f"lmkit: error: {name}: must be ") and proc.stderr.count("\n") == 1, proc.stderr
