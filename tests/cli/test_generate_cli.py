"""``lmkit generate`` end to end: streaming output, samples, stop strings, interactive mode."""

from __future__ import annotations

import subprocess
import sys

import pytest
from trained_model import make_tiny_run
from typer.testing import CliRunner

from lmkit.cli.app import app
from lmkit.inference import generate_text, load_trained

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


def test_context_limit_is_announced(run) -> None:
    result = invoke("generate", "-k", str(run.checkpoint), "-p", "The cat sat on the mat.", "--max-new-tokens", "500", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "leaves room for at most" in result.stderr


def test_interactive_reads_prompts_until_eof(run, trained) -> None:
    result = invoke("generate", "-k", str(run.checkpoint), "--interactive", "--no-echo", *GREEDY, input="The cat\n\nA bird\n")
    assert result.exit_code == 0, result.output
    kw = dict(max_new_tokens=12, temperature=0.0)
    assert result.stdout == generate_text(trained, "The cat", **kw) + "\n" + generate_text(trained, "A bird", **kw) + "\n"


def test_interactive_survives_a_bad_prompt(run, trained) -> None:
    result = invoke("generate", "-k", str(run.checkpoint), "-i", "--no-echo", *GREEDY, input="The cat sat on the mat. " * 10 + "\nA\n")
    assert result.exit_code == 0, result.output
    assert "longer than the model's context_length" in result.stderr
    assert result.stdout == generate_text(trained, "A", max_new_tokens=12, temperature=0.0) + "\n"


def test_real_subprocess(run, trained) -> None:
    proc = subprocess.run([sys.executable, "-m", "lmkit", "generate", "--checkpoint", str(run.checkpoint), "--prompt", "The dog", *GREEDY],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "The dog" + generate_text(trained, "The dog", max_new_tokens=12, temperature=0.0) + "\n"


def test_help_has_examples() -> None:
    result = invoke("generate", "--help")
    assert result.exit_code == 0 and "Example" in result.stdout and "--top-p" in result.stdout


def test_prompt_with_invalid_utf8_is_a_one_line_error(run):
    # Undecodable argv bytes reach Python as lone surrogates.
    r = subprocess.run([sys.executable, "-m", "lmkit", "generate", "--checkpoint", str(run.checkpoint), "--prompt", "x\udce2\udc80"],
                       capture_output=True, text=True, errors="surrogateescape")
    assert r.returncode == 2 and "not valid UTF-8" in r.stderr and "Traceback" not in r.stderr
