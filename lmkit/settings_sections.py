"""The sections of the settings tree: each group of knobs, its fields, ranges and checks.

``lmkit/settings.py`` assembles them into the one ``Settings`` tree and resolves it from defaults,
YAML, the environment and flags; import the sections from there (``lmkit.settings``) as before.
Every field's ``description`` is the single source of its help text, in the CLI and the docs.
Like the tree, this module imports no torch.
"""

from __future__ import annotations

import math
import typing
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from lmkit.settings_mixture import DataSource, parse_data_path

# Upper bounds no real run reaches but that stop absurd values (a typo's extra zeros, 2**64)
# before anything is allocated; each message states its limit.
MAX_VOCAB = 2**24  # the largest vocabularies in use are ~2**18
MAX_WIDTH = 2**16  # d_model; d_ff may be a few times wider
MAX_STEPS = 10**10  # optimizer steps or intervals: centuries of training at 1 step/s
# torch takes seeds up to 2**64 - 1 and numpy any non-negative one; int64 leaves room for the
# seed + i of `generate --num-samples` and for any tool that stores the seed as int64.
MAX_SEED = 2**63 - 1


def _whole_number(v: Any) -> Any:
    """``2.0``, ``"1e5"`` or ``"16.0"`` as the integer they denote; anything else unchanged.

    YAML reads ``1e5`` as a string and flags and environment variables are strings, so integral
    spellings are accepted uniformly; non-integral ones are left for pydantic to refuse.
    """
    if isinstance(v, bool):
        raise ValueError("must be a whole number, not true/false")
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        try:
            d = Decimal(v.strip())
        except InvalidOperation:
            return v
        # The exponent bound keeps "1e999999999" from building a gigantic int.
        if d.is_finite() and d == d.to_integral_value() and d.adjusted() <= 40:
            return int(d)
    return v


class Conflict(ValueError):
    """A cross-field rule broken; ``fields`` lets the error name where each value came from."""

    def __init__(self, message: str, *fields: str):
        super().__init__(message)
        self.fields = fields


class Section(BaseModel):
    """Base for a settings section: unknown keys are errors, assignments are validated.

    Floats must be finite (``allow_inf_nan=False``): ``> 0`` alone lets ``inf`` through.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _normalise(cls, v: Any, info: ValidationInfo) -> Any:
        annotation = cls.model_fields[info.field_name].annotation
        args = typing.get_args(annotation)
        optional = type(None) in args
        kinds = {a for a in args if a is not type(None)} if optional else {annotation}
        if optional and isinstance(v, str):
            # An empty value (flag, variable or YAML) means "none", not "" or the current directory.
            word = v.strip().lower()
            if word == "" or (str not in kinds and word in ("none", "null", "~")):
                return None
        return _whole_number(v) if int in kinds else v


class ModelSettings(Section):
    """The transformer's shape. Changing any of these makes a different (incompatible) model.

    The one model config type: the model is built from it (``lmkit.model.ModelConfig`` is this
    class), checkpoints record its fields as ``model_config``, and its checks (ranges, heads
    dividing the width) are the only ones, so a config built in code is checked as one from YAML.
    """

    vocab_size: int = Field(50257, gt=0, le=MAX_VOCAB, description="Number of token ids the model embeds and predicts (GPT-2: 50257).")
    context_length: int = Field(1024, gt=0, le=2**20, description="Longest sequence the model sees; RoPE tables and the KV cache are sized to it.")
    d_model: int = Field(768, gt=0, le=MAX_WIDTH, description="Width of the residual stream.")
    num_layers: int = Field(12, gt=0, le=1024, description="Number of transformer blocks.")
    num_heads: int = Field(12, gt=0, le=1024, description="Attention heads per block; must divide d_model, and the head size must be even for RoPE.")
    d_ff: int = Field(3072, gt=0, le=4 * MAX_WIDTH, description="Hidden width of the SwiGLU feed-forward (about 8/3 x d_model keeps its cost equal to a 4x GELU MLP).")
    rope_theta: float = Field(10000.0, gt=0, le=1e12, description="RoPE base period; larger values suit longer contexts.")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelSettings:
        if self.d_model % self.num_heads:
            raise Conflict(f"num_heads ({self.num_heads}) must divide d_model ({self.d_model})", "num_heads", "d_model")
        if (self.d_model // self.num_heads) % 2:
            raise Conflict(f"head size d_model/num_heads = {self.d_model // self.num_heads} must be even for RoPE", "d_model", "num_heads")
        return self

    @property
    def head_dim(self) -> int:
        """Width of one attention head, ``d_model // num_heads``."""
        return self.d_model // self.num_heads

    @classmethod
    def from_settings(cls, model_settings: Any) -> ModelSettings:
        """A config from any object with the same attribute names (a copy of a ``ModelSettings``).

        Args:
            model_settings: an object exposing ``vocab_size``, ``context_length``, ``d_model``,
                ``num_layers``, ``num_heads``, ``d_ff`` and ``rope_theta``.

        Returns:
            A new, checked ``ModelSettings``.

        Raises:
            pydantic.ValidationError (a ``ValueError``): the values describe an impossible model.
        """
        return cls(**{name: getattr(model_settings, name) for name in cls.model_fields})


class DataSettings(Section):
    """Where the token data lives."""

    train_data_path: Path | list[DataSource] = Field(
        Path("data/owt_train.txt"), examples=["data/train.bin"],
        description="Training tokens: a dataset manifest (.json) or .bin from `lmkit tokenize encode`, a directory or glob of "
                    "them, or a text file of token ids; or a weighted mixture of those, name=path:weight joined by commas, "
                    "e.g. web=web.json:0.7,code=code.json:0.3 (YAML: a list of {name, path, weight}).",
    )
    val_data_path: Path | list[DataSource] | None = Field(
        Path("data/owt_valid.txt"), examples=["data/val.bin"],
        description="Validation tokens (same forms, mixtures too); empty to skip validation.",
    )
    align_documents: bool = Field(
        False, examples=[True],
        description="Start every training window at a document start (from the dataset's .idx document index, written by "
                    "`lmkit tokenize encode`), so no window opens mid-document; tokens of a document beyond one window are then "
                    "not trained on. Data without an index falls back to random windows (with a notice). Validation is unchanged.",
    )
    tokenizer_dir: Path | None = Field(None, examples=["tokenizers/tinyshakespeare"], description="Tokenizer directory recorded with the run so `lmkit generate` can decode; found from the data's metadata when unset.")

    @field_validator("train_data_path", "val_data_path", mode="before")
    @classmethod
    def _mixture(cls, v: Any) -> Any:
        # The mixture spelling (flag, variable) and YAML lists become sources here, with one
        # message per mistake; a plain path passes through unchanged.
        return parse_data_path(v)


class OptimSettings(Section):
    """The optimizer (AdamW, or Muon with AdamW) and the learning-rate schedule."""

    learning_rate: float = Field(1e-4, gt=0, description="Peak learning rate, reached at the end of warmup.")
    min_lr: float = Field(1e-5, ge=0, description="Floor of the cosine decay, held after lr_decay_iters.")
    warmup_iters: int = Field(1000, ge=0, le=MAX_STEPS, description="Steps of linear warmup from 0 to learning_rate.")
    lr_decay_iters: int = Field(100000, gt=0, le=MAX_STEPS, description="Step at which the cosine decay reaches min_lr (usually = max_iters).")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay, applied to matrices only (not gains or norms).")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW first-moment decay.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW second-moment decay (0.95 is steadier than 0.999 for LMs).")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    grad_clip: float = Field(1.0, ge=0, description="Clip the global gradient norm to this value; 0 disables clipping.")
    schedule: Literal["cosine", "wsd", "linear"] = Field(
        "cosine", examples=["wsd"],
        description="LR shape after warmup: cosine (to min_lr at lr_decay_iters), linear (straight to min_lr), or wsd "
                    "(warmup-stable-decay: hold learning_rate, then decay linearly over the last decay_fraction; a cooldown "
                    "can start from any checkpoint of the stable phase, see cooldown_from).",
    )
    decay_fraction: float = Field(
        0.2, gt=0, le=1,
        description="wsd only: share of the steps between warmup and lr_decay_iters spent decaying (0.1-0.2 in the WSD papers; 1 = linear).",
    )
    optimizer: Literal["adamw", "muon"] = Field(
        "adamw", examples=["muon"],
        description="adamw for everything, or muon: Muon (orthogonalised momentum, torch >= 2.9) on the blocks' 2-D matrices "
                    "(attention and SwiGLU weights) and AdamW on the embeddings, the LM head and the gains.",
    )
    muon_lr: float = Field(
        0.02, gt=0,
        description="Muon's peak learning rate (Keller Jordan's Muon and torch's examples use 0.02); the schedule scales it as it scales learning_rate.",
    )
    muon_momentum: float = Field(0.95, ge=0, lt=1, description="Muon's momentum (0.95 in Muon, Moonlight and modded-nanogpt).")
    muon_nesterov: bool = Field(True, examples=[False], description="Muon: Nesterov momentum (as in Muon and torch's default).")
    muon_ns_steps: int = Field(5, gt=0, le=99, description="Muon: Newton-Schulz iterations per step (5 in Muon and torch).")
    muon_weight_decay: float = Field(
        0.0, ge=0,
        description="Muon's decoupled weight decay, times its learning rate (0 as in Keller Jordan's Muon; Moonlight uses 0.1 with a smaller LR).",
    )
    muon_lr_adjust: Literal["original", "match_rms_adamw"] = Field(
        "original", examples=["match_rms_adamw"],
        description="Muon's per-matrix LR scale: original (sqrt(max(1, rows/cols)), Muon's and torch's default) or match_rms_adamw "
                    "(0.2 sqrt(max(rows, cols)), Moonlight's: then muon_lr is an AdamW-sized LR).",
    )

    @model_validator(mode="after")
    def _floor_below_peak(self) -> OptimSettings:
        if self.min_lr > self.learning_rate:
            raise Conflict(f"min_lr ({self.min_lr}) must not exceed learning_rate ({self.learning_rate})", "min_lr", "learning_rate")
        return self


class TrainSettings(Section):
    """The training loop."""

    batch_size: int = Field(32, gt=0, le=2**20, description="Sequences per optimizer step (split into grad_accum_steps micro-batches; summed over GPUs).")
    max_iters: int = Field(100000, gt=0, le=MAX_STEPS, description="Optimizer steps to train for.")
    grad_accum_steps: int = Field(1, gt=0, le=2**20, description="Micro-batches per optimizer step; must divide batch_size. Lowers memory at equal batch.")
    eval_interval: int = Field(100, gt=0, le=MAX_STEPS, description="Steps between validation passes.")
    eval_iters: int = Field(20, gt=0, le=10**6, description="Validation batches per pass (drawn with a fixed seed, so passes are comparable).")
    log_interval: int = Field(10, gt=0, le=MAX_STEPS, description="Steps between reading the loss back from the device (and logging it).")
    on_nan: Literal["stop", "skip"] = Field("stop", examples=["skip"], description="On a non-finite loss or gradient: stop (keep the last good checkpoint) or skip the step.")
    parallel: Literal["ddp", "fsdp"] = Field("ddp", examples=["fsdp"], description="Multi-GPU strategy under torchrun: replicate (ddp) or shard (fsdp).")
    activation_checkpointing: bool = Field(
        False, examples=[True],
        description="Recompute each block's activations in backward instead of keeping them: about a third more compute per step for much less activation memory, for models or batches that would not fit.",
    )

    # In-loop downstream evaluation (lmkit.harness): a few hundred documents of a task or two tell
    # whether the scores people compare models by move, at a fraction of a full evaluation's cost.
    eval_tasks: list[str] = Field(
        [], examples=["arc_easy,hellaswag"],
        description="lm-evaluation-harness tasks scored during training, on rank 0 (comma-separated; needs the eval extra and the run's tokenizer); logged as tasks/<task>/<metric>. Empty: none.",
    )
    eval_tasks_limit: int | None = Field(200, gt=0, le=10**7, examples=[50], description="Documents per task at each in-loop task evaluation (none: every document).")
    eval_tasks_interval: int | None = Field(None, gt=0, le=MAX_STEPS, examples=[1000], description="Steps between in-loop task evaluations (none: eval_interval); the last step always runs them.")
    eval_tasks_include_path: list[Path] = Field([], examples=["tasks/"], description="Directories of local YAML tasks that eval_tasks may name (comma-separated).")

    @field_validator("eval_tasks", "eval_tasks_include_path", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        # Flags and LMKIT_* variables give one string; YAML may give a list.
        if isinstance(v, str):
            return [part.strip() for part in v.split(",") if part.strip()]
        return v

    @model_validator(mode="after")
    def _accum_divides_batch(self) -> TrainSettings:
        if self.batch_size % self.grad_accum_steps:
            raise Conflict(f"grad_accum_steps ({self.grad_accum_steps}) must divide batch_size ({self.batch_size})", "grad_accum_steps", "batch_size")
        return self


class CheckpointSettings(Section):
    """Checkpoints and resume; checkpoint_dir is also the run directory (metrics, settings)."""

    checkpoint_dir: Path = Field(Path("checkpoints"), examples=["runs/small"], description="Run directory: checkpoints, latest.pt, metrics.jsonl, settings.yaml.")
    checkpoint_interval: int = Field(1000, gt=0, le=MAX_STEPS, description="Steps between checkpoints (a final one is always written).")
    keep_last: int | None = Field(None, gt=0, le=10**6, examples=[3], description="Keep only the newest K step checkpoints (latest.pt is always kept).")
    resume: str = Field("auto", examples=["never"], description="auto: resume from checkpoint_dir/latest.pt if present; never: start fresh; or a checkpoint path.")
    cooldown_from: Path | None = Field(
        None, examples=["runs/wsd/ckpt_3000.pt"],
        description="Start a new run (its own checkpoint_dir) from a checkpoint of a wsd run's stable phase, weights and optimizer "
                    "state both, and decay its learning rate to min_lr over cooldown_iters steps: a finished model from any saved step. "
                    "Settings left unset come from that checkpoint.",
    )
    cooldown_iters: int | None = Field(None, gt=0, le=MAX_STEPS, examples=[400], description="Steps of the cooldown_from decay (required with it).")
    init_from: Path | None = Field(
        None, examples=["runs/pretrain"],
        description="Start a new run from this checkpoint's weights (a file, or a run directory's latest.pt): fresh optimizer, schedule and step count; the architecture comes from it (model settings that differ are refused) and the data must use its tokenizer. If checkpoint_dir already holds this run's latest.pt, resume wins.",
    )

    @field_validator("init_from", "cooldown_from", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        # As for the data paths: an empty value means "none", not the current directory.
        return None if v in ("", "none", "None") else v

    @model_validator(mode="after")
    def _cooldown_pair(self) -> CheckpointSettings:
        if (self.cooldown_from is None) != (self.cooldown_iters is None):
            raise Conflict("cooldown_from and cooldown_iters go together: give both (the checkpoint and the steps of its decay)", "cooldown_from", "cooldown_iters")
        if self.cooldown_from is not None and self.init_from is not None:
            raise Conflict("cooldown_from and init_from both name where a new run starts; give one", "cooldown_from", "init_from")
        return self


class LoggingSettings(Section):
    """Metric sinks: console/dashboard, metrics.jsonl, Weights & Biases."""

    wandb: bool = Field(True, description="Log to Weights & Biases (falls back to offline mode without credentials or network).")
    wandb_project: str = Field("lmkit", examples=["my-lm"], description="W&B project.")
    wandb_name: str | None = Field(None, examples=["small-lr6e-4"], description="W&B run name (default: W&B picks one).")
    wandb_entity: str | None = Field(None, examples=["my-team"], description="W&B entity (user or team).")
    wandb_init_timeout: float = Field(
        5.0, gt=0, examples=[30.0],
        description="Seconds to wait for W&B to start online before logging offline instead (upload later with `wandb sync`); raise it on a slow link.",
    )
    dashboard: Literal["auto", "rich", "plain"] = Field("auto", examples=["plain"], description="auto: live dashboard on a terminal, plain log lines otherwise.")


class RuntimeSettings(Section):
    """Where and how the math runs."""

    device: Literal["auto", "cuda", "cpu"] = Field("auto", examples=["cpu"], description="auto picks CUDA when available.")
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto", examples=["float32"],
        description="Compute precision, the dtype matmuls run in: auto = bfloat16 on CUDA, float32 on CPU. Training and `lmkit eval` keep float32 weights and compute under autocast in it; `lmkit generate` holds the weights in it.",
    )
    compile: bool | None = Field(None, examples=[False], description="torch.compile the model (unset: on for CUDA, off for CPU).")
    compile_scope: Literal["auto", "model", "blocks"] = Field(
        "auto", examples=["blocks"],
        description="What torch.compile traces when compiling a training run: model = the whole model and loss as one graph (every block traced and compiled); blocks = one transformer block, whose compiled graph every identical block shares (the first step several times sooner, the glue between blocks eager: about 4 % fewer tokens/s at GPT-2 small on an H200); auto = blocks under FSDP and, in one process, for runs of at most 20,000 steps (max_iters), where the quicker start-up outweighs the slower steps; model otherwise.",
    )
    cuda_graphs: bool | None = Field(
        None, examples=[False],
        description="Replay the compiled training step as CUDA graphs, removing the per-kernel launch cost (unset: on when compiling on one CUDA device without gradient accumulation, the case where a graph can be replayed safely).",
    )
    fp32_residual: bool = Field(
        False, examples=[True],
        description="Under bfloat16 autocast, keep the residual stream between blocks in float32 (as nanoGPT and HF do) instead of bfloat16 (as Megatron and torchtitan do, and lmkit by default: about 3% faster at GPT-2 small, no loss difference measured). No effect in float32.",
    )
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Random seed: weights and data order when training, sampling when generating.")
    memory_check: bool = Field(
        True, examples=[False],
        description="Before building the model, estimate the memory a training step needs (weights, gradients, AdamW state, activations, logits) and refuse, naming what to lower, when it exceeds what the device has free. Off: try anyway.",
    )


class KernelSettings(Section):
    """Speed paths (lmkit/kernels/), each a faster twin of the plain model's torch code.

    Each is used only where it applies (the device, the precision) and never changes what is
    computed beyond rounding; off, the plain torch version runs. Recorded with every run.
    """

    fp32_weight_grad: bool = Field(
        True, examples=[False],
        description="Under bfloat16 autocast, every Linear multiplies in bfloat16 and writes its weight gradient in float32 straight from the GEMM, instead of rounding it to bfloat16 and casting it in another kernel. Off: plain F.linear under autocast.",
    )
    stacked_qkv: bool = Field(
        True, examples=[False],
        description="Training under bfloat16 autocast runs the q/k/v projections as one GEMM over their stacked weights, RoPE's backward writing the stacked gradient in one op (a Triton kernel on CUDA). Needs fp32_weight_grad. Off: three GEMMs.",
    )
    ce_kernel: bool = Field(
        True, examples=[False],
        description="The fused LM-head loss computes each chunk's cross-entropy and its gradient with one Triton kernel, in place over the logits (CUDA). Off: torch's version (compiled when the run compiles).",
    )
    adamw_kernel: bool = Field(
        True, examples=[False],
        description="AdamW updates each parameter group in one Triton launch (CUDA, plain fp32 parameters). Off: torch's fused AdamW.",
    )
    decode_attention_kernel: bool = Field(
        True, examples=[False],
        description="Generation runs each one-token step's RoPE, KV-cache write and attention as one Triton kernel (CUDA, head size a power of two). Off: SDPA over the masked cache.",
    )
    stacked_decode_weights: bool = Field(
        True, examples=[False],
        description="Generation multiplies by stacked copies of the q/k/v and w1/w3 weights (two matrix-vector products a block instead of five), made when decoding starts. Off: the separate projections.",
    )
    decode_tuning: bool = Field(
        True, examples=[False],
        description="Compiled decoding (generate --compile) lets Inductor tune its small kernels by coordinate descent: a slower first compile, faster tokens. Off: Inductor's defaults.",
    )
    decode_steps_per_replay: int = Field(
        4, gt=0, le=64, examples=[1],
        description="Compiled decoding captures this many decode steps in one CUDA graph: fewer launches per token, tokens streamed in bursts of this many.",
    )


class GenerateSettings(Section):
    """Sampling."""

    max_new_tokens: int = Field(200, gt=0, le=2**20, description="Tokens to sample after the prompt.")
    temperature: float = Field(0.8, ge=0, le=1e6, description="Softmax temperature; 0 means greedy, and so does anything below 0.001 (colder sampling differs from greedy only on exact ties, and dividing by a far smaller value overflows).")
    top_k: int | None = Field(None, gt=0, le=MAX_VOCAB, examples=[50], description="Sample only among the k most likely tokens.")
    top_p: float | None = Field(None, gt=0, le=1, examples=[0.9], description="Nucleus sampling: the smallest set of tokens with this total probability.")
    num_samples: int = Field(1, gt=0, le=10**4, description="Independent samples to draw.")
    window: Literal["slide", "stop"] = Field("slide", examples=["stop"], description="When prompt plus new tokens outgrow the model's context_length: slide (drop the oldest quarter of the window and re-read the rest, so generation goes on; a longer prompt keeps its last context_length tokens) or stop there (and refuse a longer prompt).")
