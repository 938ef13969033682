#!/usr/bin/env bash
# Reproduces the pooled-split rows of benchmarks/results/ecg/: 5 seeds each, one CPU thread.
# Usage: bash benchmarks/ecg_sweep_pooled.sh [RUNS_DIR]   (default runs/sweeps); summaries are copied into
# benchmarks/results/ecg/, then `python benchmarks/ecg_report.py` rebuilds its README.md and early.png.
set -euo pipefail
RUNS=${1:-runs/sweeps}
RESULTS="$(dirname "$0")/results/ecg"
common=(--seeds 5 --threads 1 --no-progress)
sweep() {  # name, then ecgkern train options
  local name=$1; shift
  ecgkern train "${common[@]}" --out "$RUNS/$name" "$@"
  cp "$RUNS/$name/summary.json" "$RESULTS/$name.json"; cp "$RUNS/$name/summary.md" "$RESULTS/$name.md"
}
sweep pooled-binary                                       # the notebook's experiment
sweep pooled-binary-steploss --step-loss 0.5              # early-classification training
sweep pooled-multiclass --task multiclass                 # 5 classes, same recipe
sweep pooled-multiclass-tuned --task multiclass --head pool --class-weights --class-weight-power 0.5 \
  --epochs 40 --lr 3e-3 --lr-schedule cosine --clip-grad 1.0 --dropout 0.1 --augment   # the UCR recipe, shorter
