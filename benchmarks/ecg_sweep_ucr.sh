#!/usr/bin/env bash
# Reproduces benchmarks/results/ecg/ucr-multiclass*.json: official UCR split (400 train / 100 validation from
# the 500 training beats, 4,500 test), 5 classes, 5 seeds, one CPU thread. The test part is used only
# for the final report: --select last keeps the last epoch, so validation is not even used for selection.
# Usage: bash benchmarks/ecg_sweep_ucr.sh [RUNS_DIR]   (default runs/sweeps); summaries are copied into
# benchmarks/results/ecg/, then `python benchmarks/ecg_report.py` rebuilds its README.md and early.png.
set -euo pipefail
RUNS=${1:-runs/sweeps}
RESULTS="$(dirname "$0")/results/ecg"
recipe=(--task multiclass --split ucr --head pool --class-weights --class-weight-power 0.5
        --epochs 150 --batch-size 32 --lr 3e-3 --lr-schedule cosine --clip-grad 1.0 --dropout 0.1 --augment --select last)
sweep() {  # name, then extra ecgkern train options
  local name=$1; shift
  ecgkern train --seeds 5 --threads 1 --no-progress --out "$RUNS/$name" "${recipe[@]}" "$@"
  cp "$RUNS/$name/summary.json" "$RESULTS/$name.json"; cp "$RUNS/$name/summary.md" "$RESULTS/$name.md"
}
sweep ucr-multiclass                     # unidirectional, hidden 64
sweep ucr-multiclass-bidir --bidirectional
