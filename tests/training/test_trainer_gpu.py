"""The trainer on CUDA with torch.compile, with and without CUDA graphs (run with ``-m gpu``)."""

from __future__ import annotations

import pytest
import torch

from tests.training.test_trainer import run

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_cuda_graphs_train_the_same_and_resume(tiny_overrides, tmp_path):
    """Replayed CUDA graphs run the kernels the plain compiled step runs: same losses (to bf16
    rounding), validation included; a resumed graphed run continues the same curve."""
    base = dict(tiny_overrides, device="cuda", compile=True, max_iters=20, lr_decay_iters=20, log_interval=1,
                checkpoint_interval=10, eval_interval=5)
    plain, _ = run(base, cuda_graphs=False, checkpoint_dir=str(tmp_path / "plain"))
    graphed, res = run(base, checkpoint_dir=str(tmp_path / "graphed"))  # unset: on here
    assert res.status == "finished" and res.step == 20
    for step, loss in plain.losses().items():
        assert graphed.losses()[step] == pytest.approx(loss, rel=2e-2, abs=2e-2), step
    first, _ = run(base, checkpoint_dir=str(tmp_path / "split"), max_iters=10)
    second, res = run(base, checkpoint_dir=str(tmp_path / "split"))
    assert res.step == 20
    split = {**first.losses(), **second.losses()}
    for step, loss in graphed.losses().items():
        assert split[step] == pytest.approx(loss, rel=2e-2, abs=2e-2), step


def test_cuda_graphs_off_with_accumulation(tiny_overrides, tmp_path, capsys):
    rec, res = run(tiny_overrides, device="cuda", compile=True, cuda_graphs=True, grad_accum_steps=2, max_iters=4,
                   checkpoint_dir=str(tmp_path / "acc"))
    assert res.status == "finished"
    said = capsys.readouterr().err + " ".join(rec.events)
    assert "cuda_graphs needs" in said
