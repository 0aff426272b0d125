"""Training on sharded datasets and weighted mixtures: exact resume, tokens per source, settings."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lmkit.api import resolve_settings, train
from lmkit.cli.app import app
from lmkit.errors import ConfigError
from lmkit.observe.base import MultiSink
from lmkit.observe.jsonl import read_metrics
from lmkit.settings import Settings, validate_tree
from lmkit.settings_mixture import DataSource
from tests.conftest import TINY_MODEL
from tests.data.dataset_fixtures import write_dataset

runner = CliRunner()


def _stream(n, seed, offset=0):
    rng = np.random.default_rng(seed)
    ids = (np.arange(n) * 7 % 29 + offset).astype(np.uint16)
    noise = rng.random(n) < 0.05
    ids[noise] = rng.integers(0, 64, noise.sum())
    return ids


@pytest.fixture
def mix(tmp_path):
    """Two sharded datasets (ids of different patterns) and the mixture spelling over them."""
    web = write_dataset(tmp_path / "web", "web", _stream(12000, 0), shard_tokens=997)
    code = write_dataset(tmp_path / "code", "code", _stream(6000, 1, offset=30), shard_tokens=1500)
    val = write_dataset(tmp_path / "val", "val", _stream(3000, 2), shard_tokens=1000)
    return f"web={web}:0.7,code={code}:0.3", val


class Recorder:
    def __init__(self):
        self.logs, self.run_id = [], None

    def start(self, info):
        pass

    def log(self, step, metrics):
        self.logs.append((step, dict(metrics)))

    def event(self, message, kind="info"):
        pass

    def close(self, status="finished"):
        pass


def _overrides(tmp_path, train_path, val_path, **more):
    return {**dict(TINY_MODEL, batch_size=8, max_iters=12, learning_rate=3e-3, min_lr=3e-4, warmup_iters=2, lr_decay_iters=12,
                   eval_interval=6, eval_iters=2, log_interval=2, checkpoint_interval=6, train_data_path=train_path,
                   val_data_path=str(val_path), checkpoint_dir=str(tmp_path / "run"), wandb=False, device="cpu", seed=1), **more}


def _run(overrides, **more):
    rec = Recorder()
    train(resolve_settings(overrides={**overrides, **more}, environ={}), MultiSink([rec]))
    return rec


def test_mixture_resume_is_bitwise_exact_and_keeps_tokens_by_source(tmp_path, mix):
    spelling, val = mix
    base = _overrides(tmp_path, spelling, val)
    full = _run(base, checkpoint_dir=str(tmp_path / "full"))
    _run(base, checkpoint_dir=str(tmp_path / "split"), max_iters=6)
    second = _run(base, checkpoint_dir=str(tmp_path / "split"))
    a = torch.load(tmp_path / "full" / "latest.pt", map_location="cpu", weights_only=False)
    b = torch.load(tmp_path / "split" / "latest.pt", map_location="cpu", weights_only=False)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # bit for bit on CPU
    assert a["sampler"]["tokens_by_source"] == b["sampler"]["tokens_by_source"]
    counts = a["sampler"]["tokens_by_source"]
    assert set(counts) == {"web", "code"} and sum(counts.values()) == 12 * 8 * 16 and counts["web"] > counts["code"]
    logged = {s: m["tokens_by_source"] for s, m in full.logs + second.logs if "tokens_by_source" in m}
    assert logged[12] == counts and sum(logged[6].values()) == 6 * 8 * 16
    split_losses = {s: m["loss"] for s, m in second.logs if "loss" in m}
    full_losses = {s: m["loss"] for s, m in full.logs if "loss" in m}
    assert all(full_losses[s] == v for s, v in split_losses.items())


def test_metrics_jsonl_records_tokens_by_source(tmp_path, mix):
    spelling, val = mix
    s = resolve_settings(overrides=_overrides(tmp_path, spelling, val, max_iters=4, lr_decay_iters=4), environ={})
    train(s)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    by_step = {r["step"]: r for r in rows}
    assert sum(by_step[4]["tokens_by_source"].values()) == 4 * 8 * 16 and set(by_step[4]["tokens_by_source"]) == {"web", "code"}
    saved = torch.load(tmp_path / "run" / "latest.pt", map_location="cpu", weights_only=False)["settings"]["data"]["train_data_path"]
    assert [src["name"] for src in saved] == ["web", "code"]
    assert validate_tree({"data": {"train_data_path": saved}}).data.train_data_path[1].weight == 0.3


def test_sharded_dataset_trains_like_the_one_file(tmp_path):
    ids = _stream(12000, 0)
    one = write_dataset(tmp_path / "one", "t", ids, shard_tokens=10**6)
    many = write_dataset(tmp_path / "many", "t", ids, shard_tokens=101)  # 119 shards
    val = write_dataset(tmp_path / "val", "val", _stream(3000, 2), shard_tokens=1000)
    a = _run(_overrides(tmp_path, str(one.with_suffix(".bin")), val, max_iters=4, lr_decay_iters=4), checkpoint_dir=str(tmp_path / "a"))
    b = _run(_overrides(tmp_path, str(many), val, max_iters=4, lr_decay_iters=4), checkpoint_dir=str(tmp_path / "b"))
    losses = lambda rec: [(s, m.get("loss"), m.get("val_loss")) for s, m in rec.logs]
    assert losses(a) == losses(b) and not any("tokens_by_source" in m for _, m in a.logs)


def test_yaml_mixture_and_old_plain_paths(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train_data_path:\n  - {name: web, path: data/web.json, weight: 0.7}\n  - {path: data/code/, weight: 0.3}\n")
    s = resolve_settings(config=cfg, environ={})
    assert s.data.train_data_path == [DataSource(name="web", path=Path("data/web.json"), weight=0.7),
                                      DataSource(name="code", path=Path("data/code"), weight=0.3)]
    cfg.write_text("train_data_path:\n  - {name: web, path: data/web.json}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: train_data_path: source 1 \(data/web\.json\): needs a 'weight' > 0"):
        resolve_settings(config=cfg, environ={})
    # A checkpoint's settings from before mixtures: a plain path stays a path, and dumps as before.
    old = Settings().model_dump(mode="json")
    old["data"]["train_data_path"] = "data/train.bin"
    again = validate_tree(old)
    assert again.data.train_data_path == Path("data/train.bin") and again.model_dump(mode="json") == old


@pytest.mark.parametrize(("value", "message"), [
    ("web=a.json:-0.5,code=b.json:0.5", r"source 1 \('web=a\.json:-0\.5'\): weight -0\.5 must be a finite number > 0"),
    ("a.json:0,b.json:0", r"weight 0 must be a finite number > 0"),
    ("web=a.json:0.7,code=b.json", r"source 2 \('code=b\.json'\) has no ':weight'"),
    ("web=a.json:0.7,,b.json:1", r"source 2 is empty"),
    ("web=a.json:x,b.json:1", r"weight 'x' is not a number"),
    ("web=a.json:1,web=b.json:1", r"source name 'web' is used twice"),
    ("a.json:inf,b.json:1", r"weight inf must be a finite number > 0"),
])
def test_cli_mixture_spelling_errors_exit_2_in_one_line(value, message):
    result = runner.invoke(app, ["train", "--print-config", "--train-data-path", value])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lmkit: error: --train-data-path: "), result.stderr
    assert re.search(message, lines[0]), lines[0]


def test_cli_mixture_with_an_unknown_path_exits_2_naming_it(tmp_path, mix):
    spelling, val = mix
    bad = spelling.replace("code=", "code=" + str(tmp_path / "nope") + "/x", 1).split(",")[1]
    args = ["train", "--train-data-path", f"{spelling.split(',')[0]},{bad}", "--val-data-path", str(val), "--device", "cpu",
            "--no-wandb", "--checkpoint-dir", str(tmp_path / "run"), "--max-iters", "1",
            *[f"--{k.replace('_', '-')}={v}" for k, v in TINY_MODEL.items()]]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("lmkit: error")]
    assert len(lines) == 1 and "nope" in lines[0] and "not found" in lines[0], result.stderr
    assert not (tmp_path / "run" / "latest.pt").exists()
