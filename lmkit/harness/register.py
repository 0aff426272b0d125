"""Finding lm-evaluation-harness and telling it about ``--model lmkit``.

lm-eval finds models by name in its registry, which it fills from its own table; it has no
plugin discovery (no entry-point group), so a process must register ``lmkit`` before asking
for it. ``register()`` does, lazily (the class is imported on first use). Two ways in:

- Python: ``lmkit.harness.register()`` and then ``lm_eval.simple_evaluate(model="lmkit",
  model_args="checkpoint=runs/demo")``, or pass ``LmkitLM(...)`` itself as ``model``.
- The harness's own command line: ``python -m lmkit.harness --model lmkit --model_args
  checkpoint=runs/demo --tasks hellaswag`` is ``lm_eval`` with lmkit registered.
"""

from __future__ import annotations

from types import ModuleType

from lmkit.errors import ConfigError

INSTALL_HINT = "uv sync --extra eval, or pip install -e '.[eval]' in a clone"
MODEL_NAME = "lmkit"
_TARGET = "lmkit.harness.model:LmkitLM"


class MissingHarnessError(ConfigError):
    """lm-eval is not installed."""


def require_lm_eval() -> ModuleType:
    """Import ``lm_eval``, or say in one line how to install it.

    Returns:
        The ``lm_eval`` module.

    Raises:
        MissingHarnessError: it is not installed.
    """
    try:
        import lm_eval
    except ImportError as e:
        raise MissingHarnessError(
            f"task evaluation needs lm-evaluation-harness ({e.name or 'lm_eval'} is not installed): {INSTALL_HINT}"
        ) from None
    return lm_eval


def register() -> None:
    """Register ``lmkit`` in lm-eval's model registry (once; later calls do nothing).

    Raises:
        MissingHarnessError: lm-eval is not installed.
    """
    require_lm_eval()
    from lm_eval.api.registry import model_registry

    import lm_eval.models  # noqa: F401  (fills the registry with the harness's own models first)

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=_TARGET)
