"""``LmkitLM``: lmkit checkpoints as an lm-evaluation-harness model (``--model lmkit``).

This module imports ``lm_eval`` (the optional ``eval`` extra); ``lmkit.harness.register``
imports it only when asked to. The three request types map onto lmkit as follows:

- ``loglikelihood``: the harness splits each (context, continuation) text pair into tokens
  (``TemplateLM``: trailing spaces of the context move to the continuation; an empty context
  becomes end-of-text), and ``lmkit.harness.scoring.score_pairs`` scores them in batches sorted
  by length, left-truncating contexts longer than the model's (see there).
- ``loglikelihood_rolling``: the text is cut into the harness's disjoint windows of
  ``max_length`` predictions (the first conditioned on end-of-text), the same cut ``lmkit eval``
  makes of a token file that starts with end-of-text, and the windows' scores are summed.
- ``generate_until``: lmkit's KV-cached ``generate``, greedy unless the task asks to sample,
  ending at the task's stop strings or at end-of-text (``lmkit.harness.until``).

End-of-text: ``<|endoftext|>`` of the checkpoint's tokenizer is the harness's ``eot_token_id``
and prefix token; a tokenizer without it can score requests that have a context but not
rolling windows or empty contexts (a ``TokenizerError`` says so).

Precision: weights stay float32 and the forward runs under autocast in ``dtype`` (``auto``:
bfloat16 on CUDA, float32 on CPU), as ``lmkit eval`` does; log-softmax is float32 either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM

from lmkit.errors import ConfigError, TokenizerError
from lmkit.harness.scoring import score_pairs
from lmkit.harness.until import UntilRequest, generate_until, truncate_prompt
from lmkit.inference import EOT, load_trained
from lmkit.model import TransformerLM
from lmkit.tokenizer import Tokenizer

DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_GEN_TOKS = 256


class LmkitLM(TemplateLM):
    """An lmkit checkpoint (or a live model) as an ``lm_eval`` language model.

    ``lm_eval --model lmkit --model_args checkpoint=runs/demo`` builds it through
    ``create_from_arg_string``; ``LmkitLM.from_model`` wraps a model already in memory (the
    trainer's in-loop evaluation).

    Args:
        checkpoint: checkpoint file or run directory (``pretrained`` is accepted as a synonym,
            for habits from ``--model hf``).
        device: ``auto``, ``cuda`` (also ``cuda:0``) or ``cpu``.
        dtype: compute dtype: ``auto``, ``bfloat16`` or ``float32`` (weights stay float32).
        batch_size: distinct inputs per forward pass, or ``auto`` (sized from free memory).
        max_length: the longest input read (default and maximum: the model's context_length).
        max_gen_toks: default cap on generated tokens when a task gives none.
        tokenizer: tokenizer directory to use instead of the one the checkpoint records.
        compile: capture the decode step in a CUDA graph (default: on for CUDA).

    Raises:
        ConfigError: no checkpoint, an unknown argument, a bad batch size or max_length.
        CheckpointError, TokenizerError: as ``lmkit.inference.load_trained`` (a tokenizer is
            required: the harness gives text).
    """

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int | str = DEFAULT_BATCH_SIZE,
        max_length: int | None = None,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        tokenizer: str | Path | None = None,
        compile: bool | None = None,
        pretrained: str | Path | None = None,
        max_batch_size: int | None = None,  # passed by the harness for ``auto``; a cap here
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise ConfigError(
                f"--model_args: unknown argument(s) {', '.join(sorted(unknown))} for --model lmkit; "
                "known: checkpoint, device, dtype, batch_size, max_length, max_gen_toks, tokenizer, compile"
            )
        checkpoint = checkpoint or pretrained
        if not checkpoint:
            raise ConfigError("--model_args: give the checkpoint, e.g. --model_args checkpoint=runs/demo/latest.pt")
        device = "cuda" if str(device).startswith("cuda") else str(device)
        trained = load_trained(checkpoint, device, "float32", tokenizer_dir=tokenizer, tokenizer="required", compile=compile)
        compute = None
        if dtype != "float32":
            from lmkit.training.runtime import resolve_runtime

            compute = resolve_runtime(device, dtype, False).dtype
        self._setup(trained.model, trained.tokenizer, autocast_dtype=compute, batch_size=batch_size, max_length=max_length,
                    max_gen_toks=max_gen_toks, compile_decode=trained.runtime.compile, max_batch_size=max_batch_size,
                    checkpoint=str(trained.path))

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict[str, Any] | None = None) -> LmkitLM:
        """Build from ``--model_args`` (a dict), which win over the harness's own ``--device`` and
        ``--batch_size`` (its CLI sends ``device=cuda:0`` unless told otherwise)."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict[str, Any] | None = None) -> LmkitLM:
        """Build from ``--model_args checkpoint=...,device=cpu``; see ``create_from_arg_obj``."""
        return cls.create_from_arg_obj(lm_utils.simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def from_model(
        cls,
        model: TransformerLM,
        tokenizer: Tokenizer,
        *,
        autocast_dtype: torch.dtype | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_length: int | None = None,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        compile_decode: bool = False,
        checkpoint: str | None = None,
    ) -> LmkitLM:
        """Wrap a model already in memory (in eval mode for the duration of the evaluation).

        Args:
            model: the model, on its device.
            tokenizer: the tokenizer it was trained with.
            autocast_dtype: run forwards under autocast in this dtype (None: the weights').
            batch_size, max_length, max_gen_toks: as for the constructor.
            compile_decode: decode with the CUDA-graph step.
            checkpoint: recorded in the results' config only.

        Returns:
            The harness model.
        """
        lm = cls.__new__(cls)
        TemplateLM.__init__(lm)
        lm._setup(model, tokenizer, autocast_dtype=autocast_dtype, batch_size=batch_size, max_length=max_length,
                  max_gen_toks=max_gen_toks, compile_decode=compile_decode, max_batch_size=None, checkpoint=checkpoint)
        return lm

    def _setup(self, model: TransformerLM, tokenizer: Tokenizer, *, autocast_dtype: torch.dtype | None, batch_size: int | str,
               max_length: int | None, max_gen_toks: int, compile_decode: bool, max_batch_size: int | None,
               checkpoint: str | None) -> None:
        # The constructor's and from_model's common part, once a model is in hand.
        self.model, self.lmkit_tokenizer = model, tokenizer
        self.autocast_dtype, self.compile_decode, self.checkpoint = autocast_dtype, compile_decode, checkpoint
        ctx = model.config.context_length
        self._max_length = ctx if max_length is None else int(max_length)
        if not 1 <= self._max_length <= ctx:
            raise ConfigError(f"--model_args max_length={max_length}: must be in 1..{ctx} (the model's context_length)")
        self._max_gen_toks = int(max_gen_toks)
        if self._max_gen_toks < 1:
            raise ConfigError(f"--model_args max_gen_toks={max_gen_toks}: must be >= 1")
        self._batch_size = self._resolve_batch_size(batch_size, max_batch_size)
        self._device = next(model.parameters()).device

    def _resolve_batch_size(self, batch_size: int | str, cap: int | None) -> int:
        """An int batch size; ``auto`` (or ``auto:N``): the batches of full-length inputs that fit in
        half the free memory, at most ``cap`` (default 256)."""
        text = str(batch_size)
        if text.startswith("auto"):
            from lmkit.evaluation import available_bytes, batch_bytes

            avail = available_bytes(next(self.model.parameters()).device)
            per = batch_bytes(self.model.config, 1)
            fits = 256 if avail is None else max(1, avail // 2 // per)
            return int(min(fits, cap or 256))
        try:
            size = int(text)
        except ValueError:
            size = 0
        if size < 1:
            raise ConfigError(f"batch_size={batch_size!r}: give a whole number >= 1, or auto")
        return size

    # ---- what the harness asks about the model -------------------------------------------

    @property
    def eot_token_id(self) -> int:
        """Id of ``<|endoftext|>``: the harness's end-of-text and empty-context prefix."""
        if EOT not in self.lmkit_tokenizer.special_tokens:
            raise TokenizerError(
                f"the tokenizer has no {EOT} token, which this task needs (rolling log-likelihood or an empty context "
                "starts from it); use a model trained with a tokenizer that has it"
            )
        return self.lmkit_tokenizer.token_id(EOT)

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        return f"lmkit-{self.lmkit_tokenizer.hash}"

    def get_model_info(self) -> dict[str, Any]:
        """What the harness records about the model in its results' ``config``."""
        return {"model_checkpoint": self.checkpoint, "model_num_parameters": self.model.num_params(),
                "model_dtype": str(self.autocast_dtype or next(self.model.parameters()).dtype).removeprefix("torch.")}

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Token ids of ``string`` (lmkit adds no special tokens; one in the text becomes its id).

        Through the tiktoken-core engine where it gives exactly ``Tokenizer.encode``'s ids (it is
        tested to), since the harness encodes every context and continuation of every request.
        """
        return self.lmkit_tokenizer.encode_array(string).tolist()

    def tok_decode(self, tokens: list[int], **kwargs: Any) -> str:
        """Text of ``tokens``."""
        return self.lmkit_tokenizer.decode(tokens)

    # ---- the three request types ----------------------------------------------------------

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        """Score ``((context, continuation), context_ids, continuation_ids)`` requests."""
        with _eval_mode(self.model):
            results = score_pairs(self.model, [(ctx, cont) for _, ctx, cont in requests], max_length=self.max_length,
                                  batch_size=self.batch_size, autocast_dtype=self.autocast_dtype)
        for (key, _, _), result in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Total log-likelihood of each request's text, over disjoint windows of ``max_length``."""
        windows, owners = [], []
        for n, (text,) in enumerate(req.args for req in requests):
            ids = self.tok_encode(text)
            for window in lm_utils.get_rolling_token_windows(ids, self.eot_token_id if ids else 0, self.max_length, 1):
                windows.append(lm_utils.make_disjoint_window(window))
                owners.append(n)
        with _eval_mode(self.model):
            scores = score_pairs(self.model, windows, max_length=self.max_length, batch_size=self.batch_size,
                                 autocast_dtype=self.autocast_dtype)
        totals = [0.0] * len(requests)
        for n, (logprob, _) in zip(owners, scores):
            totals[n] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), total)
        return totals

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations (sampled when the task sets ``do_sample``), cut at the stop strings."""
        batch = []
        for context, gen_kwargs in (req.args for req in requests):
            kwargs = dict(gen_kwargs or {})
            until = kwargs.get("until") or [self.tok_decode([self.eot_token_id])]
            until = (until,) if isinstance(until, str) else tuple(until)
            new = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
            ids = self.tok_encode(context) or [self.eot_token_id]
            batch.append(UntilRequest(truncate_prompt(ids, self.max_length, new), until, new, temperature))
        eot = self.lmkit_tokenizer.token_id(EOT) if EOT in self.lmkit_tokenizer.special_tokens else None
        # No autocast here: the KV cache takes the weights' dtype, and the decode step (and its
        # CUDA graph) is built for one dtype throughout.
        with _eval_mode(self.model):
            texts = generate_until(self.model, self.lmkit_tokenizer, batch, eot_id=eot, batch_size=self.batch_size,
                                   compile_decode=self.compile_decode)
        for req, text in zip(requests, texts):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return texts


class _eval_mode:
    """Put a model in eval mode for a block and restore its mode after (a model being trained)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)
