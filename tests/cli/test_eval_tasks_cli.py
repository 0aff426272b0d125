"""``lmkit eval --tasks`` end to end on local YAML tasks, offline: the table, --json, --output, bad input."""

from __future__ import annotations

import json
import sys

import pytest
from trained_model import make_tiny_run
from typer.testing import CliRunner

from lmkit.cli.app import app
from tests.harness.task_fixtures import write_task, write_tasks

pytest.importorskip("lm_eval", reason="needs the eval extra (uv sync --extra eval)")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("eval_tasks_cli"))


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("tasks"))


def _eval(*args: str):
    return CliRunner().invoke(app, ["eval", *args])


def test_table_and_full_results_json(run, tasks, tmp_path) -> None:
    out = tmp_path / "res" / "results.json"
    result = _eval("-k", str(run.checkpoint), "--tasks", "tiny_mc,tiny_text", "--include-path", str(tasks),
                   "--device", "cpu", "--batch-size", "4", "--output", str(out))
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if "tiny_" in line]
    assert any("tiny_mc" in r and "acc" in r and "±" in r for r in rows)
    assert any("tiny_text" in r and "bits_per_byte" in r for r in rows)
    full = json.loads(out.read_text())
    assert set(full["results"]) == {"tiny_mc", "tiny_text"}
    assert 0 <= full["results"]["tiny_mc"]["acc,none"] <= 1
    assert full["config"]["model"] == "lmkit" and full["n-samples"]["tiny_mc"]["effective"] == 6
    assert f"results written to {out}" in result.stderr


def test_json_limit_and_fewshot(run, tasks) -> None:
    result = _eval("-k", str(run.checkpoint.parent), "--tasks", "tiny_mc, tiny_text", "--include-path", str(tasks),
                   "--limit", "2", "--num-fewshot", "1", "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got["examples"] == 4 and got["tasks"] == ["tiny_mc", "tiny_text"]
    metrics = {(s["task"], s["metric"]) for s in got["scores"]}
    assert ("tiny_mc", "acc") in metrics and ("tiny_text", "word_perplexity") in metrics


def test_same_scores_as_the_api(run, tasks) -> None:
    from lmkit.api import evaluate_tasks

    result = _eval("-k", str(run.checkpoint), "--tasks", "tiny_mc", "--include-path", str(tasks), "--json", "--device", "cpu")
    api = evaluate_tasks(run.checkpoint, ["tiny_mc"], include_path=[tasks], device="cpu")
    assert json.loads(result.stdout)["scores"] == [s.__dict__ for s in api.scores]


def test_yaml_file_as_a_task(run, tasks) -> None:
    result = _eval("-k", str(run.checkpoint), "--tasks", str(tasks / "mc.yaml"), "--json", "--device", "cpu", "--limit", "1")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["examples"] == 1


@pytest.mark.parametrize("limit", ["0", "-3"])
def test_limit_below_one(run, tasks, limit) -> None:
    result = _eval("-k", str(run.checkpoint), "--tasks", "tiny_mc", "--include-path", str(tasks), "--limit", limit)
    assert result.exit_code == 2
    assert f"--limit must be >= 1 (documents per task), got {limit}" in result.stderr and "Traceback" not in result.output


def test_unknown_task_lists_close_matches(run, tasks) -> None:
    result = _eval("-k", str(run.checkpoint), "--tasks", "tiny_mcc", "--include-path", str(tasks))
    assert result.exit_code == 2
    assert "unknown task 'tiny_mcc'; did you mean tiny_mc" in result.stderr


def test_checkpoint_without_tokenizer(run, tasks, tmp_path) -> None:
    from lmkit.training.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(run.checkpoint)
    state["tokenizer"] = {**state["tokenizer"], "dir": None}
    state["settings"]["data"]["tokenizer_dir"] = None
    bare = save_checkpoint(state, tmp_path / "bare.pt")
    result = _eval("-k", str(bare), "--tasks", "tiny_mc", "--include-path", str(tasks), "--device", "cpu")
    assert result.exit_code == 2
    assert "records no tokenizer" in result.stderr and "--tokenizer DIR" in result.stderr
    ok = _eval("-k", str(bare), "--tasks", "tiny_mc", "--include-path", str(tasks), "--device", "cpu",
               "--tokenizer", str(run.tokenizer_dir), "--json")
    assert ok.exit_code == 0, ok.output


def test_dataset_not_available_offline(run, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # an empty cache
    write_task(tmp_path, "hub_task", "task: hub_task\ndataset_path: lmkit-tests/not-cached\noutput_type: multiple_choice\n"
               "test_split: test\ndoc_to_text: q\ndoc_to_choice: ['a', 'b']\ndoc_to_target: 0\n")
    result = _eval("-k", str(run.checkpoint), "--tasks", "hub_task", "--include-path", str(tmp_path), "--device", "cpu")
    assert result.exit_code == 2, result.output
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("lmkit: error:")]
    assert "task hub_task: dataset lmkit-tests/not-cached is not available offline" in line
    assert "--include-path" in line and "HF_DATASETS_OFFLINE=0" in line and "Traceback" not in result.output


def test_missing_local_data_file(run, tmp_path) -> None:
    write_task(tmp_path, "gone", f"task: gone\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tmp_path / 'gone.jsonl'}\n"
               "output_type: multiple_choice\ntest_split: test\ndoc_to_text: q\ndoc_to_choice: ['a', 'b']\ndoc_to_target: 0\n")
    result = _eval("-k", str(run.checkpoint), "--tasks", "gone", "--include-path", str(tmp_path), "--device", "cpu")
    assert result.exit_code == 2, result.output
    assert f"task gone: its data file {tmp_path / 'gone.jsonl'} does not exist" in result.stderr


def test_without_lm_eval_says_how_to_install(run, tasks, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed
    result = _eval("-k", str(run.checkpoint), "--tasks", "tiny_mc", "--include-path", str(tasks))
    assert result.exit_code == 2
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("lmkit: error:")]
    assert "uv sync --extra eval" in line and "pip install -e '.[eval]'" in line


@pytest.mark.parametrize("args, message", [
    ([], "give --data FILE (loss over a token file) or --tasks a,b (harness task scores), not neither"),
    (["--data", "x.bin", "--tasks", "a"], "not both"),
    (["--data", "x.bin", "--limit", "3"], "--limit: only with --tasks"),
    (["--tasks", "a", "--max-tokens", "64"], "--max-tokens: only with --data"),
])
def test_data_and_tasks_modes(run, args, message) -> None:
    result = _eval("-k", str(run.checkpoint), *args)
    assert result.exit_code == 2 and message in result.stderr


def test_help_shows_the_task_options() -> None:
    result = CliRunner().invoke(app, ["eval", "--help"])
    assert result.exit_code == 0
    for text in ("--tasks", "--limit", "--num-fewshot", "--include-path", "--output", "lmkit eval -k runs/demo --tasks"):
        assert text in result.stdout
