"""Muon for the hidden matrices, AdamW for the rest, as one optimizer.

Muon (Keller Jordan, 2024) replaces each 2-D weight's momentum with its nearest semi-orthogonal
matrix, found by a few Newton-Schulz iterations, so every direction of the update moves at the
same rate. It is meant for hidden matrices only: embeddings, the LM head and the gains keep AdamW.

``MuonAdamW`` is one ``torch.optim.Optimizer`` over both kinds of groups (one object for the
trainer, the LR schedule and the checkpoint): its state dict is torch's format, keyed per
parameter, so DDP, ``get_optimizer_state_dict`` and bitwise resume work as for AdamW. The Muon
update is torch's (``torch.optim.Muon``, torch >= 2.9; ``tests/training/test_muon.py`` checks the
two agree), computed for all matrices of one shape at once: one batched bf16 matmul per
Newton-Schulz step per shape instead of one per matrix, which at GPT-2 small is 5 x 3 batched
launches instead of 5 x 84 small ones.

Under DDP every rank holds the same gradients and momentum, so orthogonalising every matrix on
every rank would repeat the same work N times (at GPT-2 small, 1.7 TFLOP a step: more than a
step's share of the model's own work on 8 GPUs). Instead each rank orthogonalises 1/N of each
shape's stack and the ranks all-gather the results (bf16, the size of the hidden matrices): every
rank then applies the same update, as one process would.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.distributed as dist
from torch import nn

from lmkit.errors import ConfigError

# torch.optim.Muon's defaults (from Keller Jordan's Muon): the quintic's coefficients and the
# norm floor.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_EPS = 1e-7
# Top-level modules whose 2-D weights are not hidden matrices: the token embedding (a lookup
# table, not a linear map of activations) and the LM head (its output is a softmax's input).
_NOT_HIDDEN = ("tok_embeddings", "lm_head")


def check_torch_muon() -> None:
    """Refuse Muon on a torch that lacks ``torch.optim.Muon`` (before 2.9).

    Raises:
        ConfigError: naming the installed version and the fix.
    """
    if not hasattr(torch.optim, "Muon"):
        raise ConfigError(
            f"optim.optimizer: muon needs torch >= 2.9 (torch.optim.Muon), but torch {torch.__version__} is installed; "
            "upgrade torch or use --optimizer adamw"
        )


def split_parameters(model: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """Which trainable parameters Muon takes: the 2-D weights inside the blocks (attention's
    q/k/v/o and SwiGLU's w1/w2/w3). Everything else (embeddings, LM head, norm gains) is AdamW's.

    Returns:
        ``(muon, adamw)``: lists of ``(name, parameter)`` in the model's order.
    """
    muon, adamw = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        hidden = p.dim() == 2 and name.split(".", 1)[0] not in _NOT_HIDDEN
        (muon if hidden else adamw).append((name, p))
    return muon, adamw


def adjusted_lr(lr: float, adjust: str, shape: torch.Size) -> float:
    """Muon's per-matrix learning rate, as ``torch.optim.Muon``'s ``adjust_lr_fn``.

    ``original``: ``lr * sqrt(max(1, rows / cols))`` (Muon's); ``match_rms_adamw``:
    ``lr * 0.2 * sqrt(max(rows, cols))`` (Moonlight's, which makes the update's RMS AdamW's).
    """
    rows, cols = shape[:2]
    if adjust == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr * math.sqrt(max(1, rows / cols))


def orthogonalise(updates: torch.Tensor, steps: int, coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                  eps: float = NS_EPS) -> torch.Tensor:
    """Newton-Schulz approximation of the nearest semi-orthogonal matrix, for a stack of matrices.

    The same iteration, in bf16, as ``torch.optim._muon._zeropower_via_newtonschulz`` (which takes
    one matrix): ``X <- a X + (b A + c A^2) X`` with ``A = X X^T``, after scaling X to unit
    Frobenius norm (so its spectral norm is at most 1).

    Args:
        updates: (n, rows, cols), any float dtype.
        steps: iterations.
        coefficients: ``(a, b, c)`` of the quintic.
        eps: floor of the norm.

    Returns:
        (n, rows, cols) bf16.
    """
    a, b, c = coefficients
    x = updates.to(dtype=torch.bfloat16, copy=True)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT  # (n, cols, rows): iterate on the short side, the Gram matrix is the smaller one
    x = x / torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT  # (n, r, r), r = min(rows, cols)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b A + c A^2
        x = torch.baddbmm(x, poly, x, beta=a)  # a X + poly X
    return x.mT if tall else x


def orthogonalise_sharded(updates: list[torch.Tensor], steps: int, rank: int, world_size: int) -> torch.Tensor:
    """``orthogonalise`` of same-shape matrices, each of ``world_size`` ranks doing its slice, then gathered.

    Every rank passes the same matrices (DDP's gradients are all-reduced) and gets the same result;
    a rank stacks only its own slice, padded with zero matrices to the common slice size (a zero
    matrix stays zero: its norm is floored at ``eps``).

    Args:
        updates: n matrices of one shape (rows, cols), the same on every rank.
        steps: Newton-Schulz iterations.
        rank, world_size: this process's place in the default process group.

    Returns:
        (n, rows, cols) bf16.
    """
    n = len(updates)
    per = -(-n // world_size)  # ceil: matrices per rank
    mats = updates[rank * per:(rank + 1) * per]  # the last rank's may be short, or empty
    mats += [updates[0].new_zeros(updates[0].shape)] * (per - len(mats))
    # contiguous: a tall stack comes back transposed, and collectives want dense buffers.
    mine = orthogonalise(torch.stack(mats), steps).contiguous()  # (per, rows, cols)
    parts = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(parts, mine)
    return torch.cat(parts)[:n]  # (n, rows, cols)


class MuonAdamW(torch.optim.Optimizer):
    """Muon on ``muon_params``, AdamW (``adamw``, already built) on the others: one optimizer.

    Groups carry ``kind`` (``muon``/``adamw``) and ``lr_scale``: the trainer sets each group's
    ``lr`` to the schedule's LR times ``lr_scale`` (``muon_lr / learning_rate`` for Muon, 1 for
    AdamW), so one schedule drives both learning rates. Like lmkit's AdamW it takes the gradient
    clip as ``grad_scale`` (see ``optim.clip_gradients``): the Muon part divides each gradient by
    it as it enters the momentum, the AdamW part passes it to its own step.

    Args:
        muon_params: the 2-D hidden matrices (``split_parameters``).
        adamw: an AdamW over the other parameters (its groups and state become this object's).
        lr: Muon's peak LR; ``lr_scale`` = ``lr / adamw_lr``.
        adamw_lr: AdamW's peak LR.
        momentum, nesterov, ns_steps, weight_decay, adjust: ``torch.optim.Muon``'s
            ``momentum``, ``nesterov``, ``ns_steps``, ``weight_decay``, ``adjust_lr_fn``.
        rank, world_size: under DDP, the ranks share the Newton-Schulz work
            (``orthogonalise_sharded``); 0 and 1 for one process.
    """

    takes_grad_scale = True

    def __init__(self, muon_params: list[nn.Parameter], adamw: torch.optim.Optimizer, lr: float, adamw_lr: float,
                 momentum: float, nesterov: bool, ns_steps: int, weight_decay: float, adjust: str,
                 rank: int = 0, world_size: int = 1) -> None:
        self.adamw = adamw
        self.rank, self.world_size = rank, world_size
        muon_group = {
            "params": list(muon_params), "kind": "muon", "lr": lr, "lr_scale": lr / adamw_lr, "momentum": momentum,
            "nesterov": nesterov, "ns_steps": ns_steps, "weight_decay": weight_decay, "adjust_lr_fn": adjust,
        }
        for g in adamw.param_groups:
            g.update(kind="adamw", lr_scale=1.0)
        groups = [muon_group] + [g for g in adamw.param_groups if g["params"]]
        super().__init__(groups, defaults={})
        # The AdamW groups are the same dicts in both optimizers (LR set once reaches both) and
        # the state is one table, so state_dict/load_state_dict here cover everything.
        adamw.param_groups = [g for g in self.param_groups if g["kind"] == "adamw"]
        adamw.state = self.state
        self._lr_scales = [g["lr_scale"] for g in self.param_groups]
        self.grad_scale: torch.Tensor | None = None

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 (torch.optim.Optimizer.step)
        if closure is not None:
            raise ValueError("lmkit's Muon takes no closure")
        for group in self.param_groups:
            if group["kind"] == "muon":
                self._muon_step(group)
        scale, adamw = self.grad_scale, self.adamw
        if scale is not None and not (getattr(adamw, "takes_grad_scale", False) or adamw.defaults.get("fused")):
            # torch's unfused AdamW (CPU) refuses a grad_scale: apply the clip to its gradients.
            grads = [p.grad for g in adamw.param_groups for p in g["params"] if p.grad is not None]
            torch._foreach_div_(grads, scale)
            scale = None
        adamw.grad_scale = scale  # type: ignore[attr-defined]
        adamw.step()
        return None

    def _muon_step(self, group: dict) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        m, scale = group["momentum"], self.grad_scale
        for p in params:
            if "momentum_buffer" not in self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
        bufs = [self.state[p]["momentum_buffer"] for p in params]
        grads = [p.grad for p in params]
        if scale is not None:
            grads = torch._foreach_div(grads, scale)  # the clip, folded in here
        # One launch per op over all matrices (not one per matrix): the same arithmetic as
        # torch.optim.Muon's per-tensor lerps, so the results are bitwise equal.
        torch._foreach_lerp_(bufs, grads, 1 - m)  # buf = m * buf + (1 - m) * g
        updates = torch._foreach_lerp(grads, bufs, m) if group["nesterov"] else bufs
        by_shape: dict[tuple, list[int]] = defaultdict(list)
        for i, p in enumerate(params):
            by_shape[(tuple(p.shape), p.dtype, p.device)].append(i)
        lr = group["lr"]
        for (shape, _, _), idx in by_shape.items():
            mats = [updates[i] for i in idx]
            if self.world_size > 1:
                ortho = orthogonalise_sharded(mats, group["ns_steps"], self.rank, self.world_size)
            else:
                ortho = orthogonalise(torch.stack(mats), group["ns_steps"])  # (n, rows, cols) bf16
            mine = [params[i] for i in idx]
            if group["weight_decay"]:
                torch._foreach_mul_(mine, 1 - lr * group["weight_decay"])
            torch._foreach_add_(mine, list(ortho.unbind(0)), alpha=-adjusted_lr(lr, group["adjust_lr_fn"], torch.Size(shape)))

    def state_dict(self) -> dict:  # noqa: D102 (torch.optim.Optimizer.state_dict)
        # lmkit's AdamW shares one step count per group (see optim.AdamW.state_dict): each
        # parameter gets its own copy, as torch's AdamW, which increments each in place, expects.
        out = super().state_dict()
        out["state"] = {k: {**v, "step": v["step"].clone()} if "step" in v else v for k, v in out["state"].items()}
        return out

    def load_state_dict(self, state_dict: dict) -> None:  # noqa: D102 (torch.optim.Optimizer.load_state_dict)
        super().load_state_dict(state_dict)
        # The saved groups replace these ones: point the inner AdamW at them again, and keep this
        # run's LR ratio (muon_lr may change on resume, as learning_rate may).
        for group, lr_scale in zip(self.param_groups, self._lr_scales):
            group["lr_scale"] = lr_scale
        self.adamw.param_groups = [g for g in self.param_groups if g["kind"] == "adamw"]
        self.adamw.state = self.state
        if hasattr(self.adamw, "_plans"):
            self.adamw._plans.clear()  # lmkit's AdamW: tensors to be planned again


def build_muon(model: nn.Module, adamw_builder, optim, rank: int = 0, world_size: int = 1) -> MuonAdamW:
    """``MuonAdamW`` for ``model`` as ``optim`` (an ``OptimSettings``) describes.

    Args:
        model: the (un-compiled, unsharded) model.
        adamw_builder: ``build_optimizer``-like function of an ``nn.Module`` giving AdamW over
            that module's parameters (lmkit picks its fused kernels there).
        optim: the settings.
        rank, world_size: this process's place in a DDP run (the ranks share Newton-Schulz).

    Raises:
        ConfigError: torch lacks Muon, or the model has no hidden matrices.
    """
    check_torch_muon()
    muon, rest = split_parameters(model)
    if not muon:
        raise ConfigError("optim.optimizer: muon found no 2-D hidden matrices in the model; use --optimizer adamw")
    holder = _Params([p for _, p in rest])
    adamw = adamw_builder(holder)
    return MuonAdamW(
        [p for _, p in muon], adamw, optim.muon_lr, optim.learning_rate, optim.muon_momentum, optim.muon_nesterov,
        optim.muon_ns_steps, optim.muon_weight_decay, optim.muon_lr_adjust, rank, world_size,
    )


class _Params(nn.Module):
    """Holds a list of parameters (without re-registering them in the model) so an AdamW
    builder that takes a module sees only AdamW's share."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        super().__init__()
        self._list = params

    def parameters(self, recurse: bool = True):  # noqa: D102 (nn.Module.parameters)
        return iter(self._list)
