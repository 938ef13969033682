#!/usr/bin/env bash
# Reproduces the pooled-split rows of results/ (issue 8): 5 seeds each, one CPU thread.
# Usage: bash results/run_pooled.sh [RUNS_DIR]   (default runs/sweeps); summaries are copied into results/.
set -euo pipefail
RUNS=${1:-runs/sweeps}
common=(--seeds 5 --threads 1 --no-progress)
sweep() {  # name, then ecgkern train options
  local name=$1; shift
  ecgkern train "${common[@]}" --out "$RUNS/$name" "$@"
  cp "$RUNS/$name/summary.json" "results/$name.json"; cp "$RUNS/$name/summary.md" "results/$name.md"
}
sweep pooled-binary                                       # the notebook's experiment
sweep pooled-binary-steploss --step-loss 0.5              # early-classification training
sweep pooled-multiclass --task multiclass                 # 5 classes, same recipe
sweep pooled-multiclass-tuned --task multiclass --head pool --class-weights --class-weight-power 0.5 \
  --epochs 40 --lr 3e-3 --lr-schedule cosine --clip-grad 1.0 --dropout 0.1 --augment   # the UCR recipe, shorter
