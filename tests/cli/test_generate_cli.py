"""``lmkit generate`` end to end: streaming output, samples, stop strings, interactive mode."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from trained_model import make_tiny_run
from typer.testing import CliRunner

from lmkit.cli.app import app
from lmkit.app.inference import generate_text, load_trained

GREEDY = ["--temperature", "0", "--max-new-tokens", "12", "--device", "cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("generate_cli"))


@pytest.fixture(scope="module")
def trained(run):
    return load_trained(run.checkpoint, device="cpu")


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(app, list(args), input=input)


def test_greedy_output_is_the_api_continuation(run, trained) -> None:
    result = invoke("generate", "--checkpoint", str(run.checkpoint), "--prompt", "The cat", *GREEDY)
    assert result.exit_code == 0, result.output
    expected = generate_text(trained, "The cat", max_new_tokens=12, temperature=0.0)
    assert result.stdout == "The cat" + expected + "\n"  # prompt echoed, then the continuation
    assert "tokens/s" in result.stderr and "loaded" in result.stderr


def test_samples_use_consecutive_seeds(run, trained) -> None:
    result = invoke("generate", "-k", str(run.checkpoint.parent), "-p", "A", "--no-echo", "--num-samples", "2",
                    "--seed", "5", "--temperature", "1.0", "--top-k", "40", "--max-new-tokens", "8", "--device", "cpu")
    assert result.exit_code == 0, result.output
    kw = dict(max_new_tokens=8, temperature=1.0, top_k=40)
    assert result.stdout == (
        "--- sample 1/2 (seed 5) ---\n" + generate_text(trained, "A", seed=5, **kw) + "\n"
        "--- sample 2/2 (seed 6) ---\n" + generate_text(trained, "A", seed=6, **kw) + "\n"
    )


def test_stop_text_is_not_printed(run, trained) -> None:
    full = generate_text(trained, "The", max_new_tokens=12, temperature=0.0)
    stop = full.strip()[:2]
    result = invoke("generate", "-k", str(run.checkpoint), "-p", "The", "--stop", stop, "--no-echo", *GREEDY)
    assert result.exit_code == 0, result.output
    assert result.stdout == full[: full.find(stop)] + "\n"


def test_window_stop_announces_the_context_limit(run) -> None:
    result = invoke("generate", "-k", str(run.checkpoint), "-p", "The cat sat on the mat.", "--max-new-tokens", "500",
                    "--window", "stop", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "leaves room for at most" in result.stderr


def test_generation_slides_past_the_context(run, trained) -> None:
    """The default window slides: 90 tokens from a model with a context of 32, streamed as one text."""
    args = ["-k", str(run.checkpoint), "-p", "The cat", "--no-echo", "--temperature", "0", "--device", "cpu"]
    result = invoke("generate", *args, "--max-new-tokens", "90")
    assert result.exit_code == 0, result.output
    assert "leaves room" not in result.stderr
    count = int(re.search(r"(\d+) tokens in", result.stderr).group(1))
    assert count > trained.config.context_length + 1  # where --window stop ends
    assert result.stdout == generate_text(trained, "The cat", max_new_tokens=90, temperature=0.0) + "\n"
    stopped = invoke("generate", *args, "--max-new-tokens", "90", "--window", "stop")
    assert len(stopped.stdout) < len(result.stdout) and result.stdout.startswith(stopped.stdout[:-1])


def test_long_prompt_keeps_its_last_part(run, trained) -> None:
    long = "The cat sat on the mat. " * 10
    result = invoke("generate", "-k", str(run.checkpoint), "-p", long, "--no-echo", *GREEDY)
    assert result.exit_code == 0, result.output
    assert "the model reads only its last 32" in result.stderr
    ids = trained.tokenizer.encode(long)[-32:]
    assert result.stdout == generate_text(trained, trained.tokenizer.decode(ids), max_new_tokens=12, temperature=0.0) + "\n"


def test_temperature_below_the_floor_is_greedy(run) -> None:
    base = ["generate", "-k", str(run.checkpoint), "-p", "A bird", "--max-new-tokens", "12", "--device", "cpu"]
    cold = invoke(*base, "--temperature", "1e-300", "--seed", "3")
    assert cold.exit_code == 0, cold.output
    assert "\x00" not in cold.stdout
    assert cold.stdout == invoke(*base, "--temperature", "0").stdout


def test_largest_seed_and_the_next_sample(run, trained) -> None:
    top = 2**63 - 1
    result = invoke("generate", "-k", str(run.checkpoint), "-p", "A", "--no-echo", "--num-samples", "2", "--seed", str(top),
                    "--temperature", "1.0", "--max-new-tokens", "6", "--device", "cpu")
    assert result.exit_code == 0, result.output
    kw = dict(max_new_tokens=6, temperature=1.0)
    assert result.stdout == (
        f"--- sample 1/2 (seed {top}) ---\n" + generate_text(trained, "A", seed=top, **kw) + "\n"
        "--- sample 2/2 (seed 0) ---\n" + generate_text(trained, "A", seed=0, **kw) + "\n"
    )


def test_nan_weights_are_a_one_line_error(run, tmp_path) -> None:
    state = torch.load(run.checkpoint, weights_only=True)
    state["model"]["norm.weight"].fill_(float("nan"))  # as a diverged run would have saved it
    torch.save(state, tmp_path / "nan.pt")
    args = ["generate", "-k", str(tmp_path / "nan.pt"), "-p", "The", "--device", "cpu"]
    r = subprocess.run([sys.executable, "-m", "lmkit", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""  # nothing printed, in particular no NUL bytes
    assert "not finite" in r.stderr and "Traceback" not in r.stderr
    greedy = invoke(*args, "--temperature", "0", "--num-samples", "2", "--max-new-tokens", "5")
    assert greedy.exit_code == 2 and greedy.stdout == "" and "not finite" in greedy.stderr


def test_interactive_reads_prompts_until_eof(run, trained) -> None:
    result = invoke("generate", "-k", str(run.checkpoint), "--interactive", "--no-echo", *GREEDY, input="The cat\n\nA bird\n")
    assert result.exit_code == 0, result.output
    kw = dict(max_new_tokens=12, temperature=0.0)
    assert result.stdout == generate_text(trained, "The cat", **kw) + "\n" + generate_text(trained, "A bird", **kw) + "\n"


def test_interactive_survives_a_bad_prompt(run, trained) -> None:
    # Too long only with --window stop; the default window keeps its last part (test above).
    result = invoke("generate", "-k", str(run.checkpoint), "-i", "--no-echo", "--window", "stop", *GREEDY,
                    input="The cat sat on the mat. " * 10 + "\nA\n")
    assert result.exit_code == 0, result.output
    assert "longer than the model's context_length" in result.stderr
    assert result.stdout == generate_text(trained, "A", max_new_tokens=12, temperature=0.0) + "\n"


def test_interactive_skips_a_line_that_is_not_utf8(run, trained) -> None:
    result = invoke("generate", "-k", str(run.checkpoint), "-i", "--no-echo", *GREEDY, input=b"The \xff\xfe cat\r\nA\n")
    assert result.exit_code == 0, result.output
    assert "input line 1 is not valid UTF-8" in result.stderr
    assert result.stdout == generate_text(trained, "A", max_new_tokens=12, temperature=0.0) + "\n"


@pytest.mark.parametrize("prompt", [[], ["--prompt", "The"]])
def test_interactive_with_stdin_closed_ends_cleanly(run, trained, prompt) -> None:
    proc = subprocess.run([sys.executable, "-m", "lmkit", "generate", "-k", str(run.checkpoint), "-i", "--no-echo", *prompt, *GREEDY],
                          capture_output=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120,
                          preexec_fn=lambda: os.close(0))  # started with no stdin at all, as `<&-`
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "stdin is closed" in proc.stderr
    assert proc.stdout == ("" if not prompt else generate_text(trained, "The", max_new_tokens=12, temperature=0.0) + "\n")


def test_closed_stdout_is_a_one_line_error(run) -> None:
    proc = subprocess.run([sys.executable, "-m", "lmkit", "generate", "-k", str(run.checkpoint), "-p", "The", *GREEDY],
                          stderr=subprocess.PIPE, text=True, timeout=120, preexec_fn=lambda: os.close(1))
    assert proc.returncode == 2 and "stdout is closed" in proc.stderr and "Traceback" not in proc.stderr


def test_real_subprocess(run, trained) -> None:
    proc = subprocess.run([sys.executable, "-m", "lmkit", "generate", "--checkpoint", str(run.checkpoint), "--prompt", "The dog", *GREEDY],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "The dog" + generate_text(trained, "The dog", max_new_tokens=12, temperature=0.0) + "\n"


def test_help_has_examples() -> None:
    result = invoke("generate", "--help")
    assert result.exit_code == 0 and "Example" in result.stdout and "--top-p" in result.stdout
    # Training-only runtime settings are not offered where they do nothing.
    for flag in ("--compile-scope", "--cuda-graphs", "--fp32-residual"):
        assert flag not in result.stdout, flag


def test_prompt_with_invalid_utf8_is_a_one_line_error(run):
    # Undecodable argv bytes reach Python as lone surrogates.
    r = subprocess.run([sys.executable, "-m", "lmkit", "generate", "--checkpoint", str(run.checkpoint), "--prompt", "x\udce2\udc80"],
                       capture_output=True, text=True, errors="surrogateescape")
    assert r.returncode == 2 and "not valid UTF-8" in r.stderr and "Traceback" not in r.stderr
