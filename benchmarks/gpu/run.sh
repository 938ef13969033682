#!/usr/bin/env bash
# One call on a lent GPU: check, build, validate and benchmark the cuda and triton backends.
#
#   bash benchmarks/gpu/run.sh                 # every stage, in order, inside one deadline
#   bash benchmarks/gpu/run.sh conform bench   # only these stages (a rerun of what failed;
#                                              # build is added first when a stage needs cuda)
#
# Stages, most valuable first; each has a time limit, clipped to what is left of the deadline
# (ECGKERN_GPU_DEADLINE_S, default 420 s: one device call of timeout_s=480 fits with room):
#   env       versions, TF32 flags, sanitizer, runtime (firecracker or gvisor); needs no GPU
#   build     copy/GEMM ceilings, the cuda extension's JIT build, a smoke test (both
#             strategies, float32/bfloat16, forward and backward)
#   conform   cuda, both strategies: float32, float64, bfloat16, float16, gradcheck, saturated
#             gates, strategies agree in half precision, the module, autocast vs nn.LSTM
#   bench     ecgkern bench at B64/T140/H64, B256/T140/H256, B16/T1024/H768; float32 and
#             bfloat16; fwd and fwd+bwd; cuda and triton vs cuDNN nn.LSTM and the reference;
#             then the ECG shape with the cuda fused strategy forced
#   kernel    ECG shape: GPU busy time and graph replay, cuda vs cuDNN; nn.LSTM float32 with
#             cuDNN TF32 on and off at the three shapes; a whole layer call broken down against
#             nn.LSTM's (kernels, device time, host ops) and both under CUDA graphs
#             (torch.compile mode="reduce-overhead")
#   sanitize  compute-sanitizer memcheck and racecheck on the ecgkern kernels ("not run" where
#             the runtime refuses the sanitizer, as gVisor does); a failing tool is rerun on
#             each strategy:dtype case alone
#   tests     pytest tests/test_cuda_backend.py
#   suite     every other test of the suite that takes a CUDA device or the cuda backend
#             (`-k cuda`: the "Works with" paths, bad input, precision, ONNX...), 8 workers
#   triton    triton conformance (many cold compiles: last), offsets past 2^31 elements
#   cpu       the GPU machine's own CPU (an Intel Xeon with AVX-512 and AMX on the H200 seen so
#             far), two cores like the CI machine: cpp and nn.LSTM, float32 and bf16 autocast,
#             at B64/T140/H64 and B256/T140/H256 (issue #14's Intel figures)
#
# Output in $OUT (default benchmarks/results/gpu-<date>), at most 8 files: summary.md (always
# written, also when the call is cut short), run.log, ceilings.json (env, ceilings, build,
# smoke and kernel sections; written before the build), bench-gpu.{json,md},
# bench-cuda-fused.md (its JSON is removed after the summary: 8 files at most come back) and
# cpu-host.{json,md}. Exit status 1 if a stage failed or ran out of time.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
out="${OUT:-$root/benchmarks/results/gpu-$(date -u +%Y%m%dT%H%M)}"
mkdir -p "$out"
log="$out/run.log"
result="$out/ceilings.json"
deadline=$((SECONDS + ${ECGKERN_GPU_DEADLINE_S:-420}))
reserve=20  # seconds kept back for the summary
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export ECGKERN_CACHE_DIR="${ECGKERN_CACHE_DIR:-/tmp/ecgkern-cache}" MAX_JOBS="${MAX_JOBS:-$(nproc)}"
python="${PYTHON:-python3}"
if [[ -z "${CUDA_HOME:-}" ]] && command -v nvcc >/dev/null; then  # `nvcc` on PATH may be a wrapper
  : >/tmp/ecgkern-empty.cu
  CUDA_HOME="$(nvcc --dryrun -c /tmp/ecgkern-empty.cu -o /tmp/ecgkern-empty.o 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)"
  [[ -n "$CUDA_HOME" ]] && export CUDA_HOME="$(readlink -f "$CUDA_HOME")" || unset CUDA_HOME
fi
sanitizer="$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")"
export ECGKERN_SANITIZER="$sanitizer"
# The bench's entry point: `python -m ecgkern bench` where the package has a __main__, else
# the bench package itself (same parser, same flags).
if [[ -f ecgkern/__main__.py ]]; then bench_cmd=(-m ecgkern bench); else bench_cmd=(-m ecgkern.bench); fi

all_stages=(env build conform bench kernel sanitize tests suite triton cpu)
declare -A limit=([env]=25 [build]=150 [conform]=60 [bench]=150 [kernel]=100 [sanitize]=110 [tests]=90 [suite]=150 [triton]=120 [cpu]=150)
declare -A status seconds
stages=("$@")
[[ ${#stages[@]} == 0 ]] && stages=("${all_stages[@]}")
for name in "${stages[@]}"; do
  [[ -n "${limit[$name]:-}" ]] || { echo "unknown stage '$name'; stages: ${all_stages[*]}" >&2; exit 2; }
done
# A fresh machine has no built extension: a rerun of GPU stages builds first, in the build
# stage's own time limit rather than in theirs.
if [[ " ${stages[*]} " != *" build "* && " ${stages[*]} " =~ \ (conform|bench|kernel|sanitize|tests|suite)\  ]]; then
  if [[ "${stages[0]}" == env ]]; then stages=(env build "${stages[@]:1}"); else stages=(build "${stages[@]}"); fi
fi

summary() {  # always: on a normal end, on an error, and on SIGTERM/SIGINT
  trap - EXIT TERM INT
  if [[ ! -s "$result" ]]; then
    printf '{"error": "no stage wrote results (run.sh stopped before the env stage finished)"}\n' >"$result"
  fi
  {
    echo "# ecgkern on $( (nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU") | head -n 1)"
    echo
    echo "$(date -u +%FT%TZ); runtime: $(sed -n 's/^runtime: //p' "$log" | head -n 1); deadline ${ECGKERN_GPU_DEADLINE_S:-420} s, used $SECONDS s"
    echo
    echo "| stage | result | seconds |"
    echo "|---|---|---|"
    for name in "${stages[@]}"; do echo "| $name | ${status[$name]:-not reached} | ${seconds[$name]:-} |"; done
    echo
    grep -E '^(PASS|FAIL|NOT RUN)|passed|failed|error' "$log" | grep -v '^===' | tail -n 40 | sed 's/^/    /'
    echo
    timeout 20 "$python" benchmarks/gpu/checks.py roofline "$result" "$out/bench-gpu.json" "$out/bench-cuda-fused.json" 2>&1
    echo
    echo "Details: run.log; versions, ceilings, build, smoke, kernel-only times: ceilings.json;"
    echo "timings: bench-gpu.md (cuda strategy auto: persistent for H <= 64) and bench-cuda-fused.md."
  } >"$out/summary.md" 2>&1
  cat "$out/summary.md"
  rm -f "$out/bench-cuda-fused.json"  # its table is in bench-cuda-fused.md and summary.md
  local failed=0 name
  for name in "${stages[@]}"; do [[ "${status[$name]:-}" == pass || "${status[$name]:-}" == "not run"* ]] || failed=1; done
  [[ "$have_gpu" == no ]] && failed=1  # nothing that matters ran
  exit $failed
}
have_gpu=""  # yes/no once the env stage has run
trap summary EXIT
trap 'echo "=== interrupted" >>"$log"; exit 143' TERM INT

run_stage() {  # run_stage NAME COMMAND...: time-boxed, logged, classified
  local name=$1; shift
  local left=$((deadline - SECONDS - reserve)) t0=$SECONDS rc
  local cap=$(( left < ${limit[$name]} ? left : ${limit[$name]} ))
  if (( cap < 10 )); then status[$name]="skipped (deadline)"; echo "=== $name: skipped, deadline" | tee -a "$log"; return; fi
  if [[ $name != env && $name != build && $name != cpu && "$have_gpu" == no ]]; then
    status[$name]="skipped (no CUDA GPU)"; echo "=== $name: skipped, no CUDA GPU" | tee -a "$log"; return
  fi
  echo "=== $name (limit ${cap}s): $*" | tee -a "$log"
  status[$name]="interrupted (was running when run.sh was stopped)"
  timeout --kill-after=5 "$cap" "$@" >>"$log" 2>&1
  rc=$?
  seconds[$name]=$((SECONDS - t0))
  case $rc in
    0) status[$name]=pass ;;
    3) status[$name]="not run: $(grep -E '^NOT RUN' "$log" | tail -n 1 | cut -c10-)" ;;
    124|137) status[$name]="TIMEOUT after ${cap}s" ;;
    *) status[$name]="FAIL (exit $rc)" ;;
  esac
  echo "=== $name: ${status[$name]} after ${seconds[$name]} s" | tee -a "$log"
  tail -n 4 "$log" | grep -v '^===' || true
}

stage_env() { run_stage env "$python" benchmarks/gpu/checks.py env "$result"; }
stage_build() { run_stage build "$python" benchmarks/gpu/checks.py build "$result"; }
stage_conform() { run_stage conform "$python" benchmarks/gpu/checks.py conform cuda; }
stage_bench() {
  local common=(--device cuda --no-plots --no-progress --out "$out" --repeats 20 --min-repeats 3 --budget 0.8)
  run_stage bench bash -c '
    "$@" --name bench-gpu --backends torch,reference,cuda,triton --dtype float32,bfloat16 \
      --shapes B64,T140,I1,H64 B256,T140,I1,H256 B16,T1024,I1,H768 || exit
    ECGKERN_CUDA_STRATEGY=fused "$@" --name bench-cuda-fused --backends torch,reference,cuda --dtype float32,bfloat16 \
      --shapes B64,T140,I1,H64' bench "$python" "${bench_cmd[@]}" "${common[@]}"
}
stage_kernel() { run_stage kernel "$python" benchmarks/gpu/checks.py kernel "$result"; }
stage_sanitize() {
  if [[ ! -x "$sanitizer" ]]; then status[sanitize]="not run: no compute-sanitizer at $sanitizer"; return; fi
  # Only the ecgkern kernels are checked (torch's own are skipped): much faster.
  run_stage sanitize bash -c '
    sanitizer=$0 python=$1 filter=(--kernel-name kns=ecgkern_cuda)
    check() {  # check TOOL LOG [CASE]: the sanitize workload under compute-sanitizer TOOL
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool "$1" "${filter[@]}" --error-exitcode 1 \
        "$python" benchmarks/gpu/checks.py sanitize ${3:+"$3"} >"$2" 2>&1
    }
    for tool in memcheck racecheck; do
      echo "--- $tool"
      check $tool /tmp/ecgkern-sanitize.log
      rc=$?
      if [[ ${#filter[@]} != 0 ]] && grep -qiE "unrecognized option|unknown option|invalid .*kernel-name" /tmp/ecgkern-sanitize.log; then
        echo "this compute-sanitizer has no --kernel-name filter: checking every kernel"
        filter=()
        check $tool /tmp/ecgkern-sanitize.log
        rc=$?
      fi
      cat /tmp/ecgkern-sanitize.log
      if grep -qE "Device not supported|error 999|CUDA_ERROR_UNKNOWN|Unable to attach|not supported on this platform" /tmp/ecgkern-sanitize.log; then
        echo "NOT RUN: compute-sanitizer refused this device/runtime"; exit 3
      fi
      if [[ $rc == 0 ]]; then echo "$tool: no errors in the ecgkern kernels"; continue; fi
      failed=1  # one case can stop the sanitizer for all: run each case alone to see which
      for case in $("$python" benchmarks/gpu/checks.py cases); do
        check $tool /tmp/ecgkern-sanitize-case.log "$case" && echo "$tool $case: pass" \
          || echo "$tool $case: FAIL: $(grep -m 1 -E "Error|error|hazard" /tmp/ecgkern-sanitize-case.log)"
      done
    done
    exit ${failed:-0}' "$sanitizer" "$python"
}
stage_tests() { run_stage tests "$python" -m pytest tests/test_cuda_backend.py -q -rs -p no:cacheprovider; }
stage_suite() {
  run_stage suite "$python" -m pytest tests --ignore=tests/test_cuda_backend.py -k cuda -n 8 -q -rs -p no:cacheprovider
}
stage_triton() {
  run_stage triton bash -c '"$0" benchmarks/gpu/checks.py conform triton; a=$?; "$0" benchmarks/gpu/checks.py offsets; b=$?
    (( a == 3 && b == 3 )) && exit 3  # not run here (no GPU)
    exit $(( (a != 0 && a != 3) || (b != 0 && b != 3) ))' "$python"
}
stage_cpu() {
  local pin=(); command -v taskset >/dev/null && pin=(taskset -c 0,1)  # two cores, as on the CI machine
  run_stage cpu "${pin[@]}" "$python" "${bench_cmd[@]}" --device cpu --threads 2 --backends torch,cpp \
    --dtype float32,bfloat16 --shapes B64,T140,I1,H64 B256,T140,I1,H256 --repeats 10 --budget 0.5 \
    --no-plots --no-progress --out "$out" --name cpu-host
}

for name in "${stages[@]}"; do
  "stage_$name"
  if [[ $name == env ]]; then
    grep -q '^cuda_available: True' "$log" && have_gpu=yes || have_gpu=no
    [[ $have_gpu == no ]] && echo "no CUDA GPU visible: the GPU stages will fail or be skipped" | tee -a "$log"
  fi
done
