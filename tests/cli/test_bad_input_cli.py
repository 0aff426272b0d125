"""Bad input to every command: one line on stderr, exit code 2, nothing on stdout, and every
existing file left byte-identical."""

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
    (root / "bad.yaml").write_text("d_model: 512\n  num_heads: [8\n")
    (root / "binary.yaml").write_bytes(bytes(range(256)))
    (root / "typo.yaml").write_text("bach_size: 4\n")
    (root / "cut.bin").write_bytes(run.val_bin.read_bytes()[:-3])
    (root / "cut.json").write_bytes(run.val_bin.with_suffix(".json").read_bytes())
    (root / "empty.txt").write_text("")
    (root / "ids.txt").write_text("1 2 x 4\n")
    (root / "notutf8.txt").write_bytes(b"caf\xe9 au lait\n")
    for name in ("text.pt", "foreign.pt", "truncated.pt", "newer.pt", "pickled.pt", "oov.bin", "short.bin", "full",
                 "bad.yaml", "binary.yaml", "typo.yaml", "cut.bin", "empty.txt", "ids.txt", "notutf8.txt"):
        out[name] = root / name
    return out


GEN = ["generate", "--checkpoint", "{ckpt}", "--device", "cpu", "--max-new-tokens", "3"]
CASES = [
    ("missing checkpoint", ["generate", "-k", "{ckpt}.nope", "-p", "hi"], "checkpoint not found"),
    ("missing checkpoint (inspect)", ["ckpt", "inspect", "/no/such/file.pt"], "checkpoint not found"),
    ("text file", ["ckpt", "inspect", "{text.pt}"], "a text file, not a checkpoint"),
    ("foreign torch file", ["eval", "-k", "{foreign.pt}", "--data", "{val}"], "not an lmkit checkpoint"),
    ("truncated checkpoint", ["generate", "-k", "{truncated.pt}", "-p", "hi"], "damaged checkpoint: the archive is incomplete"),
    ("newer format", ["ckpt", "export", "{newer.pt}", "-o", "{full}/x"], "newer lmkit"),
    ("pickled code", ["inspect-checkpoint", "{pickled.pt}"], "refused"),
    ("empty prompt", [*GEN, "--prompt", ""], "prompt is empty"),
    ("no prompt", GEN, "no prompt"),
    ("prompt longer than context", [*GEN, "--window", "stop", "--prompt", "The cat sat on the mat. " * 10], "longer than the model's context_length"),
    ("unknown window", [*GEN, "-p", "The", "--window", "roll"], "window"),
    ("infinite temperature", [*GEN, "-p", "The", "--temperature", "inf"], "--temperature: must be a finite number"),
    ("NaN temperature", [*GEN, "-p", "The", "--temperature", "nan"], "--temperature: must be a finite number"),
    ("top-p above 1", [*GEN, "-p", "The", "--top-p", "1.5"], "--top-p: must be <= 1 (got 1.5)"),
    ("top-p zero", [*GEN, "-p", "The", "--top-p", "0"], "--top-p: must be > 0 (got 0)"),
    ("negative temperature", [*GEN, "-p", "The", "--temperature", "-1"], "temperature"),
    ("ids outside vocabulary", ["eval", "-k", "{ckpt}", "--data", "{oov.bin}"], "vocabulary has 320 ids"),
    ("data shorter than a window", ["eval", "-k", "{ckpt}", "--data", "{short.bin}"], "shorter than one window"),
    ("missing data", ["eval", "-k", "{ckpt}", "--data", "{ckpt}.bin"], "token file not found"),
    ("export into non-empty dir", ["ckpt", "export", "{ckpt}", "-o", "{full}"], "--force"),
    ("tokenizer hash mismatch", [*GEN, "-p", "The", "--tokenizer", "{other_tok}"], "does not match"),
    ("cuda without cuda", [*GEN, "-p", "The", "--device", "cuda"], "no CUDA device"),
    ("train: invalid YAML", ["train", "-c", "{bad.yaml}"], "invalid YAML"),
    ("train: binary config", ["train", "-c", "{binary.yaml}"], "binary.yaml"),
    ("train: unknown key", ["train", "-c", "{typo.yaml}"], "did you mean 'batch_size'"),
    ("train: directory as config", ["train", "-c", "{full}"], "config file not found"),
    ("train: heads do not divide", ["train", "--num-heads", "7", "--print-config"], "must divide d_model"),
    ("train: wrong type", ["train", "--batch-size", "many"], "batch-size"),
    ("train: missing data", ["train", "--train-data-path", "{ckpt}.missing.bin", "--checkpoint-dir", "{full}/r", "--device", "cpu"], "not found"),
    ("train: truncated .bin", ["train", "--train-data-path", "{cut.bin}", "--checkpoint-dir", "{full}/r", "--device", "cpu"], "truncated"),
    ("train: damaged resume file", ["train", "--resume", "{truncated.pt}", "--train-data-path", "{val}", "--checkpoint-dir", "{full}/r", "--device", "cpu"], "damaged"),
    ("tokenize: empty input", ["tokenize", "train", "--input", "{empty.txt}", "--vocab-size", "300", "--output", "{full}/t"], "empty"),
    ("tokenize: vocab too small", ["tokenize", "train", "--input", "{notutf8.txt}", "--vocab-size", "100", "--output", "{full}/t"], "vocab"),
    ("tokenize: not UTF-8", ["tokenize", "train", "--input", "{notutf8.txt}", "--vocab-size", "300", "--output", "{full}/t"], "UTF-8"),
    ("import-ids: non-integer", ["tokenize", "import-ids", "--input", "{ids.txt}", "--output", "{full}/i"], "ids.txt:1"),
]


def _snapshot(root: Path) -> dict[str, bytes]:
    # Output locks (.NAME.lock, lmkit.locking) are left by design and hold no user data.
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


@pytest.mark.parametrize(("args", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_one_line_error_exit_2(files, args, message) -> None:
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("CUDA is available")
    argv = []
    for a in args:
        for key, path in files.items():
            a = a.replace("{" + key + "}", str(path))
        argv.append(a)
    root = files["full"].parent
    before = _snapshot(root)
    result = CliRunner().invoke(app, argv)
    assert _snapshot(root) == before, "a failing command changed or added files"
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    # Progress lines may come first (tokenize); the error is one line, the last, no traceback.
    errors = [line for line in result.stderr.splitlines() if line.startswith("lmkit: error: ")]
    assert len(errors) == 1 and result.stderr.splitlines()[-1] == errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert message in errors[0]
