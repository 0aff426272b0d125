"""AdamW with weight decay on matrices only."""

from __future__ import annotations

import math

import torch
from torch import nn

from lmkit.training import adamw_kernel


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


class AdamW(torch.optim.AdamW):
    """torch's AdamW whose CUDA step is one Triton launch per parameter group (adamw_kernel).

    Same hyperparameters, same state (``exp_avg``, ``exp_avg_sq``, ``step``) and so the same
    state dict as ``torch.optim.AdamW``: checkpoints move between the two. Like torch's fused
    version it takes the gradient clip as ``grad_scale`` (see ``clip_gradients``). Anything the
    kernel does not cover (sharded or non-fp32 tensors, differing step counts, amsgrad) takes
    torch's own step, with ``grad_scale`` applied to the gradients first.
    """

    takes_grad_scale = True

    def __init__(self, params, lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
        # Unfused: the fallback step keeps the step counts on the CPU, where this class keeps them.
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=False)
        self.grad_scale: torch.Tensor | None = None
        self._plans: dict[int, adamw_kernel.Plan] = {}

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 (torch.optim.AdamW.step)
        if closure is not None:
            raise ValueError("lmkit's AdamW takes no closure")
        work = []
        for i, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if group["amsgrad"] or group["maximize"]:
                return self._torch_step()
            for p in params:
                if not self.state[p]:
                    self.state[p].update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            tensors = [(p, p.grad, self.state[p]["exp_avg"], self.state[p]["exp_avg_sq"]) for p in params]
            plan = self._plans.get(i)
            if plan is None or plan.block != adamw_kernel.BLOCK or plan.key != tuple(t.data_ptr() for ts in tensors for t in ts):
                # New tensors (first step, a resume, a parameter that had no gradient before).
                if not adamw_kernel.supported([t for ts in tensors for t in ts]):
                    return self._torch_step()
                steps = {float(self.state[p]["step"]) for p in params}
                if len(steps) != 1:
                    return self._torch_step()
                # One step count for the group, on the CPU (as torch's unfused AdamW keeps it):
                # read without a device sync, and one increment a step instead of one per tensor.
                shared = torch.tensor(steps.pop(), dtype=torch.float32)
                for p in params:
                    self.state[p]["step"] = shared
                plan = self._plans[i] = adamw_kernel.Plan(tensors, adamw_kernel.BLOCK)
            work.append((group, plan, tensors[0], self.state[params[0]]["step"]))
        for group, plan, bases, step in work:
            step += 1
            beta1, beta2 = group["betas"]
            adamw_kernel.adamw_update_(
                plan, bases, self.grad_scale, float(group["lr"]), group["weight_decay"], beta1, beta2, group["eps"], int(step)
            )
        return None

    def load_state_dict(self, state_dict: dict) -> None:  # noqa: D102 (torch.optim.Optimizer.load_state_dict)
        super().load_state_dict(state_dict)
        # A state dict from torch's fused AdamW carries fused=True into the groups; the fallback
        # step must stay torch's unfused one, which takes the CPU step counts kept here.
        for group in self.param_groups:
            group.update(fused=False, capturable=False)
        self._plans.clear()

    def state_dict(self) -> dict:  # noqa: D102 (torch.optim.Optimizer.state_dict)
        # A group's tensors share one step count here (see step); the state dict gives each its
        # own, as torch's AdamW, which increments each in place, expects.
        out = super().state_dict()
        out["state"] = {k: {**v, "step": v["step"].clone()} if "step" in v else v for k, v in out["state"].items()}
        return out

    def _torch_step(self):
        """torch's own step over everything, the clip (``grad_scale``) applied to the gradients first."""
        self._plans.clear()
        for state in self.state.values():  # one step count each again: torch increments each
            if "step" in state:
                state["step"] = state["step"].clone()
        if self.grad_scale is not None:
            grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
            torch._foreach_div_(grads, self.grad_scale)
            self.grad_scale = None  # torch's unfused step refuses one
        return super().step()


def build_optimizer(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    device_type: str,
) -> torch.optim.AdamW:
    """AdamW over ``param_groups``: on CUDA lmkit's (one Triton launch per group) for plain fp32
    parameters, else torch's fused kernel (sharded parameters) or its default implementation.

    Args:
        model: the (un-compiled) model whose parameters to optimise.
        learning_rate: initial LR (the schedule overwrites it every step).
        weight_decay: decay for >= 2-D weights.
        betas: Adam moment decays.
        eps: Adam epsilon.
        device_type: "cuda" enables the fused implementations.
    """
    groups = param_groups(model, weight_decay)
    if device_type == "cuda" and adamw_kernel.supported([p for g in groups for p in g["params"]]):
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
