#!/usr/bin/env bash
# One command for a GPU session: validate and benchmark the cuda backend (issue 7).
#
#   bash benchmarks/gpu/run.sh            # writes into $OUT (or benchmarks/results/gpu-<date>)
#
# Stages, each time-boxed; a failing stage is recorded and the others still run:
#   1. ceilings   GPU/driver/torch/cuDNN versions, extension build time, copy bandwidth, GEMM rates
#   2. tests      pytest tests/test_cuda_backend.py (conformance, gradcheck, opcheck, compile, ...)
#   3. conform    cuda (both strategies) + triton vs the float64 reference
#   4. memcheck   compute-sanitizer memcheck on a small forward+backward (no caching allocator)
#   5. racecheck  compute-sanitizer racecheck on the same
#   6. bench      ecgkern bench: ECG shape, B256/H256/T140, B16/H768/T1024; fp32 + bf16; cuda and
#                 triton vs cuDNN nn.LSTM and the reference loop; then the ECG shape with the fused
#                 strategy forced; summary.md gets the cuda rows against the measured ceilings
# Sized for < 8 minutes on an H100. Output (<= 8 files): gpu_checks.log, ceilings.json,
# summary.md, bench-cuda.{json,md}, bench-cuda-fused.{json,md}.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
out="${OUT:-$root/benchmarks/results/gpu-$(date -u +%Y%m%dT%H%M)}"
mkdir -p "$out"
log="$out/gpu_checks.log"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export ECGKERN_CACHE_DIR="${ECGKERN_CACHE_DIR:-/tmp/ecgkern-cache}" MAX_JOBS="${MAX_JOBS:-$(nproc)}"
python="${PYTHON:-python3}"
if [[ -z "${CUDA_HOME:-}" ]]; then  # `nvcc` on PATH may be a wrapper outside the toolkit
  : >/tmp/ecgkern-empty.cu
  CUDA_HOME="$(nvcc --dryrun -c /tmp/ecgkern-empty.cu -o /tmp/ecgkern-empty.o 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)"
  [[ -n "$CUDA_HOME" ]] && export CUDA_HOME="$(readlink -f "$CUDA_HOME")" || unset CUDA_HOME
fi
sanitizer="$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")"
declare -A rc seconds

stage() {  # stage NAME LIMIT_S COMMAND...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "=== $name (limit ${limit}s): $*" | tee -a "$log"
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  rc[$name]=$?
  seconds[$name]=$((SECONDS - t0))
  echo "=== $name: exit ${rc[$name]} after ${seconds[$name]} s" | tee -a "$log"
  tail -n 5 "$log"
}

stage ceilings 150 "$python" benchmarks/gpu/checks.py ceilings "$out/ceilings.json"
stage tests 120 "$python" -m pytest tests/test_cuda_backend.py -q -rs -p no:cacheprovider
stage conform 60 "$python" benchmarks/gpu/checks.py conformance
stage memcheck 75 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool memcheck --error-exitcode 1 \
  "$python" benchmarks/gpu/checks.py sanitize
stage racecheck 75 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool racecheck --error-exitcode 1 \
  "$python" benchmarks/gpu/checks.py sanitize
bench=(-m benchmarks --device cuda --no-plots --no-progress --out "$out" --repeats 20 --budget 1.0)
stage bench 150 "$python" "${bench[@]}" --name bench-cuda --backends torch,reference,cuda,triton --dtype float32,bfloat16 \
  --shapes B64,T140,I1,H64 B256,T140,I1,H256 B16,T1024,I1,H768
stage bench_fused 40 env ECGKERN_CUDA_STRATEGY=fused "$python" "${bench[@]}" --name bench-cuda-fused \
  --backends torch,reference,cuda --dtype float32 --shapes B64,T140,I1,H64

{
  echo "# cuda backend on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)"
  echo
  echo "| stage | exit | seconds |"
  echo "|---|---|---|"
  for name in ceilings tests conform memcheck racecheck bench bench_fused; do
    echo "| $name | ${rc[$name]} | ${seconds[$name]} |"
  done
  echo
  "$python" benchmarks/gpu/checks.py roofline "$out/ceilings.json" "$out"/bench-cuda*.json 2>&1
  echo
  echo "Details: gpu_checks.log; versions and ceilings: ceilings.json; timings: bench-cuda.md (auto strategy:"
  echo "persistent for hidden <= 64) and bench-cuda-fused.md (ECG shape with the per-step strategy forced)."
} >"$out/summary.md"
cat "$out/summary.md"
for name in "${!rc[@]}"; do [[ ${rc[$name]} == 0 ]] || exit 1; done
