"""Which fast paths a run uses, decided once from the ``kernels`` settings and the runtime.

The model (lmkit/model/) is plain torch. A ``KernelPlan`` holds the ``kernels`` settings; its
``for_training`` resolves them against the device and precision (a path that cannot apply is
off, so the plan says what runs), and ``apply_training`` swaps the training paths into a built
model from outside, as torchtitan applies parallelism and compile. The loss and the optimizer
read ``ce_kernel`` and ``adamw_kernel`` from the same plan; generation applies the decode paths
in its setup (kernels/decode.py) from ``stacked_decode_weights``, ``decode_attention_kernel``,
``decode_tuning`` and ``decode_steps_per_replay``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
from torch import nn

from lmkit.kernels import linear
from lmkit.kernels.linear import Fp32GradLinear
from lmkit.kernels.qkv import StackedQKVAttention
from lmkit.kernels.triton_support import triton_device
from lmkit.model.layers import CausalSelfAttention


@dataclass(frozen=True)
class KernelPlan:
    """The fast paths, on or off; the fields and defaults are ``lmkit.settings.KernelSettings``'s
    (whose descriptions say what each does)."""

    fp32_weight_grad: bool = True
    stacked_qkv: bool = True
    ce_kernel: bool = True
    adamw_kernel: bool = True
    decode_attention_kernel: bool = True
    stacked_decode_weights: bool = True
    decode_tuning: bool = True
    decode_steps_per_replay: int = 4

    @classmethod
    def from_settings(cls, kernel_settings: Any) -> KernelPlan:
        """The plan of a ``KernelSettings`` (or any object with the same attribute names).

        Args:
            kernel_settings: e.g. ``settings.kernels``; None gives the defaults (a checkpoint
                written before the section existed).

        Returns:
            The plan, not yet resolved against a device.
        """
        if kernel_settings is None:
            return cls()
        return cls(**{f.name: getattr(kernel_settings, f.name) for f in fields(cls)})

    def for_training(self, device: torch.device, compute_dtype: torch.dtype,
                     weight_dtype: torch.dtype = torch.float32) -> KernelPlan:
        """This plan with the training paths that cannot apply here turned off.

        Args:
            device: where training runs.
            compute_dtype: the autocast dtype (float32: no autocast).
            weight_dtype: the parameters' dtype.

        Returns:
            The resolved plan: each training field says whether that path runs.
        """
        fp32_grad = self.fp32_weight_grad and linear.supported(weight_dtype, compute_dtype)
        return replace(
            self,
            fp32_weight_grad=fp32_grad,
            # Its one GEMM is the fp32-gradient Linear's over stacked weights.
            stacked_qkv=self.stacked_qkv and fp32_grad,
            ce_kernel=self.ce_kernel and triton_device(device),
            adamw_kernel=self.adamw_kernel and triton_device(device),
        )

    def describe(self) -> str:
        """One line naming the training paths that are on, e.g. for a run's start-up notice."""
        training = ("fp32_weight_grad", "stacked_qkv", "ce_kernel", "adamw_kernel")
        on = [name for name, value in asdict(self).items() if name in training and value]
        return "kernels: " + (", ".join(on) if on else "none (plain torch)")


def apply_training(model: nn.Module, plan: KernelPlan, compute_dtype: torch.dtype) -> nn.Module:
    """Swap the training fast paths of a resolved ``plan`` into ``model``, in place.

    Every ``nn.Linear`` becomes an ``Fp32GradLinear`` (``fp32_weight_grad``) and every attention
    a ``StackedQKVAttention`` (``stacked_qkv``), over the same Parameters: the state dict, the
    optimizer's parameters and checkpoints are those of the plain model. Call it before the
    model is compiled or wrapped (DDP, FSDP).

    Args:
        model: a plain ``TransformerLM`` (or any module holding its layers).
        plan: a plan from ``for_training``.
        compute_dtype: the autocast dtype the paths multiply in.

    Returns:
        ``model``.
    """
    for module in model.modules():
        if plan.fp32_weight_grad and type(module) is not Fp32GradLinear and isinstance(module, nn.Linear):
            Fp32GradLinear.from_linear(module, compute_dtype)
        elif plan.stacked_qkv and type(module) is CausalSelfAttention:
            StackedQKVAttention.from_attention(module, compute_dtype)
    return model
