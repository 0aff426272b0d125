"""AdamW with weight decay on matrices only."""

from __future__ import annotations

import math

import torch
from torch import nn

from lmkit.kernels import adamw
from lmkit.kernels.adamw import AdamW

__all__ = ["AdamW", "build_optimizer", "clip_gradients", "param_groups"]


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
    kernel: bool = True,
) -> torch.optim.AdamW:
    """AdamW over ``param_groups``: on CUDA lmkit's (one Triton launch per group, with ``kernel``)
    for plain fp32 parameters, else torch's fused kernel (sharded parameters) or its default
    implementation.

    Args:
        model: the (un-compiled) model whose parameters to optimise.
        learning_rate: initial LR (the schedule overwrites it every step).
        weight_decay: decay for >= 2-D weights.
        betas: Adam moment decays.
        eps: Adam epsilon.
        device_type: "cuda" enables the fused implementations.
        kernel: lmkit's AdamW kernel where it is supported (settings ``kernels.adamw_kernel``).
    """
    groups = param_groups(model, weight_decay)
    if kernel and device_type == "cuda" and adamw.supported([p for g in groups for p in g["params"]]):
        return AdamW(groups, lr=learning_rate, betas=betas, eps=eps, weight_decay=weight_decay)
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps, fused=device_type == "cuda")


def clip_gradients(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Total gradient norm, with the gradients clipped to ``max_norm`` for the coming step.

    Same effect on the next ``optimizer.step()`` as ``clip_grad_norm_(params, max_norm)``. With
    torch's fused AdamW the scaling is folded into the optimizer kernel through its
    ``grad_scale`` input (the attribute ``GradScaler`` sets to unscale gradients; lmkit's AdamW
    takes it too), which divides
    every gradient as it is read: one pass over all gradients less per step (~1 GB of traffic at
    GPT-2 small). The ``.grad`` tensors themselves then stay unscaled, so call this just before
    ``optimizer.step()``.

    Args:
        optimizer: the optimizer about to step.
        params: the parameters whose gradients count.
        max_norm: clip threshold; ``inf`` measures the norm without clipping.

    Returns:
        The total L2 norm before clipping (0-d tensor, on the gradients' device).
    """
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    optimizer.grad_scale = None  # type: ignore[attr-defined]
    if math.isinf(max_norm):
        return norm
    takes_scale = getattr(optimizer, "takes_grad_scale", False) or optimizer.defaults.get("fused")
    # Sharded (FSDP) gradients give a DTensor norm, which the fused kernel cannot take.
    if takes_scale and type(norm) is torch.Tensor:
        # clip_grad_norm_ multiplies by min(1, max_norm / (norm + 1e-6)); this divides by its inverse.
        optimizer.grad_scale = torch.clamp((norm.float() + 1e-6) / max_norm, min=1.0)  # type: ignore[attr-defined]
    else:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm
