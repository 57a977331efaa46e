#!/usr/bin/env bash
# The language-model runs of docs/benchmarks.md on one GPU, packed into one archive:
#   1. examples/gpt.toml (the CPU example) on the GPU for more steps: held-out bits per byte
#      against gzip -9 on the same held-out text (issue 22);
#   2. the 85M GPU teacher and its half-depth students (issue 20), on the stdlib plus
#      LM_EXTRA_MB (default 30) MB of torch's own Python source.
#   scripts/gpu-lm.sh OUT_DIR TAG [GPT_STEPS...]      e.g. scripts/gpu-lm.sh "$OUT" a 3000 10000
set -uo pipefail
out=$1 tag=$2; shift 2
work="$out/work-$tag" data=/tmp/hpmodel-lm
mkdir -p "$work" "$data"
export PYTHONPATH=src PYTHONUNBUFFERED=1
hp() { python3 -m hpmodel "$@"; }
keep() {  # keep a run's small files (not its weights) under $work/$2
  mkdir -p "$work/$2"; cp "$1"/*.json "$1"/*.md "$1"/*.jsonl "$1"/*.png "$work/$2/" 2>/dev/null; true; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$work/gpus.csv" 2>&1
step() { echo "=== $1 ($(date +%T))"; }

step "gpt.toml data"
hp data write --corpus stdlib --max-bytes 3000000 --seq-len 128 --val-fraction 0.1 \
  --out "$data/stdlib-shards" > "$work/gpt-data.log" 2>&1; tail -2 "$work/gpt-data.log"
for steps in "${@:-3000}"; do
  step "gpt.toml on cuda, $steps steps"
  timeout 200 python3 -m hpmodel train examples/gpt.toml --out "$data/gpt-$steps" \
    --set "data.shards=\"$data/stdlib-shards/train-*.shard\"" \
    --set "data.test_shards=\"$data/stdlib-shards/val-*.shard\"" \
    --set 'strategy.device="cuda"' --set "train.max_steps=$steps" --set train.epochs=1000 \
    --set train.progress=false \
    > "$work/gpt-$steps.log" 2>&1; echo "exit $?"
  grep -E "bits_per_byte|tokens_per_second|total_seconds|steps " "$work/gpt-$steps.log"
  keep "$data/gpt-$steps" "gpt-$steps"
done

step "teacher data (the stdlib and ${LM_EXTRA_MB:-30} MB of torch's own Python source, 256 tokens)"
# The stdlib alone is ~10 MB on a GPU host: an 85M teacher memorises it within a few epochs.
mapfile -t extra < <(python3 - "${LM_EXTRA_MB:-30}" <<'PY'
import os, sys, torch
root, cap, total = os.path.dirname(torch.__file__), int(sys.argv[1]) * 10**6, 0
for path in sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".py")):
    size = os.path.getsize(path)
    if size and total + size <= cap:
        print(path); total += size
PY
)
hp data write --corpus stdlib --text "${extra[@]}" --seq-len 256 --val-fraction 0.05 \
  --out runs/stdlib-256 > "$work/teacher-data.log" 2>&1; grep -v "shard$" "$work/teacher-data.log" | tail -3
step "teacher"
timeout 300 python3 -m hpmodel train examples/gpt_teacher_gpu.toml --out "$data/teacher" \
  > "$work/teacher.log" 2>&1; echo "exit $?"
grep -E "bits_per_byte|tokens_per_second|mfu|total_seconds|parameters|steps " "$work/teacher.log"
keep "$data/teacher" teacher
step "students"
timeout 360 python3 -m hpmodel distill examples/gpt_student_gpu.toml --teacher "$data/teacher" \
  --out "$data/student" --set "distill.topk_dir=\"$data/topk\"" > "$work/student.log" 2>&1
echo "exit $?"; grep -v "^\[W\|^W[0-9]\|^I[0-9]" "$work/student.log" | tail -25
keep "$data/student" student
step "done"
tar czf "$out/results-$tag.tar.gz" -C "$work" . && rm -rf "$work"
