"""Does a bf16 residual stream train as well as an fp32 one? A paired A/B through `lmkit train`.

Trains the GPT-2-small shape (context shortened) on real text twice per seed -- once with the
residual stream in fp32 (``fp32_residual=True``) and once in bf16 -- with everything else equal
(weights, data order, schedule), and prints the validation and training losses of each pair.
The seed-to-seed spread of the fp32 arm is the yardstick the paired differences are read
against. Needs a CUDA device (bf16 autocast) and token files from `lmkit tokenize encode`.

    lmkit tokenize encode -i train.txt -o tok/ --vocab gpt2_vocab.json --merges gpt2_merges.txt
    lmkit tokenize encode -i val.txt -o tok/ --vocab gpt2_vocab.json --merges gpt2_merges.txt
    python benchmarks/residual_ab.py --data tok/ --seeds 1,2,3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from lmkit.api import resolve_settings, train
from lmkit.observe.base import MultiSink

GPT2_SMALL = dict(num_layers=12, d_model=768, num_heads=12, d_ff=2048, vocab_size=50304)


class Losses:
    """A metrics sink keeping the training and validation losses by step."""

    def __init__(self) -> None:
        self.train: dict[int, float] = {}
        self.val: dict[int, float] = {}

    def start(self, info) -> None:
        pass

    def log(self, step: int, metrics: dict) -> None:
        if "loss" in metrics:
            self.train[step] = metrics["loss"]
        if "val_loss" in metrics:
            self.val[step] = metrics["val_loss"]

    def event(self, message: str, kind: str = "info") -> None:
        pass

    def close(self, status: str = "finished") -> None:
        pass


def run(args: argparse.Namespace, seed: int, fp32_residual: bool, run_dir: Path) -> dict:
    """One training run; its losses and wall time."""
    settings = resolve_settings(
        overrides=dict(
            GPT2_SMALL, context_length=args.context, batch_size=args.batch, max_iters=args.steps,
            learning_rate=6e-4, min_lr=6e-5, warmup_iters=args.steps // 10, lr_decay_iters=args.steps,
            eval_interval=args.eval_interval, eval_iters=20, log_interval=5, checkpoint_interval=args.steps,
            train_data_path=str(args.data / "train.bin"), val_data_path=str(args.data / "val.bin"),
            checkpoint_dir=str(run_dir), resume="never", wandb=False, seed=seed, compile=args.compile,
            fp32_residual=fp32_residual,
        ),
        environ={},
    )
    sink = Losses()
    t0 = time.perf_counter()
    train(settings, MultiSink([sink]))
    wall = time.perf_counter() - t0
    tail = [v for s, v in sink.train.items() if s > args.steps - 50]
    return {
        "seed": seed, "fp32_residual": fp32_residual, "wall_s": wall, "val": sink.val,
        "best_val": min(sink.val.values()), "final_val": sink.val[max(sink.val)],
        "train_last50": statistics.fmean(tail),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="directory with train.bin and val.bin")
    p.add_argument("--seeds", default="1,2,3", help="comma list; each seed runs both arms")
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--eval-interval", type=int, default=25)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--json", type=Path, default=None, help="write every run's losses here")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            for fp32 in (True, False):
                row = run(args, seed, fp32, Path(tmp) / f"s{seed}-{'fp32' if fp32 else 'bf16'}")
                rows.append(row)
                print(f"seed {seed} {'fp32' if fp32 else 'bf16'} residual: best val {row['best_val']:.4f}, "
                      f"final val {row['final_val']:.4f}, train (last 50 steps) {row['train_last50']:.4f}, "
                      f"{row['wall_s']:.0f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print("\n| metric | fp32 stream (mean, seed sd) | bf16 stream | paired diff bf16-fp32 (mean, each seed) |")
    print("| --- | --- | --- | --- |")
    for key in ("best_val", "final_val", "train_last50"):
        a = [r[key] for r in rows if r["fp32_residual"]]
        b = [r[key] for r in rows if not r["fp32_residual"]]
        sd = statistics.stdev(a) if len(a) > 1 else float("nan")
        diffs = [y - x for x, y in zip(a, b)]
        print(f"| {key} | {statistics.fmean(a):.4f} (sd {sd:.4f}) | {statistics.fmean(b):.4f} | "
              f"{statistics.fmean(diffs):+.4f} ({', '.join(f'{d:+.4f}' for d in diffs)}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
