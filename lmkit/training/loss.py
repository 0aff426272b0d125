"""Next-token cross-entropy, plain or fused with the LM head in chunks.

Notation: N = B*T rows, D = d_model, V = vocab_size.

The plain path materialises (N, V) logits: for GPT-2 small at B=32, T=1024 that is 3.3 GB in bf16
plus an fp32 copy for the softmax. The fused path walks the rows in chunks, computing each chunk's
logits, its loss and -- right away, in the forward pass -- its gradients w.r.t. the hidden states
and the LM-head weight. Backward then only scales the stored gradients. Peak extra memory is one
chunk's logits and their gradient instead of all the logits, with no recomputation of the LM-head
matmul. Under torch.compile the chunk loop stays outside the model's graph and each chunk's
softmax is compiled on its own (``compiled=True``); with ``ce_kernel`` one Triton kernel of
ours does it instead, in place (lmkit/kernels/ce.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.kernels import ce
from lmkit.kernels.linear import matmul_to


def cross_entropy_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; the softmax runs in fp32 whatever the logits' dtype.

    Args:
        logits: (B, T, V).
        targets: (B, T) int64.
    """
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())  # (N, V) vs (N,)


def _ce_chunk_grad(logits: torch.Tensor, targets: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of one chunk of rows and ``scale *`` its gradient w.r.t. the logits.

    Args:
        logits: (n, V) in the compute dtype; the softmax runs in fp32.
        targets: (n,) int64.
        scale: the gradient's factor (1/N for a mean over N rows).

    Returns:
        ``(loss_sum, grad_logits)``: fp32 scalar and (n, V) in the logits' dtype.
    """
    lf = logits.float()  # (n, V); under torch.compile this upcast is fused, never stored
    lse = torch.logsumexp(lf, dim=-1)  # (n,)
    loss_sum = (lse - lf.gather(1, targets[:, None]).squeeze(1)).sum()
    # d(CE)/d(logits) = softmax - onehot, built out of place: one pass writing the compute dtype,
    # where an in-place index scatter forced an fp32 (n, V) buffer and extra passes.
    vocab = torch.arange(lf.shape[1], device=lf.device)  # (V,)
    onehot = (vocab[None, :] == targets[:, None]).to(lf.dtype)  # (n, V)
    grad = ((torch.exp(lf - lse[:, None]) - onehot) * scale).to(logits.dtype)  # (n, V)
    return loss_sum, grad


def _ce_chunk_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of (n, V) logits against (n,) targets, softmax in fp32."""
    return F.cross_entropy(logits.float(), targets, reduction="sum")


@functools.cache
def _compiled(fn: Callable) -> Callable:
    # Compiled on its own, outside any model graph: Inductor then fuses the chunk's softmax
    # into two passes over its logits, and the chunks' buffers cannot outlive their iteration
    # (inside one big graph several chunks' buffers were alive at once).
    return torch.compile(fn, dynamic=False)


def _accumulate_mm(acc: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``acc + a @ b`` in fp32 for low-precision ``a``, ``b`` (acc None: just the product)."""
    if acc is None:
        return matmul_to(a, b, torch.float32)
    if a.is_cuda and a.dtype in (torch.bfloat16, torch.float16):
        # cuBLAS accumulates into the fp32 output directly: no low-precision (V, D) product
        # to round, store and add (torch >= 2.8). out=acc: in place, where a new output cost a
        # copy of acc (a (V, D) fp32 tensor) per chunk first.
        return torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    return acc + (a @ b).float()


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """mean(CE(h @ W.T, y)) with gradients computed chunk by chunk during forward."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int,
                compute_dtype: torch.dtype, compiled: bool, ce_kernel: bool):
        N = h.shape[0]
        w = weight.to(compute_dtype)  # (V, D)
        chunk_grad = _compiled(_ce_chunk_grad) if compiled else _ce_chunk_grad
        grad_h = torch.empty_like(h)  # (N, D)
        grad_w = None  # (V, D) fp32, accumulated over chunks
        loss_sum = torch.zeros((), dtype=torch.float32, device=h.device)
        for start in range(0, N, chunk_rows):
            h_c = h[start : start + chunk_rows].to(compute_dtype)  # (n, D)
            logits = h_c @ w.t()  # (n, V)
            if ce_kernel and ce.supported(logits):
                # One Triton pass; the logits become their gradient (no second (n, V) buffer).
                loss_c = ce.ce_loss_and_grad_(logits, targets[start : start + chunk_rows], 1.0 / N)
                grad_logits = logits
            else:
                loss_c, grad_logits = chunk_grad(logits, targets[start : start + chunk_rows], 1.0 / N)
            del logits  # free it before the next chunk's matmuls allocate theirs
            loss_sum += loss_c
            if h.dtype == compute_dtype:  # straight into grad_h's rows: no temporary, no copy
                torch.mm(grad_logits, w, out=grad_h[start : start + chunk_rows])  # (n, D)
            else:
                grad_h[start : start + chunk_rows] = (grad_logits @ w).to(h.dtype)  # (n, D)
            grad_w = _accumulate_mm(grad_w, grad_logits.t(), h_c)  # (V, D)
            # Likewise: held over into the next iteration it made three chunk-sized buffers live
            # at once instead of two.
            del grad_logits
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return loss_sum / N

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        # grad_w (fp32, V x D) by a multi-tensor kernel: a plain product with the 0-d CUDA
        # grad_out ran as an unvectorised broadcast kernel. For grad_h (bf16 under autocast)
        # foreach falls back to that same kernel, so it stays a plain product.
        return grad_h * grad_out, torch._foreach_mul([grad_w], grad_out)[0], None, None, None, None, None


# Run eagerly even inside a compiled model: Dynamo would otherwise inline the chunk loop into
# the surrounding graph, where Inductor keeps several chunks' logits alive at once. torch's lazy
# form of torch.compiler.disable: the public decorator imports torch._dynamo on the spot, which
# added seconds to every lmkit command's start, compiled or not.
@torch._disable_dynamo
def fused_linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_rows: int = 4096,
    compute_dtype: torch.dtype | None = None,
    compiled: bool = False,
    ce_kernel: bool = True,
) -> torch.Tensor:
    """Mean cross-entropy of ``h @ weight.T`` against ``targets`` without materialising all logits.

    Args:
        h: final hidden states, (B, T, D) or (N, D).
        weight: LM-head weight, (V, D).
        targets: (B, T) or (N,) int64.
        chunk_rows: rows per chunk; about two (chunk_rows, V) compute-dtype buffers are the
            extra memory.
        compute_dtype: matmul dtype (bf16 under mixed precision); default: ``h``'s dtype.
        compiled: run each chunk's softmax and gradient as one ``torch.compile``d function
            (fused passes; compiles once per chunk shape).
        ce_kernel: each chunk's softmax and gradient by lmkit's Triton kernel where it is
            supported (kernels/ce.py), in place over the logits.

    Returns:
        Scalar fp32 loss equal to ``cross_entropy_loss(h @ weight.T, targets)``.
    """
    compute_dtype = h.dtype if compute_dtype is None else compute_dtype
    h2, y = h.flatten(0, -2), targets.flatten()  # (N, D), (N,)
    # The matmuls inside are done in compute_dtype by hand; autocast must not re-cast them.
    with torch.autocast(h.device.type, enabled=False):
        if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
            return _FusedLinearCrossEntropy.apply(h2, weight, y, chunk_rows, compute_dtype, compiled, ce_kernel)
        # Evaluation: same chunking, no gradient work.
        chunk_sum = _compiled(_ce_chunk_sum) if compiled else _ce_chunk_sum
        w = weight.to(compute_dtype)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for start in range(0, h2.shape[0], chunk_rows):
            logits = h2[start : start + chunk_rows].to(compute_dtype) @ w.t()  # (n, V)
            total += chunk_sum(logits, y[start : start + chunk_rows])
        return total / h2.shape[0]


def lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, fused: bool = True, chunk_rows: int = 4096,
            compiled: bool = False, compute_dtype: torch.dtype | None = None, ce_kernel: bool = True) -> torch.Tensor:
    """Training loss of a ``TransformerLM`` on inputs ``x`` (B, T) and targets ``y`` (B, T).

    Args:
        model: the model (its ``hidden`` and ``lm_head``).
        x, y: (B, T) inputs and targets.
        fused: the chunked LM-head loss (``fused_linear_cross_entropy``), else plain CE over
            the (B, T, V) logits.
        chunk_rows: rows per chunk of the fused loss.
        compiled: passed to ``fused_linear_cross_entropy`` (the plain path is compiled, or not,
            by whoever compiles this call).
        compute_dtype: the autocast dtype the run uses (None: the hidden states' dtype); the
            fused loss multiplies in it.
        ce_kernel: passed to ``fused_linear_cross_entropy``.

    Returns:
        Scalar fp32 mean loss.
    """
    if not fused:
        return cross_entropy_loss(model(x), y)
    h = model.hidden(x)  # (B, T, D)
    if compute_dtype is not None:
        # The LM head multiplies in the compute dtype anyway. Cast here, inside a compiled model,
        # the final norm writes bf16 (half the bytes), and the chunk loop neither casts h nor
        # its gradient: the same numbers, fewer passes.
        h = h.to(compute_dtype)
    return fused_linear_cross_entropy(h, model.lm_head.weight, y, chunk_rows, compiled=compiled, ce_kernel=ce_kernel)


class LMLoss(nn.Module):
    """``TransformerLM`` + its loss as one module whose ``forward(x, y)`` returns the loss.

    DDP and FSDP act through a module's ``forward`` (gradient hooks, parameter gathering), so the
    fused loss -- which calls ``hidden()`` and reads ``lm_head.weight`` directly -- must run
    inside a forward that they wrap. This is that forward; the arguments are ``lm_loss``'s.
    """

    def __init__(self, model: nn.Module, fused: bool = True, chunk_rows: int = 4096, compiled: bool = False,
                 compute_dtype: torch.dtype | None = None, ce_kernel: bool = True):
        super().__init__()
        self.model = model
        self.fused = fused
        self.chunk_rows = chunk_rows
        self.compiled = compiled
        self.compute_dtype = compute_dtype
        self.ce_kernel = ce_kernel

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return lm_loss(self.model, x, y, self.fused, self.chunk_rows, self.compiled, self.compute_dtype, self.ce_kernel)
