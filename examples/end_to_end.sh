#!/usr/bin/env bash
# From a text file to generated samples, on a CPU, in a few minutes:
#   split -> lmkit tokenize train -> lmkit tokenize encode -> lmkit train -> lmkit generate -> lmkit eval
#
# Usage:
#   bash examples/end_to_end.sh [TEXT_FILE] [OUT_DIR]
#
#   TEXT_FILE  UTF-8 text, at least ~50 KB (default: ../shared/data/tinyshakespeare.txt when it
#              exists, else the CPython documentation that ships with Python, as in `lmkit train --demo`)
#   OUT_DIR    where everything goes (default: a new temporary directory); it ends up holding
#              data/{train,val}.{txt,bin,json}, tok/, run/ (checkpoints, metrics.jsonl),
#              samples.txt and eval.json
#
# Knobs, as environment variables (defaults in brackets):
#   MAX_ITERS [300]  training steps        VOCAB_SIZE [1024]  tokenizer vocabulary
#   EVAL_ITERS [10]  batches per eval      NEW_TOKENS [200]   tokens per sample
#   DEVICE [auto]    cpu, cuda or auto     PROMPT [the first line of the validation text]
#   LMKIT            how to run lmkit [uv run lmkit in this repository, else lmkit on PATH]
#   PYTHON           the Python for the small helper steps, with LMKIT [python3]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
text=${1:-}
out=${2:-$(mktemp -d "${TMPDIR:-/tmp}/lmkit-e2e.XXXXXX")}
max_iters=${MAX_ITERS:-300}
vocab_size=${VOCAB_SIZE:-1024}

# Run lmkit (and Python) from this checkout's environment when uv is here, else from PATH.
if [[ -n ${LMKIT:-} ]]; then
    read -r -a lmkit <<< "$LMKIT"
    python=("${PYTHON:-python3}")
elif command -v uv > /dev/null && [[ -f $repo/pyproject.toml ]]; then
    lmkit=(uv run --quiet --project "$repo" lmkit)
    python=(uv run --quiet --project "$repo" python)
else
    lmkit=(lmkit)
    python=("${PYTHON:-python3}")
fi

mkdir -p "$out/data"
if [[ -t 2 ]]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain" >&2; }

step "text -> $out/data/{train,val}.txt"
if [[ -z $text ]]; then
    shared="$repo/../shared/data/tinyshakespeare.txt"
    if [[ -f $shared ]]; then
        text=$shared
    else  # the pydoc topics: ~470 KB of English prose and code that every Python install has
        text="$out/pydoc.txt"
        "${python[@]}" -c 'from pydoc_data.topics import topics
import sys
open(sys.argv[1], "w", encoding="utf-8").write("\n\n".join(topics[k].strip() for k in sorted(topics)))' "$text"
    fi
fi
if [[ ! -f $text ]]; then echo "end_to_end.sh: $text: no such file" >&2; exit 2; fi
# Hold out the last 10%, cut at a line break so no line is split between the two files.
"${python[@]}" - "$text" "$out/data" <<'EOF'
import sys
from pathlib import Path

text = Path(sys.argv[1]).read_text(encoding="utf-8")
cut = text.rfind("\n", 0, int(len(text) * 0.9)) + 1 or int(len(text) * 0.9)
Path(sys.argv[2], "train.txt").write_text(text[:cut], encoding="utf-8")
Path(sys.argv[2], "val.txt").write_text(text[cut:], encoding="utf-8")
print(f"{sys.argv[1]}: {len(text):,} characters, {cut:,} for training, {len(text) - cut:,} held out", file=sys.stderr)
EOF

step "lmkit tokenize train (vocabulary $vocab_size)"
"${lmkit[@]}" tokenize train --input "$out/data/train.txt" --vocab-size "$vocab_size" \
    --special-token '<|endoftext|>' --output "$out/tok"

step "lmkit tokenize encode"
# One dataset per split: a directory given as --input would make one dataset of both files.
for split in train val; do
    "${lmkit[@]}" tokenize encode --tokenizer "$out/tok" --input "$out/data/$split.txt" --output "$out/data"
done

step "lmkit train ($max_iters steps of examples/configs/tiny_cpu.yaml)"
interval=$(( max_iters < 100 ? max_iters : 100 ))
warmup=$(( max_iters / 10 < 50 ? max_iters / 10 : 50 ))
"${lmkit[@]}" train --config "$repo/examples/configs/tiny_cpu.yaml" --vocab-size "$vocab_size" \
    --train-data-path "$out/data/train.bin" --val-data-path "$out/data/val.bin" \
    --checkpoint-dir "$out/run" --resume never --no-wandb --device "${DEVICE:-auto}" \
    --max-iters "$max_iters" --lr-decay-iters "$max_iters" --warmup-iters "$warmup" \
    --eval-interval "$interval" --eval-iters "${EVAL_ITERS:-10}" --checkpoint-interval "$max_iters"

# The default prompt: the first 40 characters of the first non-blank held-out line (characters,
# not bytes: cutting a UTF-8 character in half would make an invalid prompt).
prompt=${PROMPT:-$("${python[@]}" -c 'import sys
lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
print(next((l.strip()[:40] for l in lines if l.strip()), "The"))' "$out/data/val.txt")}
step "lmkit generate (prompt: $prompt)"
"${lmkit[@]}" generate --checkpoint "$out/run" --prompt "$prompt" --num-samples 2 \
    --max-new-tokens "${NEW_TOKENS:-200}" --seed 0 --device "${DEVICE:-auto}" | tee "$out/samples.txt"

step "lmkit eval on the held-out text"
"${lmkit[@]}" eval --checkpoint "$out/run" --data "$out/data/val.bin" --device "${DEVICE:-auto}" --json \
    > "$out/eval.json"
"${python[@]}" -c 'import json, sys
r = json.load(open(sys.argv[1]))
bpb = "n/a" if r["bits_per_byte"] is None else "%.4f" % r["bits_per_byte"]
print("val loss %.4f, perplexity %.2f, bits/byte %s over %s tokens" % (r["loss"], r["perplexity"], bpb, format(r["tokens"], ",")))' \
    "$out/eval.json"

step "done"
echo "everything is in $out: samples.txt, eval.json, run/ (try: lmkit ckpt inspect $out/run)" >&2
