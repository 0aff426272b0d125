"""``train.eval_tasks``: harness tasks scored during training land in metrics.jsonl and the console."""

from __future__ import annotations

import json

import pytest
from trained_model import make_tiny_run

from lmkit.errors import ConfigError
from tests.harness.task_fixtures import write_tasks

pytest.importorskip("lm_eval", reason="needs the eval extra (uv sync --extra eval)")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("in_loop"), max_iters=4)


def _settings(run, out, **extra):
    from lmkit.api import resolve_settings

    return resolve_settings(overrides=dict(
        vocab_size=320, context_length=32, d_model=32, num_layers=2, num_heads=4, d_ff=64, batch_size=8, max_iters=6,
        eval_interval=3, eval_iters=1, log_interval=3, checkpoint_interval=6, train_data_path=str(run.root / "train.bin"),
        val_data_path=str(run.root / "val.bin"), checkpoint_dir=str(out), wandb=False, device="cpu", compile=False, **extra,
    ), environ={})


def test_task_scores_are_logged_at_their_interval(run, tmp_path, capsys) -> None:
    from lmkit.api import train

    tasks = write_tasks(tmp_path / "tasks")
    settings = _settings(run, tmp_path / "run", eval_tasks="tiny_mc,tiny_text", eval_tasks_include_path=str(tasks),
                         eval_tasks_limit="3", eval_tasks_interval="2")
    train(settings, console_sinks=True, is_tty=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    scored = [r for r in rows if "tasks/tiny_mc/acc" in r]
    assert [r["step"] for r in scored] == [2, 4, 6]
    for r in scored:
        assert 0 <= r["tasks/tiny_mc/acc"] <= 1 and r["tasks/tiny_text/bits_per_byte"] > 0 and r["tasks_s"] >= 0
    # Training moved the weights, so the scores differ between the first and last evaluation.
    assert scored[0]["tasks/tiny_text/bits_per_byte"] != scored[-1]["tasks/tiny_text/bits_per_byte"]
    assert "step 6/6 | tasks tiny_mc acc" in capsys.readouterr().err  # the plain log lines go to stderr


def test_matches_lmkit_eval_tasks_on_the_saved_checkpoint(run, tmp_path) -> None:
    from lmkit.api import evaluate_tasks, train

    tasks = write_tasks(tmp_path / "tasks")
    settings = _settings(run, tmp_path / "run", eval_tasks="tiny_text", eval_tasks_include_path=str(tasks), eval_tasks_limit="none")
    train(settings)
    last = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    in_loop = [r for r in last if "tasks/tiny_text/bits_per_byte" in r][-1]
    after = evaluate_tasks(tmp_path / "run", ["tiny_text"], include_path=[tasks], device="cpu")
    (bpb,) = [s.value for s in after.scores if s.metric == "bits_per_byte"]
    assert in_loop["tasks/tiny_text/bits_per_byte"] == pytest.approx(bpb, rel=1e-5)


def test_an_unknown_task_stops_the_run_before_training(run, tmp_path) -> None:
    from lmkit.api import train

    with pytest.raises(ConfigError, match="unknown task 'tiny_nope'"):
        train(_settings(run, tmp_path / "run", eval_tasks="tiny_nope", eval_tasks_include_path=str(write_tasks(tmp_path / "t"))))
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or "tasks/" not in (tmp_path / "run" / "metrics.jsonl").read_text()


def test_settings_spellings() -> None:
    from lmkit.api import resolve_settings

    s = resolve_settings(overrides={"eval_tasks": "arc_easy, hellaswag", "eval_tasks_include_path": "a,b"}, environ={})
    assert s.train.eval_tasks == ["arc_easy", "hellaswag"] and [str(p) for p in s.train.eval_tasks_include_path] == ["a", "b"]
    assert resolve_settings(environ={}).train.eval_tasks == []
    with pytest.raises(ConfigError, match="--eval-tasks-limit"):
        resolve_settings(overrides={"eval_tasks_limit": "0"}, environ={})
