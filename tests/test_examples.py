"""examples/end_to_end.sh: from a text file to samples, in a real subprocess, shrunk to seconds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "end_to_end.sh"


@pytest.fixture
def small_text(tmp_path: Path) -> Path:
    """~120 KB of English prose and code that every Python has (the demo's corpus)."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k].strip() for k in sorted(topics))[:120_000]
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_end_to_end_script_produces_samples(tmp_path: Path, small_text: Path):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "LMKIT": f"{sys.executable} -m lmkit",  # this environment, no uv round trip per step
        "PYTHON": sys.executable,
        "MAX_ITERS": "12",
        "VOCAB_SIZE": "384",
        "EVAL_ITERS": "2",
        "NEW_TOKENS": "24",
        "DEVICE": "cpu",
        "PROMPT": "The list",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(small_text), str(out)],
        env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    # Every stage left its files behind.
    for name in ("data/train.txt", "data/val.txt", "data/train.bin", "data/val.json", "tok/vocab.json",
                 "tok/merges.txt", "run/latest.pt", "run/metrics.jsonl", "samples.txt", "eval.json"):
        assert (out / name).is_file(), name
    assert (out / "run" / "ckpt_0000012.pt").is_file()

    # Two samples, each continuing the prompt, on stdout and in samples.txt.
    samples = (out / "samples.txt").read_text(encoding="utf-8")
    assert samples.count("The list") == 2 and len(samples) > 2 * len("The list") + 10
    assert samples in proc.stdout

    result = json.loads((out / "eval.json").read_text())
    assert result["tokens"] > 0 and result["loss"] > 0 and result["bits_per_byte"] > 0
    assert "val loss" in proc.stdout and "bits/byte" in proc.stdout


def test_end_to_end_script_rejects_a_missing_file(tmp_path: Path):
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "nope.txt"), str(tmp_path / "out")],
        env={**os.environ, "LMKIT": f"{sys.executable} -m lmkit", "PYTHON": sys.executable},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode != 0
    assert "nope.txt" in proc.stderr
