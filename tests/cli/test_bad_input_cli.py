"""Bad input to generate / eval / ckpt: one line on stderr, exit code 2, nothing on stdout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from trained_model import make_other_tokenizer, make_tiny_run
from typer.testing import CliRunner

from lmkit.cli.app import app
from lmkit.data.tokens import TokenFileMeta, write_tokens
from lmkit.training.checkpoint import load_checkpoint


class Payload:
    """A pickled object: loading it would run code, so it must be refused."""


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_input")
    run = make_tiny_run(root / "run")
    ckpt = run.checkpoint
    out = {"ckpt": ckpt, "val": run.val_bin, "other_tok": make_other_tokenizer(root / "other")}
    (root / "text.pt").write_text("hello, I am not a checkpoint\n")
    torch.save({"weights": torch.zeros(2)}, root / "foreign.pt")
    (root / "truncated.pt").write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    newer = load_checkpoint(ckpt)
    newer["version"] = 99
    torch.save(newer, root / "newer.pt")
    torch.save({"format": "lmkit-checkpoint", "x": Payload()}, root / "pickled.pt")
    for name, ids in (("oov", np.arange(300) % 300 + 100), ("short", np.arange(10))):
        write_tokens(root / f"{name}.bin", ids.astype(np.uint16), TokenFileMeta(dtype="uint16", num_tokens=0))
    (root / "full").mkdir()
    (root / "full" / "keep.txt").write_text("x")
    for name in ("text.pt", "foreign.pt", "truncated.pt", "newer.pt", "pickled.pt", "oov.bin", "short.bin", "full"):
        out[name] = root / name
    return out


GEN = ["generate", "--checkpoint", "{ckpt}", "--device", "cpu", "--max-new-tokens", "3"]
CASES = [
    ("missing checkpoint", ["generate", "-k", "{ckpt}.nope", "-p", "hi"], "checkpoint not found"),
    ("missing checkpoint (inspect)", ["ckpt", "inspect", "/no/such/file.pt"], "checkpoint not found"),
    ("text file", ["ckpt", "inspect", "{text.pt}"], "damaged or truncated"),
    ("foreign torch file", ["eval", "-k", "{foreign.pt}", "--data", "{val}"], "not an lmkit checkpoint"),
    ("truncated checkpoint", ["generate", "-k", "{truncated.pt}", "-p", "hi"], "damaged or truncated"),
    ("newer format", ["ckpt", "export", "{newer.pt}", "-o", "{full}/x"], "newer lmkit"),
    ("pickled code", ["inspect-checkpoint", "{pickled.pt}"], "refused"),
    ("empty prompt", [*GEN, "--prompt", ""], "prompt is empty"),
    ("no prompt", GEN, "no prompt"),
    ("prompt longer than context", [*GEN, "--prompt", "The cat sat on the mat. " * 10], "longer than the model's context_length"),
    ("top-p above 1", [*GEN, "-p", "The", "--top-p", "1.5"], "top_p"),
    ("top-p zero", [*GEN, "-p", "The", "--top-p", "0"], "top_p"),
    ("negative temperature", [*GEN, "-p", "The", "--temperature", "-1"], "temperature"),
    ("ids outside vocabulary", ["eval", "-k", "{ckpt}", "--data", "{oov.bin}"], "vocabulary has 320 ids"),
    ("data shorter than a window", ["eval", "-k", "{ckpt}", "--data", "{short.bin}"], "shorter than one window"),
    ("missing data", ["eval", "-k", "{ckpt}", "--data", "{ckpt}.bin"], "metadata file missing"),
    ("export into non-empty dir", ["ckpt", "export", "{ckpt}", "-o", "{full}"], "--force"),
    ("tokenizer hash mismatch", [*GEN, "-p", "The", "--tokenizer", "{other_tok}"], "does not match"),
    ("cuda without cuda", [*GEN, "-p", "The", "--device", "cuda"], "no CUDA device"),
]


@pytest.mark.parametrize(("args", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_one_line_error_exit_2(files, args, message) -> None:
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("CUDA is available")
    argv = []
    for a in args:
        for key, path in files.items():
            a = a.replace("{" + key + "}", str(path))
        argv.append(a)
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.startswith("lmkit: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
