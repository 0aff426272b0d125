"""``LmkitLM`` through lm-evaluation-harness itself: registration, parity with the harness's HF
model on lmkit's HF export, and rolling log-likelihood against ``lmkit eval``'s loss."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from trained_model import EOT, make_tiny_run

pytest.importorskip("lm_eval", reason="needs the eval extra (uv sync --extra eval)")

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from lmkit.harness import evaluate_tasks, register  # noqa: E402
from lmkit.harness.tasks import offline_hub  # noqa: E402
from tests.harness.task_fixtures import write_jsonl, write_task, write_tasks  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("harness_model"), max_iters=60)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def hf_dir(run, tmp_path_factory):
    pytest.importorskip("accelerate", reason="the harness's hf model needs accelerate")
    from lmkit.export import export_checkpoint

    out = tmp_path_factory.mktemp("hf") / "model"
    export_checkpoint(run.checkpoint, out, "hf")
    return out


def _evaluate(model: str, model_args: str, tasks_dir) -> dict:
    with offline_hub():
        return simple_evaluate(model=model, model_args=model_args, tasks=["tiny_mc", "tiny_text"], batch_size=3,
                               task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
                               log_samples=True, bootstrap_iters=0)


def _loglikelihoods(results: dict, task: str) -> list[float]:
    return [float(r[0][0] if isinstance(r[0], (list, tuple)) else r[0])
            for s in results["samples"][task] for r in s["resps"]]


def test_registered_name_matches_the_hf_export(run, tasks, hf_dir) -> None:
    register()
    ours = _evaluate("lmkit", f"checkpoint={run.checkpoint},device=cpu,dtype=float32", tasks)
    theirs = _evaluate("hf", f"pretrained={hf_dir},dtype=float32,device=cpu", tasks)
    for key in ("acc,none", "acc_norm,none"):
        assert ours["results"]["tiny_mc"][key] == theirs["results"]["tiny_mc"][key]
    for key in ("bits_per_byte,none", "byte_perplexity,none", "word_perplexity,none"):
        assert ours["results"]["tiny_text"][key] == pytest.approx(theirs["results"]["tiny_text"][key], rel=1e-5)
    for task in ("tiny_mc", "tiny_text"):
        a, b = _loglikelihoods(ours, task), _loglikelihoods(theirs, task)
        assert len(a) == len(b) > 0 and a == pytest.approx(b, abs=1e-4)
    assert ours["results"]["tiny_mc"]["acc,none"] > 0  # the trained model gets some right


def test_register_is_idempotent_and_lazy() -> None:
    from lm_eval.api.registry import get_model

    register()
    register()
    from lmkit.harness.model import LmkitLM

    assert get_model("lmkit") is LmkitLM


def test_rolling_loglikelihood_equals_lmkit_eval_loss(run, tmp_path) -> None:
    """Disjoint windows from end-of-text are exactly ``lmkit eval``'s windows over [EOT] + ids."""
    from lmkit.api import evaluate
    from lmkit.data.tokens import TokenFileMeta, dtype_for_vocab, write_tokens
    from lmkit.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(run.tokenizer_dir)
    base = "The cat sat on the mat. A bird sang in the tree; the cat looked up. The dog sat on the log.\n" * 6
    text = next(base[:n] for n in range(len(base), 0, -1) if len(tok.encode(base[:n])) % 32 == 0)  # whole windows
    ids = tok.encode(text)
    assert len(ids) >= 64
    arr = np.asarray([tok.token_id(EOT)] + ids, dtype=dtype_for_vocab(tok.vocab_size))
    meta = TokenFileMeta(dtype=str(arr.dtype), num_tokens=0, vocab_size=tok.vocab_size, tokenizer_hash=tok.hash,
                         source_bytes=len(text.encode()))
    write_tokens(tmp_path / "one.bin", arr, meta)
    want = evaluate(run.checkpoint, tmp_path / "one.bin", device="cpu")
    assert want.tokens == len(ids)
    write_jsonl(tmp_path / "one.jsonl", [{"text": text}])
    write_task(tmp_path, "one_text", f"task: one_text\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tmp_path / 'one.jsonl'}\n"
               "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
               "metric_list:\n  - metric: bits_per_byte\n")
    got = evaluate_tasks(run.checkpoint, ["one_text"], include_path=[tmp_path], device="cpu", dtype="float32")
    (bpb,) = [s.value for s in got.scores if s.metric == "bits_per_byte"]
    assert bpb == pytest.approx(want.total_nats / math.log(2) / len(text.encode()), rel=1e-5)


def test_harness_command_line_with_lmkit_registered(run, tasks, tmp_path) -> None:
    """``python -m lmkit.harness`` is lm_eval's own CLI, where ``--model lmkit`` resolves."""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "lmkit.harness", "--model", "lmkit", "--model_args", f"checkpoint={run.checkpoint},device=cpu",
         "--tasks", "tiny_mc", "--include_path", str(tasks), "--limit", "3", "--output_path", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tiny_mc" in proc.stdout and "acc" in proc.stdout
    (written,) = list((tmp_path / "out").rglob("results*.json"))
    assert json.loads(written.read_text())["results"]["tiny_mc"]["acc,none"] >= 0


def test_harness_command_line_renders_lmkit_errors(tasks, tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lmkit.harness", "--model", "lmkit", "--model_args", f"checkpoint={tmp_path / 'none.pt'}",
         "--tasks", "tiny_mc", "--include_path", str(tasks)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "lmkit: error:" in proc.stderr and "none.pt" in proc.stderr and "Traceback" not in proc.stderr


class _Req:
    def __init__(self, *args):
        self.args = args


def test_generate_until_equals_lmkit_generate(run) -> None:
    """Greedy continuations cut at the task's stop strings, as ``lmkit generate --temperature 0 --stop`` gives."""
    from lmkit.api import generate, load_trained

    lm = _cpu_lm(run)
    reqs = [_Req("The cat sat", {"until": ["."], "max_gen_toks": 12}), _Req("A bird", {"until": ["\n", "cat"], "max_gen_toks": 12}),
            _Req("The dog", {"until": ["."], "max_gen_toks": 12})]
    got = lm.generate_until(reqs)
    trained = load_trained(run.checkpoint, "cpu", "float32", compile=False)
    want = [generate(trained, r.args[0], max_new_tokens=12, temperature=0, stop=r.args[1]["until"]) for r in reqs]
    assert got == want and any(got)


def test_bad_model_args(run) -> None:
    from lmkit.errors import ConfigError
    from lmkit.harness.model import LmkitLM

    with pytest.raises(ConfigError, match="unknown argument"):
        LmkitLM(run.checkpoint, device="cpu", temprature=1)
    with pytest.raises(ConfigError, match="give the checkpoint"):
        LmkitLM(device="cpu")
    with pytest.raises(ConfigError, match="max_length=64: must be in 1..32"):
        LmkitLM(run.checkpoint, device="cpu", max_length=64)
    with pytest.raises(ConfigError, match="batch_size"):
        LmkitLM(run.checkpoint, device="cpu", batch_size="zero")
    assert LmkitLM(run.checkpoint, device="cpu", batch_size="auto").batch_size >= 1


def _cpu_lm(run):
    """``LmkitLM`` as the harness builds it, with its CLI defaults (device=cuda:0) overridden by model_args."""
    from lmkit.harness.model import LmkitLM

    return LmkitLM.create_from_arg_string(f"checkpoint={run.checkpoint},device=cpu,dtype=float32", {"device": "cuda:0", "batch_size": 2})
