"""Next-token cross-entropy, plain or fused with the LM head in chunks.

Notation: N = B*T rows, D = d_model, V = vocab_size.

The plain path materialises (N, V) logits: for GPT-2 small at B=32, T=1024 that is 3.3 GB in bf16
plus an fp32 copy for the softmax. The fused path walks the rows in chunks, computing each chunk's
logits, its loss and -- right away, in the forward pass -- its gradients w.r.t. the hidden states
and the LM-head weight. Backward then only scales the stored gradients. Peak extra memory is one
chunk of logits instead of all of them, with no recomputation of the LM-head matmul.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cross_entropy_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; the softmax runs in fp32 whatever the logits' dtype.

    Args:
        logits: (B, T, V).
        targets: (B, T) int64.
    """
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())  # (N, V) vs (N,)


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """mean(CE(h @ W.T, y)) with gradients computed chunk by chunk during forward."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int, compute_dtype: torch.dtype):
        N = h.shape[0]
        w = weight.to(compute_dtype)  # (V, D)
        vocab = torch.arange(weight.shape[0], device=h.device)  # (V,)
        grad_h = torch.empty_like(h)  # (N, D)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)  # (V, D)
        loss_sum = torch.zeros((), dtype=torch.float32, device=h.device)
        for start in range(0, N, chunk_rows):
            h_c = h[start : start + chunk_rows].to(compute_dtype)  # (n, D)
            y_c = targets[start : start + chunk_rows]  # (n,)
            logits = (h_c @ w.t()).float()  # (n, V)
            lse = torch.logsumexp(logits, dim=-1)  # (n,)
            loss_sum += (lse - logits.gather(1, y_c[:, None]).squeeze(1)).sum()
            # d(mean CE)/d(logits) = (softmax - onehot) / N, out of place: under torch.compile it
            # is one pass over the logits writing compute_dtype, where an in-place index scatter
            # forced an fp32 (n, V) buffer and extra passes (~2 ms/step, GPT-2-small on an H100).
            onehot = (vocab[None, :] == y_c[:, None]).to(logits.dtype)  # (n, V)
            grad_logits = ((torch.exp(logits - lse[:, None]) - onehot) / N).to(compute_dtype)  # (n, V)
            grad_h[start : start + chunk_rows] = (grad_logits @ w).to(h.dtype)  # (n, D)
            grad_w += (grad_logits.t() @ h_c).float()  # (V, D)
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return loss_sum / N

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out, grad_w * grad_out, None, None, None


def fused_linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_rows: int = 8192,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of ``h @ weight.T`` against ``targets`` without materialising all logits.

    Args:
        h: final hidden states, (B, T, D) or (N, D).
        weight: LM-head weight, (V, D).
        targets: (B, T) or (N,) int64.
        chunk_rows: rows per chunk; the (chunk_rows, V) fp32 logits are the extra memory.
        compute_dtype: matmul dtype (bf16 under mixed precision); default: the autocast dtype
            if autocast is on, else ``h``'s dtype.

    Returns:
        Scalar fp32 loss equal to ``cross_entropy_loss(h @ weight.T, targets)``.
    """
    if compute_dtype is None:
        dev = h.device.type
        compute_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype
    h2, y = h.flatten(0, -2), targets.flatten()  # (N, D), (N,)
    # The matmuls inside are done in compute_dtype by hand; autocast must not re-cast them.
    with torch.autocast(h.device.type, enabled=False):
        if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
            return _FusedLinearCrossEntropy.apply(h2, weight, y, chunk_rows, compute_dtype)
        # Evaluation: same chunking, no gradient work.
        w = weight.to(compute_dtype)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for start in range(0, h2.shape[0], chunk_rows):
            logits = (h2[start : start + chunk_rows].to(compute_dtype) @ w.t()).float()  # (n, V)
            total += torch.nn.functional.cross_entropy(logits, y[start : start + chunk_rows], reduction="sum")
        return total / h2.shape[0]


def lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, fused: bool = True, chunk_rows: int = 8192) -> torch.Tensor:
    """Training loss of a ``TransformerLM`` on inputs ``x`` (B, T) and targets ``y`` (B, T)."""
    if not fused:
        return cross_entropy_loss(model(x), y)
    return fused_linear_cross_entropy(model.hidden(x), model.lm_head.weight, y, chunk_rows)


class LMLoss(nn.Module):
    """``TransformerLM`` + its loss as one module whose ``forward(x, y)`` returns the loss.

    DDP and FSDP act through a module's ``forward`` (gradient hooks, parameter gathering), so the
    fused loss -- which calls ``hidden()`` and reads ``lm_head.weight`` directly -- must run
    inside a forward that they wrap. This is that forward.
    """

    def __init__(self, model: nn.Module, fused: bool = True, chunk_rows: int = 8192):
        super().__init__()
        self.model = model
        self.fused = fused
        self.chunk_rows = chunk_rows

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return lm_loss(self.model, x, y, self.fused, self.chunk_rows)
