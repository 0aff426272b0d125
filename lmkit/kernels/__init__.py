"""Fast paths applied to the plain model from outside: each module holds one, with its torch
reference and a ``supported()`` check; ``plan.KernelPlan`` chooses them from the settings."""

from lmkit.kernels.plan import KernelPlan, apply_training

__all__ = ["KernelPlan", "apply_training"]
