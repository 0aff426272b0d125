"""AdamW with weight decay on matrices only."""

from __future__ import annotations

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split parameters: >= 2-D tensors (matmul weights, embeddings) decay; gains and biases do not.

    Decaying RMSNorm gains pulls them toward 0, which only fights the normalisation.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    device_type: str,
) -> torch.optim.AdamW:
    """AdamW over ``param_groups``; torch's fused kernel on CUDA (one launch for all params).

    Args:
        model: the (un-compiled) model whose parameters to optimise.
        learning_rate: initial LR (the schedule overwrites it every step).
        weight_decay: decay for >= 2-D weights.
        betas: Adam moment decays.
        eps: Adam epsilon.
        device_type: "cuda" enables the fused implementation.
    """
    return torch.optim.AdamW(
        param_groups(model, weight_decay),
        lr=learning_rate,
        betas=betas,
        eps=eps,
        fused=device_type == "cuda",
    )
