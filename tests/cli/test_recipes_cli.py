"""The training recipes of issue #23 through the CLI: --optimizer muon, --schedule wsd,
--decay-fraction, --align-documents, --cooldown-from/--cooldown-iters, and ckpt inspect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from lmkit.cli.app import app

runner = CliRunner()
pytestmark = pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")


def flags(overrides: dict) -> list[str]:
    out = []
    for k, v in overrides.items():
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def test_muon_wsd_aligned_then_cooldown_then_inspect(tiny_overrides, tmp_path):
    base = dict(tiny_overrides, max_iters=12, lr_decay_iters=12, checkpoint_interval=6)
    base.pop("wandb")
    r = runner.invoke(app, ["train", *flags(base), "--no-wandb", "--optimizer", "muon", "--muon-lr", "0.03",
                            "--schedule", "wsd", "--decay-fraction", "0.25", "--align-documents"])
    assert r.exit_code == 0, r.output
    # The tiny data is a .bin from before document indexes: said once, and training goes on.
    assert "no document index" in r.stderr and "done: step 12" in r.stdout
    run_dir = Path(base["checkpoint_dir"])
    saved = yaml.safe_load((run_dir / "settings.yaml").read_text())
    assert saved["optim"]["optimizer"] == "muon" and saved["optim"]["muon_lr"] == 0.03
    assert (saved["optim"]["schedule"], saved["optim"]["decay_fraction"], saved["data"]["align_documents"]) == ("wsd", 0.25, True)

    cool_dir = tmp_path / "cool"
    c = runner.invoke(app, ["train", "--cooldown-from", str(run_dir / "ckpt_0000006.pt"), "--cooldown-iters", "3",
                            "--checkpoint-dir", str(cool_dir), "--no-wandb"])
    assert c.exit_code == 0, c.output
    assert "cooling down from" in c.stderr and "done: step 9" in c.stdout

    info = runner.invoke(app, ["ckpt", "inspect", str(cool_dir / "latest.pt")])
    assert info.exit_code == 0, info.output
    flat = " ".join(info.stdout.split())  # the table wraps long values
    assert "muon on the hidden matrices (lr 0.03, momentum 0.95, 5 Newton-Schulz steps) + adamw (lr 0.003)" in flat
    assert "wsd (decay over the last" in flat and "cooldown of" in flat and "decayed over 3 steps" in flat
    as_json = json.loads(runner.invoke(app, ["ckpt", "inspect", str(cool_dir / "latest.pt"), "--json"]).stdout)
    assert as_json["optimizer"].startswith("muon") and as_json["cooldown"]["iter"] == 6


def test_an_adamw_checkpoint_inspects_as_adamw_cosine(tiny_overrides):
    base = dict(tiny_overrides, max_iters=2, lr_decay_iters=2)
    base.pop("wandb")
    assert runner.invoke(app, ["train", *flags(base), "--no-wandb"]).exit_code == 0
    out = runner.invoke(app, ["ckpt", "inspect", str(Path(base["checkpoint_dir"]) / "latest.pt"), "--json"]).stdout
    assert json.loads(out)["optimizer"] == "adamw (lr 0.003); cosine schedule to step 2"


@pytest.mark.parametrize("args, fragment", [
    (["--optimizer", "muon", "--parallel", "fsdp"], "--optimizer and --parallel: optimizer muon does not work with parallel fsdp"),
    (["--decay-fraction", "0"], "--decay-fraction: must be > 0"),
    (["--decay-fraction", "1.5"], "--decay-fraction: must be <= 1"),
    (["--schedule", "step"], "'step' is not one of 'cosine', 'wsd', 'linear'"),
    (["--cooldown-iters", "5"], "cooldown_from and cooldown_iters go together"),
    (["--muon-momentum", "1"], "--muon-momentum: must be < 1"),
])
def test_bad_recipe_flags_exit_2_with_one_line(args, fragment):
    r = runner.invoke(app, ["train", *args, "--print-config"])
    assert r.exit_code == 2 and fragment in r.stderr and "Traceback" not in r.output, r.output


def test_cooldown_from_a_cosine_run_exits_2_in_one_line(tiny_overrides, tmp_path):
    base = dict(tiny_overrides, max_iters=2, lr_decay_iters=2)
    base.pop("wandb")
    assert runner.invoke(app, ["train", *flags(base), "--no-wandb"]).exit_code == 0
    r = runner.invoke(app, ["train", "--cooldown-from", base["checkpoint_dir"], "--cooldown-iters", "2",
                            "--checkpoint-dir", str(tmp_path / "c"), "--no-wandb"])
    assert r.exit_code == 2 and "is from a cosine run" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_help_shows_the_recipe_flags_with_examples():
    out = " ".join(runner.invoke(app, ["train", "--help"]).stdout.split())
    for example in ("Example: --optimizer muon", "Example: --schedule wsd", "Example: --align-documents",
                    "Example: --cooldown-from", "Example: --cooldown-iters 400", "--muon-lr", "--decay-fraction"):
        assert example in out, example
