"""The transformer's shape: ``ModelConfig`` is ``lmkit.settings.ModelSettings``, one type.

The settings section a run is configured with is the config the model is built from, so there
is one list of fields, one set of defaults and one place that checks them (ranges, heads that
divide ``d_model``, an even head size for RoPE). ``lmkit.settings`` imports no torch, so the model
package may depend on it without the settings tree depending on torch.
"""

from __future__ import annotations

from lmkit.settings import ModelSettings as ModelConfig

__all__ = ["ModelConfig"]
