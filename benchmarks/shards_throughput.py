"""Does a 100+-shard dataset feed the trainer as fast as one file? tokens/s of both in one process.

Writes one corpus of random ids twice: as one ``.bin`` (+ ``.json``) and as ``--shards`` shards
with a manifest (issue #21's dataset format), then, alternating the two forms (A B A B ...) so
drift on the machine hits both alike:
- times the ``BatchLoader`` alone (no prefetch): milliseconds to build one step's batch;
- trains the same model on each form through ``Trainer`` and takes the median tokens/s of the
  log windows after warm-up (compilation, first page faults).
The corpus is a few times larger than the shards' LRU of memory maps (64 open), so windows keep
opening and dropping maps as a long run over a big dataset does.

    python benchmarks/shards_throughput.py                 # GPT-2-small shape, CUDA
    python benchmarks/shards_throughput.py --quick         # tiny model on CPU, a minute
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lmkit.data.loader import BatchLoader, TokenDataset
from lmkit.data.tokens import TokenFileMeta, write_tokens
from lmkit.observe.base import MultiSink
from lmkit.settings import resolve_settings
from lmkit.training.trainer import Trainer

GPT2_SMALL = dict(vocab_size=50304, d_model=768, num_layers=12, num_heads=12, d_ff=2048, context_length=1024, batch_size=16)
TINY = dict(vocab_size=512, d_model=64, num_layers=2, num_heads=4, d_ff=128, context_length=64, batch_size=16)


class Rates:
    """A metrics sink keeping tokens/s of every log window."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    def start(self, info) -> None:
        pass

    def log(self, step: int, metrics: dict) -> None:
        if "tokens_per_s" in metrics:
            self.rates.append(metrics["tokens_per_s"])

    def event(self, message: str, kind: str = "info") -> None:
        pass

    def close(self, status: str = "finished") -> None:
        pass


def write_corpus(out: Path, tokens: int, shards: int, vocab: int) -> tuple[Path, Path]:
    """The same random ids as ``one/corpus.bin`` and as a manifest of ``shards`` shards."""
    ids = np.random.default_rng(0).integers(0, vocab, tokens).astype(np.uint16)
    meta = dict(dtype="uint16", num_tokens=0, vocab_size=vocab, tokenizer_hash="sha256:bench", tokenizer_dir=None)
    one = out / "one" / "corpus.bin"
    one.parent.mkdir(parents=True)
    write_tokens(one, ids, TokenFileMeta(**meta))
    sharded = out / "sharded"
    sharded.mkdir()
    entries = []
    for k, part in enumerate(np.array_split(ids, shards)):
        path = sharded / f"corpus-{k:05d}.bin"
        write_tokens(path, part, TokenFileMeta(**meta))
        data = path.read_bytes()
        entries.append({"file": path.name, "num_tokens": int(part.size), "num_documents": 0, "bytes": len(data),
                        "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {"format": "lmkit-dataset", "version": 1, "name": "corpus", "dtype": "uint16", "vocab_size": vocab,
                "tokenizer_hash": "sha256:bench", "num_tokens": tokens, "num_documents": 0, "source_bytes": 0,
                "shards": entries}
    (sharded / "corpus.json").write_text(json.dumps(manifest))
    return one, sharded / "corpus.json"


def loader_ms(path: Path, shape: dict, device: str, steps: int) -> float:
    """Median milliseconds to build one step's batch (windows cut, ids checked, copied to device)."""
    ds = TokenDataset(path, shape["context_length"], shape["vocab_size"])
    loader = BatchLoader(ds, shape["batch_size"], 1, device, seed=0, prefetch=False)
    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        (x, _), = loader.step_batches(step)
        if x.is_cuda:
            import torch

            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def trainer_rate(path: Path, shape: dict, device: str, steps: int, log_interval: int, run_dir: Path) -> float:
    """Median tokens/s over the log windows after the first two (compile and warm-up)."""
    import torch

    torch._dynamo.reset()  # every run compiles alike, instead of the second reusing the first's graphs
    s = resolve_settings(overrides=dict(shape, max_iters=steps, warmup_iters=2, lr_decay_iters=steps, log_interval=log_interval,
                                        eval_interval=10**6, checkpoint_interval=10**6, train_data_path=str(path), val_data_path="",
                                        checkpoint_dir=str(run_dir), wandb=False, device=device), environ={})
    rates = Rates()
    Trainer(s, MultiSink([rates])).run()
    return statistics.median(rates.rates[2:] or rates.rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model on CPU, small corpus")
    parser.add_argument("--device", default=None, help="default: cuda, or cpu with --quick")
    parser.add_argument("--tokens", type=int, default=None, help="corpus size (default 256M, 4M with --quick)")
    parser.add_argument("--shards", type=int, default=128)
    parser.add_argument("--steps", type=int, default=None, help="trainer steps per run (default 100, 60 with --quick)")
    parser.add_argument("--rounds", type=int, default=2, help="A/B rounds")
    args = parser.parse_args()
    shape = TINY if args.quick else GPT2_SMALL
    device = args.device or ("cpu" if args.quick else "cuda")
    tokens = args.tokens or (4_000_000 if args.quick else 256_000_000)
    steps = args.steps or (60 if args.quick else 100)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        one, sharded = write_corpus(Path(tmp), tokens, args.shards, shape["vocab_size"])
        print(f"corpus: {tokens:,} tokens, one file and {args.shards} shards, written in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        results: dict[str, dict[str, list[float]]] = {"one file": {"loader": [], "trainer": []}, f"{args.shards} shards": {"loader": [], "trainer": []}}
        for r in range(args.rounds):
            for (label, path) in zip(results, (one, sharded)):
                results[label]["loader"].append(loader_ms(path, shape, device, 200))
                results[label]["trainer"].append(trainer_rate(path, shape, device, steps, 10, Path(tmp) / f"run-{r}-{len(label)}"))
                print(f"round {r + 1}: {label}: loader {results[label]['loader'][-1]:.3f} ms/step, "
                      f"trainer {results[label]['trainer'][-1]:,.0f} tok/s", file=sys.stderr)
    print(f"\n{'data':<12} {'loader ms/step':>15} {'trainer tok/s':>15}   ({device}, {'tiny' if args.quick else 'GPT-2 small'}, "
          f"B={shape['batch_size']}, T={shape['context_length']})")
    for label, r in results.items():
        print(f"{label:<12} {statistics.median(r['loader']):>15.3f} {statistics.median(r['trainer']):>15,.0f}")
    a, b = (statistics.median(r["trainer"]) for r in results.values())
    print(f"\nsharded / one file tokens/s: {b / a:.4f}")


if __name__ == "__main__":
    main()
