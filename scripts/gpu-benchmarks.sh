#!/usr/bin/env bash
# Run benchmarks (and the GPU-only tests) on a GPU machine, each under its own time limit,
# and pack every table, JSON, plot and log into one archive.
#   scripts/gpu-benchmarks.sh OUT_DIR TAG [tests[:SECONDS]] [NAME[:SECONDS][:KEY=VALUE;...]]...
#   e.g. scripts/gpu-benchmarks.sh "$OUT" a tests scaling:330 pipeline:240
set -uo pipefail
out=$1 tag=$2; shift 2
work="$out/work-$tag"
mkdir -p "$work"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$work/gpus.csv" 2>&1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >> "$work/gpus.csv"
for item in "$@"; do
  if [ "${item%%:*}" = tests ]; then
    limit=${item#tests}; limit=${limit#:}
    echo "=== gpu tests (limit ${limit:-240}s)"
    timeout "${limit:-240}" python3 -m pytest -m gpu -p no:cacheprovider -q tests 2>&1 | tee "$work/gpu-tests.log" | tail -15
    continue
  fi
  IFS=: read -r name seconds sets <<<"$item"
  args=()
  if [ -n "${sets:-}" ]; then IFS=";" read -ra pairs <<<"$sets"; for p in "${pairs[@]}"; do args+=(--set "$p"); done; fi
  echo "=== bench $name (limit ${seconds:-300}s) ${args[*]:-}"
  start=$(date +%s)
  timeout "${seconds:-300}" python3 -m hpmodel bench "$name" --out "$work/$name" "${args[@]}" \
    > "$work/$name.log" 2>&1
  echo "exit $? after $(( $(date +%s) - start ))s"
  grep -v "^\[W\|^W[0-9]\|^I[0-9]" "$work/$name.log" | tail -40
done
tar czf "$out/results-$tag.tar.gz" -C "$work" . && rm -rf "$work"
