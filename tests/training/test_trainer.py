"""The training loop on tiny CPU configs: learning, exact resume, accumulation, checkpoints."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from lmkit.api import resolve_settings, train
from lmkit.errors import CheckpointError, ConfigError, DataError
from lmkit.observe.base import MultiSink
from lmkit.training.checkpoint import load_checkpoint
from lmkit.training.trainer import Trainer


class Recorder:
    """A sink that keeps every metric dict it is given."""

    def __init__(self):
        self.logs: list[tuple[int, dict]] = []
        self.events: list[str] = []
        self.run_id = None

    def start(self, info):
        self.info = info

    def log(self, step, metrics):
        self.logs.append((step, dict(metrics)))

    def event(self, message, kind="info"):
        self.events.append(message)

    def close(self, status="finished"):
        self.status = status

    def losses(self) -> dict[int, float]:
        return {s: m["loss"] for s, m in self.logs if "loss" in m}


def run(overrides: dict, **more) -> tuple[Recorder, object]:
    rec = Recorder()
    result = train(resolve_settings(overrides={**overrides, **more}, environ={}), MultiSink([rec]))
    return rec, result


def test_loss_falls_and_outputs_written(tiny_overrides):
    rec, result = run(tiny_overrides, max_iters=60, lr_decay_iters=60, log_interval=10)
    losses = rec.losses()
    assert losses[60] < losses[10] * 0.6, losses
    run_dir = Path(tiny_overrides["checkpoint_dir"])
    assert (run_dir / "latest.pt").is_file() and (run_dir / "ckpt_0000060.pt").is_file()
    assert (run_dir / "settings.yaml").is_file()
    assert result.status == "finished" and result.step == 60 and result.val_loss is not None
    assert any("checkpoint saved" in e for e in rec.events)


def test_overfit_one_batch(tiny_overrides, tmp_path):
    from tests.conftest import write_token_data

    # A file exactly one window long: every batch is the same window.
    one = write_token_data(tmp_path / "one" / "train.bin", num_tokens=17)
    rec, _ = run(tiny_overrides, train_data_path=str(one), val_data_path="", batch_size=2, max_iters=150,
                 lr_decay_iters=150, learning_rate=1e-2, log_interval=50, weight_decay=0.0)
    assert rec.losses()[150] < 0.05


def test_resume_equals_uninterrupted_run(tiny_overrides, tmp_path):
    base = dict(tiny_overrides, max_iters=20, lr_decay_iters=20, log_interval=1, checkpoint_interval=10, eval_interval=5)
    full, _ = run(base, checkpoint_dir=str(tmp_path / "full"))
    first, _ = run(base, checkpoint_dir=str(tmp_path / "split"), max_iters=10)
    second, res = run(base, checkpoint_dir=str(tmp_path / "split"))
    assert res.step == 20
    split = {**first.losses(), **second.losses()}
    assert split == full.losses()  # bit for bit on CPU
    val_full = [m["val_loss"] for _, m in full.logs if "val_loss" in m]
    val_split = [m["val_loss"] for _, m in first.logs + second.logs if "val_loss" in m]
    assert val_split == val_full


def test_resume_with_grad_accumulation_is_exact(tiny_overrides, tmp_path):
    base = dict(tiny_overrides, max_iters=12, lr_decay_iters=12, log_interval=1, checkpoint_interval=6, grad_accum_steps=4)
    full, _ = run(base, checkpoint_dir=str(tmp_path / "full"))
    run(base, checkpoint_dir=str(tmp_path / "split"), max_iters=6)
    second, _ = run(base, checkpoint_dir=str(tmp_path / "split"))
    assert {s: l for s, l in full.losses().items() if s > 6} == second.losses()


def test_accumulation_matches_one_big_batch(tiny_overrides, tmp_path):
    one, _ = run(tiny_overrides, checkpoint_dir=str(tmp_path / "a"), log_interval=1, max_iters=5)
    four, _ = run(tiny_overrides, checkpoint_dir=str(tmp_path / "b"), log_interval=1, max_iters=5, grad_accum_steps=4)
    for step, loss in one.losses().items():
        assert four.losses()[step] == pytest.approx(loss, rel=1e-4, abs=1e-5)


def test_grad_clip_bounds_the_update(tiny_overrides, tmp_path):
    s = resolve_settings(overrides=dict(tiny_overrides, grad_clip=1e-3, max_iters=1, checkpoint_dir=str(tmp_path / "c")), environ={})
    trainer = Trainer(s)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.run()
    # With a tiny clip, the first AdamW step still moves each weight by about lr (Adam normalises),
    # but the reported norm is the pre-clip norm and the stored grads were scaled to <= clip.
    moved = max((p - b).abs().max().item() for p, b in zip(trainer.model.parameters(), before))
    assert 0 < moved <= 2 * s.optim.learning_rate


def test_checkpoint_contents_and_safe_load(tiny_overrides):
    run(tiny_overrides)
    state = load_checkpoint(Path(tiny_overrides["checkpoint_dir"]) / "latest.pt")
    assert state["format"] == "lmkit-checkpoint" and state["iter"] == 20
    assert state["tokens_seen"] == 20 * 8 * 16
    assert set(state) >= {"model", "optimizer", "rng", "sampler", "settings", "best_val_loss", "lmkit_version", "model_config"}
    assert not any(k.startswith("_orig_mod") for k in state["model"])
    assert state["settings"]["model"]["d_model"] == 32


def test_keep_last_prunes(tiny_overrides):
    run(tiny_overrides, max_iters=40, checkpoint_interval=5, keep_last=2)
    names = sorted(p.name for p in Path(tiny_overrides["checkpoint_dir"]).glob("ckpt_*.pt"))
    assert names == ["ckpt_0000035.pt", "ckpt_0000040.pt"]


def test_architecture_change_on_resume_is_refused(tiny_overrides):
    run(tiny_overrides)
    with pytest.raises(ConfigError) as e:
        run(tiny_overrides, d_model=64, max_iters=30)
    assert any("model.d_model differs" in p for p in e.value.problems)


def test_safe_change_on_resume_is_applied_and_listed(tiny_overrides):
    run(tiny_overrides)
    notices = []
    s = resolve_settings(overrides=dict(tiny_overrides, max_iters=25, learning_rate=1e-3), environ={})
    result = Trainer(s, notice=notices.append).run()
    assert result.step == 25
    assert any("resuming from" in n and "max_iters: 20 -> 25" in n for n in notices)


def test_activation_checkpointing_trains_the_same_and_can_be_switched_on_resume(tiny_overrides, tmp_path):
    """Recomputing blocks in backward changes memory, not the math: the same losses step for
    step, and a run can turn it on (or cuda_graphs off) when it resumes."""
    base = dict(tiny_overrides, max_iters=8, lr_decay_iters=8, log_interval=1, checkpoint_interval=4)
    plain, _ = run(base, checkpoint_dir=str(tmp_path / "plain"))
    recomputed, _ = run(base, checkpoint_dir=str(tmp_path / "ac"), activation_checkpointing=True)
    assert recomputed.losses() == pytest.approx(plain.losses(), rel=1e-6)
    run(base, checkpoint_dir=str(tmp_path / "split"), max_iters=4)
    notices = []
    s = resolve_settings(overrides=dict(base, checkpoint_dir=str(tmp_path / "split"), activation_checkpointing=True,
                                        cuda_graphs=False), environ={})
    assert Trainer(s, notice=notices.append).run().step == 8
    assert any("activation_checkpointing: False -> True" in n and "cuda_graphs: None -> False" in n for n in notices)


def test_bf16_residual_stream_by_default_under_bf16(tiny_overrides, tmp_path):
    """Under bf16 autocast the stream between blocks is bf16 by default and the run learns;
    --fp32-residual keeps it fp32; in float32 the setting changes nothing."""
    base = dict(tiny_overrides, max_iters=8, lr_decay_iters=8, log_interval=1, dtype="bfloat16")
    rec = Recorder()
    trainer = Trainer(resolve_settings(overrides=base, environ={}), MultiSink([rec]))
    assert trainer.model.residual_dtype == torch.bfloat16
    assert trainer.run().step == 8
    losses = rec.losses()
    assert losses[8] < losses[1] - 0.1, losses
    for more in (dict(fp32_residual=True), dict(dtype="float32")):
        s = resolve_settings(overrides=dict(base, checkpoint_dir=str(tmp_path / str(len(more))), **more), environ={})
        assert Trainer(s).model.residual_dtype is None, more


def test_resuming_a_run_from_before_the_bf16_residual_default_lists_the_change(tiny_overrides, tmp_path):
    """A checkpoint written before runtime.fp32_residual existed trained with an fp32 stream:
    resuming it says that the stream is now bf16 (and --fp32-residual is accepted on resume)."""
    from lmkit.training.checkpoint import save_checkpoint

    run(tiny_overrides, max_iters=4)
    path = Path(tiny_overrides["checkpoint_dir"]) / "latest.pt"
    state = load_checkpoint(path)
    del state["settings"]["runtime"]["fp32_residual"]
    save_checkpoint(state, path)
    notices = []
    Trainer(resolve_settings(overrides=dict(tiny_overrides, max_iters=6), environ={}), notice=notices.append).run()
    assert any("fp32_residual: True -> False" in n for n in notices), notices
    notices.clear()
    Trainer(resolve_settings(overrides=dict(tiny_overrides, max_iters=8, fp32_residual=True), environ={}),
            notice=notices.append).run()
    assert any("fp32_residual: False -> True" in n for n in notices), notices


def test_resume_never_and_explicit_path(tiny_overrides, tmp_path):
    run(tiny_overrides, max_iters=10)
    ckpt = Path(tiny_overrides["checkpoint_dir"]) / "ckpt_0000010.pt"
    _, res = run(tiny_overrides, resume=str(ckpt), checkpoint_dir=str(tmp_path / "other"), max_iters=12)
    assert res.step == 12
    with pytest.raises(CheckpointError, match="not found"):
        run(tiny_overrides, resume=str(tmp_path / "nope.pt"))


def test_data_shorter_than_a_window_is_an_error(tiny_overrides, tmp_path):
    from tests.conftest import write_token_data

    short = write_token_data(tmp_path / "s" / "short.bin", num_tokens=10)
    with pytest.raises(DataError, match="shorter than one window"):
        run(tiny_overrides, train_data_path=str(short))


def test_ids_beyond_vocab_are_an_error(tiny_overrides):
    with pytest.raises(DataError, match="vocab_size"):
        run(tiny_overrides, vocab_size=32)


def test_nan_stops_without_touching_last_checkpoint(tiny_overrides):
    run(tiny_overrides, max_iters=10)
    latest = Path(tiny_overrides["checkpoint_dir"]) / "latest.pt"
    before = latest.read_bytes()
    with pytest.raises(Exception, match="non-finite"):
        run(tiny_overrides, max_iters=30, learning_rate=1e30, min_lr=0.0, grad_clip=0.0)
    assert latest.read_bytes() == before
    report = json.loads((latest.parent / "nan_report.json").read_text())
    assert report["step"] > 10


def test_nan_skip_counts_and_continues(tiny_overrides, monkeypatch):
    import lmkit.training.loss as loss_mod

    real = loss_mod.lm_loss
    calls = {"n": 0}

    def flaky(model, x, y, *args, **kw):
        calls["n"] += 1
        loss = real(model, x, y, *args, **kw)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(loss_mod, "lm_loss", flaky)
    rec, res = run(tiny_overrides, on_nan="skip", max_iters=10)
    skipped = [m["skipped_steps"] for _, m in rec.logs if "skipped_steps" in m]
    assert res.step == 10 and skipped[-1] == 1
    assert torch.isfinite(torch.tensor(rec.losses()[10]))


def test_text_file_of_ids_is_converted_once(tiny_overrides, tmp_path):
    import numpy as np

    ids = (np.arange(3000) * 7 % 61).tolist()
    txt = tmp_path / "ids" / "train.txt"
    txt.parent.mkdir()
    txt.write_text(" ".join(map(str, ids)))  # the training guide's space-separated format
    notices = []
    s = resolve_settings(overrides=dict(tiny_overrides, train_data_path=str(txt), max_iters=2), environ={})
    Trainer(s, notice=notices.append).run()
    assert any("converting once" in n for n in notices)
    assert (tmp_path / "ids" / "train.bin").is_file()
    notices.clear()
    Trainer(resolve_settings(overrides=dict(tiny_overrides, train_data_path=str(txt), max_iters=2, checkpoint_dir=str(tmp_path / "r2")), environ={}), notice=notices.append)
    assert not any("converting" in n for n in notices)


def test_cuda_graphs_asked_for_where_impossible_says_so_and_trains(tiny_overrides, capsys):
    rec, res = run(tiny_overrides, cuda_graphs=True, max_iters=2, lr_decay_iters=2)
    assert res.status == "finished"
    assert "cuda_graphs needs compile on one CUDA device" in capsys.readouterr().err + " ".join(rec.events)


def run_logged(overrides: dict, **more):
    """``run`` with metrics.jsonl written, as the CLI does."""
    from lmkit.observe.jsonl import JsonlSink

    s = resolve_settings(overrides={**overrides, **more}, environ={})
    return train(s, MultiSink([Recorder(), JsonlSink(s.checkpoint.checkpoint_dir)]))


def test_fresh_run_over_an_older_longer_run_keeps_its_own_checkpoint(tiny_overrides):
    """Issue 20: --resume never --keep-last 1 into a directory holding a longer run deleted the
    checkpoint it had just written and kept the old run's. Now the old run moves aside whole."""
    run_dir = Path(tiny_overrides["checkpoint_dir"])
    run_logged(tiny_overrides, max_iters=30, lr_decay_iters=30)
    old_id = json.loads((run_dir / "run.json").read_text())["run"]
    result = run_logged(tiny_overrides, resume="never", keep_last=1, max_iters=10, lr_decay_iters=10)
    assert result.last_checkpoint == run_dir / "ckpt_0000010.pt" and result.last_checkpoint.is_file()
    assert sorted(p.name for p in run_dir.glob("ckpt_*.pt")) == ["ckpt_0000010.pt"]
    new_id = json.loads((run_dir / "run.json").read_text())["run"]
    assert new_id != old_id and load_checkpoint(run_dir / "latest.pt")["run_id"] == new_id
    aside = run_dir / "previous" / old_id
    assert load_checkpoint(aside / "ckpt_0000030.pt")["run_id"] == old_id  # the old run, whole
    assert {p.name for p in aside.iterdir()} >= {"latest.pt", "ckpt_0000010.pt", "metrics.jsonl", "settings.yaml", "run.json"}
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {x["run"] for x in lines} == {new_id} and max(x["step"] for x in lines) == 10


def test_resume_from_an_older_checkpoint_reads_as_one_history(tiny_overrides):
    """Resuming from step 10 of a run that reached 20: the new segment's checkpoint survives
    --keep-last (write order, not step order), and the readers drop the old segment beyond 10."""
    from lmkit.observe.jsonl import read_events, read_metrics

    run_dir = Path(tiny_overrides["checkpoint_dir"])
    run_logged(tiny_overrides)  # steps 1..20, checkpoints at 10 and 20
    result = run_logged(tiny_overrides, resume=str(run_dir / "ckpt_0000010.pt"), max_iters=15, checkpoint_interval=5, keep_last=1)
    assert result.last_checkpoint == run_dir / "ckpt_0000015.pt" and result.last_checkpoint.is_file()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["segment"] == 1 and record["checkpoints"] == ["ckpt_0000015.pt"]
    state = load_checkpoint(run_dir / "latest.pt")
    assert (state["iter"], state["run_id"], state["segment"]) == (15, record["run"], 1)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(x["run"] == record["run"] for x in lines) and {x["segment"] for x in lines} == {0, 1}
    path = run_dir / "metrics.jsonl"
    assert [r["step"] for r in read_metrics(path)] == [5, 10, 15]  # step 20 was the abandoned segment's
    assert not any(e["step"] > 15 and e["segment"] == 0 for e in read_events(path))


def test_trainer_refuses_a_held_run_dir_before_building(tiny_overrides, tmp_path):
    from lmkit.locking import LockHeldError, lock_run_dir

    run_dir = Path(tiny_overrides["checkpoint_dir"])
    with lock_run_dir(run_dir):
        # The data does not exist: being refused (not a DataError) shows the lock comes first.
        s = resolve_settings(overrides=dict(tiny_overrides, train_data_path=str(tmp_path / "none.bin")), environ={})
        with pytest.raises(LockHeldError, match="in use by another lmkit process"):
            Trainer(s)
    trainer = Trainer(resolve_settings(overrides=tiny_overrides, environ={}))
    trainer.release_run_dir()  # built but never run: the directory can be let go of
    assert Trainer(resolve_settings(overrides=dict(tiny_overrides, max_iters=2), environ={})).run().step == 2


def test_evaluations_log_their_duration(tiny_overrides):
    rec = Recorder()
    train(resolve_settings(overrides=dict(tiny_overrides, max_iters=10, eval_interval=5)), sinks=MultiSink([rec]))
    evals = [(s, m) for s, m in rec.logs if "val_loss" in m]
    assert [s for s, _ in evals] == [5, 10]
    assert all(0 < m["eval_s"] < 60 for _, m in evals)
    assert not any(e.startswith("first step") for e in rec.events)  # eager CPU: nothing compiled to report


@pytest.mark.slow  # Inductor compiles the tiny model for the CPU: ~6 s with a warm compile cache, ~40 s cold
def test_a_compiled_run_says_how_long_its_first_step_took(tiny_overrides):
    rec = Recorder()
    train(resolve_settings(overrides=dict(tiny_overrides, max_iters=2, eval_interval=2, compile=True)), sinks=MultiSink([rec]))
    said = [e for e in rec.events if e.startswith("first step")]
    assert len(said) == 1 and "torch.compile" in said[0] and "CUDA graphs" not in said[0]
    first_s, setup_s = (float(x) for x in re.findall(r"(\d+\.\d) s", said[0]))
    assert first_s > 0 and setup_s >= 0
