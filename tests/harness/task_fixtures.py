"""Local lm-evaluation-harness tasks for the tests, written under tmp_path (no network, no HF cache).

``write_tasks(dir)`` writes two YAML tasks over JSON Lines files next to them:

- ``tiny_mc``: multiple choice (acc, acc_norm) over sentences of ``trained_model.TEXT``, so the
  tiny trained model gets some right;
- ``tiny_text``: loglikelihood_rolling (word/byte perplexity, bits per byte) over short texts,
  one longer than the tiny model's context of 32 tokens, so it spans several windows.
"""

from __future__ import annotations

import json
from pathlib import Path

MC_DOCS = [
    {"question": "The cat sat on the", "choices": [" mat.", " log.", " tree;"], "answer": 0},
    {"question": "The dog sat on the", "choices": [" mat.", " log.", " up."], "answer": 1},
    {"question": "A bird sang in the", "choices": [" tree;", " mat.", " waves."], "answer": 0},
    {"question": "the cat looked", "choices": [" up.", " down.", " mat."], "answer": 0},
    {"question": "Caf\u00e9 cr\u00e8me and", "choices": [" \U0001f44b waves.", " the dog.", " log."], "answer": 0},
    {"question": "The", "choices": [" cat", " bird sang"], "answer": 0},
]
TEXTS = [
    "The cat sat on the mat. The dog sat on the log.",
    "A bird sang in the tree; the cat looked up.\n" * 4,
    "Caf\u00e9 cr\u00e8me and \U0001f44b waves.",
]


def _yaml(task: str, data: Path, body: str) -> str:
    return f"task: {task}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n{body}"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_tasks(directory: Path, mc_docs: list[dict] = MC_DOCS, texts: list[str] = TEXTS) -> Path:
    """Write ``tiny_mc`` and ``tiny_text`` (YAML + JSONL) into ``directory``; returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    mc = write_jsonl(directory / "mc.jsonl", mc_docs)
    text = write_jsonl(directory / "text.jsonl", [{"text": t} for t in texts])
    (directory / "mc.yaml").write_text(_yaml("tiny_mc", mc, (
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )))
    (directory / "text.yaml").write_text(_yaml("tiny_text", text, (
        "output_type: loglikelihood_rolling\n"
        'doc_to_text: ""\n'
        'doc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n"
    )))
    return directory


def write_task(directory: Path, name: str, yaml_text: str) -> Path:
    """One more YAML task file (for the bad-input cases); returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(yaml_text)
    return path
