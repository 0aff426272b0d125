"""Task evaluation side by side: lmkit's harness model vs the harness's own ``hf`` model on lmkit's HF export.

Both score the same local multiple-choice task (HellaSwag-shaped: a context of ~``--ctx-words``
words, four endings of ~``--ending-words`` words, ``--docs`` documents, written by this script
from a fixed word list) through lm-evaluation-harness's ``evaluate``, in the same process, at the
same batch size, on the same checkpoint: a GPT-2-small-shaped model (random init, saved by
lmkit's checkpoint writer) and its ``lmkit ckpt export --format hf`` folder. lmkit's side is
``LmkitLM``, what ``lmkit eval --tasks`` runs (bf16 autocast on CUDA); the harness's side is
``HFLM`` in bfloat16 and in float32 (its default for float32 weights). Reported: examples/s of
each (the median of ``--repeats`` timed passes after an untimed warm-up; loading excluded), the
ratios, and whether the accuracies agree.

    uv run python benchmarks/eval_tasks.py                       # the H200 (CUDA)
    uv run python benchmarks/eval_tasks.py --tiny --device cpu   # a smoke run on a laptop

Needs the eval extra and accelerate (``uv sync --extra eval``; the dev group has both).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the of and to in is was for on that with as by at from his her an were are which this be has had it not "
         "people city river house water light music story world night school garden market winter summer morning "
         "walked opened carried found watched built painted followed answered gathered turned started finished "
         "quickly slowly quietly early later again never always together outside inside under above between").split()


def write_task(directory: Path, docs: int, ctx_words: int, ending_words: int, seed: int = 0) -> Path:
    """A HellaSwag-shaped multiple-choice task over a JSON Lines file; returns the directory."""
    rng = random.Random(seed)
    sentence = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    rows = [{"ctx": sentence(ctx_words), "endings": [" " + sentence(ending_words) for _ in range(4)], "label": rng.randrange(4)}
            for _ in range(docs)]
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "bench.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (directory / "bench.yaml").write_text(
        f"task: bench_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: '{{ctx}}'\ndoc_to_choice: '{{endings}}'\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    return directory


def make_checkpoint(root: Path, shape: dict, tokenizer_vocab: int, device: str) -> Path:
    """A random-init model of ``shape`` with a BPE tokenizer trained on the word list, saved as a checkpoint.

    One optimizer step at a learning rate of 1e-9 runs through ``lmkit train``'s code path, so the file is
    exactly what a run writes (settings, tokenizer record) with (practically) the initial weights.
    """
    from lmkit.api import encode, resolve_settings, train, train_tokenizer

    rng = random.Random(1)
    text = "\n<|endoftext|>\n".join(" ".join(rng.choice(WORDS) for _ in range(200)) for _ in range(400))
    (root / "corpus").mkdir(parents=True, exist_ok=True)
    (root / "corpus" / "train.txt").write_text(text)
    tok = train_tokenizer(root / "corpus" / "train.txt", tokenizer_vocab, ["<|endoftext|>"])
    tok.save(root / "tok")
    (data,) = encode(root / "tok", [root / "corpus" / "train.txt"], root / "data", name="train")
    settings = resolve_settings(overrides=dict(
        shape, batch_size=2, max_iters=1, learning_rate=1e-9, min_lr=0.0, warmup_iters=0, lr_decay_iters=1,
        eval_interval=1, eval_iters=1, log_interval=1, checkpoint_interval=1, train_data_path=str(data), val_data_path="",
        checkpoint_dir=str(root / "run"), wandb=False, device=device, compile=False, seed=0,
    ), environ={})
    train(settings)
    return root / "run" / "latest.pt"


def timed(lm, loaded, repeats: int) -> tuple[float, dict]:
    """Median seconds of ``repeats`` evaluations after one untimed warm-up, and the last results."""
    from lmkit.harness.run import run_loaded

    run_loaded(lm, loaded, limit=8)  # warm-up: CUDA context, kernels, allocator
    seconds, result = [], None
    for _ in range(repeats):
        result = run_loaded(lm, loaded)
        seconds.append(result.seconds)
    return statistics.median(seconds), result.results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--docs", type=int, default=400)
    p.add_argument("--ctx-words", type=int, default=60)
    p.add_argument("--ending-words", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="a 2-layer model and 40 documents (smoke test)")
    p.add_argument("--skip-fp32", action="store_true", help="leave out HFLM in float32")
    args = p.parse_args()
    shape = dict(vocab_size=50257, context_length=1024, d_model=768, num_layers=12, num_heads=12, d_ff=3072)
    if args.tiny:
        shape = dict(vocab_size=4096, context_length=256, d_model=64, num_layers=2, num_heads=4, d_ff=128)
        args.docs = min(args.docs, 40)

    from lm_eval.models.huggingface import HFLM

    from lmkit.export import export_checkpoint
    from lmkit.harness.model import LmkitLM
    from lmkit.harness.tasks import load_tasks, offline_hub, quiet_harness, task_manager

    with tempfile.TemporaryDirectory() as tmp, offline_hub(), quiet_harness():
        root = Path(tmp)
        tasks = write_task(root / "tasks", args.docs, args.ctx_words, args.ending_words)
        ckpt = make_checkpoint(root, shape, 2048 if not args.tiny else 512, args.device)
        export_checkpoint(ckpt, root / "hf", "hf")
        loaded = load_tasks(task_manager(["bench_mc"], [tasks]), ["bench_mc"])
        rows = []
        sides = [("lmkit (LmkitLM, bf16 autocast)" if args.device == "cuda" else "lmkit (LmkitLM, fp32)",
                  lambda: LmkitLM(ckpt, device=args.device, batch_size=args.batch_size))]
        sides.append(("harness hf, bfloat16", lambda: HFLM(pretrained=str(root / "hf"), dtype="bfloat16", device=args.device,
                                                            batch_size=args.batch_size)))
        if not args.skip_fp32:
            sides.append(("harness hf, float32", lambda: HFLM(pretrained=str(root / "hf"), dtype="float32", device=args.device,
                                                               batch_size=args.batch_size)))
        for name, build in sides:
            lm = build()
            seconds, results = timed(lm, loaded, args.repeats)
            rows.append((name, args.docs / seconds, seconds, results["results"]["bench_mc"]["acc,none"]))
            del lm
            if args.device == "cuda":
                import torch

                torch.cuda.empty_cache()
    ours = rows[0][1]
    print(f"bench_mc: {args.docs} docs x 4 endings, batch size {args.batch_size}, {args.device}, model {shape}")
    print(f"{'side':34} {'examples/s':>11} {'seconds':>8} {'acc':>7} {'lmkit x':>8}")
    for name, rate, seconds, acc in rows:
        print(f"{name:34} {rate:11.1f} {seconds:8.3f} {acc:7.4f} {ours / rate:8.2f}")
    print(json.dumps({"rows": [dict(zip(("side", "examples_per_s", "seconds", "acc"), r)) for r in rows]}), file=sys.stderr)


if __name__ == "__main__":
    main()
