#!/usr/bin/env bash
# CI build check of the CUDA backend, on a machine without a GPU (nothing here runs a kernel).
#
# 1. Every CUDA kernel translation unit (csrc/*.cu, no torch headers) compiled with nvcc for
#    sm_80 and sm_90, warnings as errors, with ptxas' register/spill report summarised.
# 2. The torch binding (csrc/lstm_cuda.cpp) syntax-checked against the installed torch's
#    headers plus the CUDA runtime headers (works with a CPU-only torch: it uses c10/cuda only).
# 3. Optional (ECGKERN_CI_FULL_CUDA_BUILD=1): the whole extension built with ninja against a
#    CUDA build of torch (ECGKERN_CI_CUDA_TORCH, default torch==2.14.1) in a separate virtual
#    environment under ${ECGKERN_CI_CUDA_VENV:-/tmp/ecgkern-cuda-venv}, without running it.
#
# Exits non-zero on any compile error. Skips (exit 0, saying so) when nvcc is absent, unless
# ECGKERN_CI_REQUIRE_NVCC=1. Needs: nvcc, python with torch, a C++ compiler.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python}"
nvcc="$(command -v nvcc || true)"
if [[ -z "$nvcc" && -x /usr/local/cuda/bin/nvcc ]]; then nvcc=/usr/local/cuda/bin/nvcc; fi
if [[ -z "$nvcc" ]]; then
  if [[ "${ECGKERN_CI_REQUIRE_NVCC:-0}" == 1 ]]; then echo "check_cuda_build: no nvcc found" >&2; exit 1; fi
  echo "check_cuda_build: SKIPPED, no nvcc on PATH or in /usr/local/cuda"
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
start=$SECONDS
# The toolkit root, asked of nvcc itself: `nvcc` on PATH may be a wrapper script elsewhere.
: >"$work/empty.cu"
cuda_root="${CUDA_HOME:-$("$nvcc" --dryrun -c "$work/empty.cu" -o "$work/empty.o" 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)}"
cuda_root="$(readlink -f "${cuda_root:-$(dirname "$(dirname "$nvcc")")}")"
echo "check_cuda_build: $("$nvcc" --version | tail -n 2 | head -n 1) in $cuda_root"

# ---- 1. kernel translation units --------------------------------------------------------------
arches=(-gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90)
status=0
for unit in csrc/*.cu; do
  log="$work/$(basename "$unit").ptxas.log"
  # Same code-generation flags as the JIT build (-O3, -lineinfo, no fast-math).
  if ! "$nvcc" -std=c++17 -O3 -lineinfo --Werror all-warnings -Xcompiler -Wall,-Wextra "${arches[@]}" \
      -Xptxas -v -c "$unit" -o "$work/$(basename "$unit").o" >"$log" 2>&1; then
    echo "check_cuda_build: FAILED to compile $unit:" >&2
    grep -v '^ptxas info' "$log" | grep -v 'bytes stack frame' >&2 || cat "$log" >&2
    status=1
    continue
  fi
  echo "check_cuda_build: compiled $unit for sm_80, sm_90 ($((SECONDS - start)) s so far)"
  # One line per kernel and architecture: registers, spill bytes, stack, shared memory.
  "$python" - "$log" <<'EOF'
import re, subprocess, sys
text = open(sys.argv[1]).read()
rows, current = [], None
for line in text.splitlines():
    m = re.search(r"Compiling entry function '(\S+)' for '(sm_\d+)'", line)
    if m:
        current = {"name": m.group(1), "arch": m.group(2)}
        continue
    if current is None:
        continue
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m:
        current.update(stack=int(m.group(1)), spill=int(m.group(2)) + int(m.group(3)))
    m = re.search(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?", line)
    if m:
        current.update(regs=int(m.group(1)), smem=int(m.group(2) or 0))
        rows.append(current)
        current = None
try:
    names = subprocess.run(["c++filt"], input="\n".join(r["name"] for r in rows), capture_output=True, text=True).stdout.split("\n")
except OSError:  # no binutils: mangled names are still unique
    names = [r["name"] for r in rows]
def short(name):  # void ns::(anonymous namespace)::k<float, 64>(args) -> k<float, 64>
    name = name.replace("(anonymous namespace)::", "").removeprefix("void ").split("(")[0]
    head, _, args = name.partition("<")
    return head.split("::")[-1] + ("<" + args if args else "")
spilled = 0
print(f"  {'kernel':<48} {'arch':<6} {'regs':>4} {'spill B':>7} {'stack B':>7} {'smem B':>6}")
for row, name in sorted(zip(rows, names), key=lambda p: (short(p[1]), p[0]["arch"])):
    flag = "  <-- spills" if row.get("spill") else ""
    spilled += bool(row.get("spill"))
    print(f"  {short(name):<48} {row['arch']:<6} {row['regs']:>4} {row.get('spill', 0):>7} {row.get('stack', 0):>7} {row['smem']:>6}{flag}")
print(f"  {len(rows)} kernel builds, {spilled} with register spills")
EOF
done
[[ $status == 0 ]] || exit $status

# ---- 2. the binding, against this torch's headers ---------------------------------------------
torch_include="$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "include"))')"
# A CPU-only torch ships the c10/cuda headers but not their generated cmake macros header.
"${CXX:-c++}" -std=c++17 -fsyntax-only -Wall -Wextra -Werror -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE \
  -isystem "$torch_include" -isystem "$torch_include/torch/csrc/api/include" -isystem "$cuda_root/include" \
  csrc/lstm_cuda.cpp
echo "check_cuda_build: csrc/lstm_cuda.cpp compiles against torch $("$python" -c 'import torch; print(torch.__version__)') headers ($((SECONDS - start)) s so far)"

# ---- 3. optional: the full extension against a CUDA build of torch ----------------------------
if [[ "${ECGKERN_CI_FULL_CUDA_BUILD:-0}" == 1 ]]; then
  venv="${ECGKERN_CI_CUDA_VENV:-/tmp/ecgkern-cuda-venv}"
  if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
    "$venv/bin/pip" install -q "${ECGKERN_CI_CUDA_TORCH:-torch==2.14.1}" numpy ninja setuptools
    echo "check_cuda_build: CUDA torch installed in $venv ($((SECONDS - start)) s so far)"
  fi
  CUDA_HOME="$cuda_root" ECGKERN_CACHE_DIR="$work/cache" TORCH_CUDA_ARCH_LIST="8.0;9.0" MAX_JOBS="${MAX_JOBS:-2}" \
    PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$venv/bin/python" .ci/build_cuda_extension.py
fi
echo "check_cuda_build: OK in $((SECONDS - start)) s"
