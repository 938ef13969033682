#!/usr/bin/env bash
# Build the wheel (and the sdist), install each into a fresh venv outside the checkout and use it
# from there: the cpp backend's forward and backward against the reference, then a 1-epoch
# `ecgkern train`. Proves that the kernel sources ship inside the package.
# Usage: bash .ci/check_wheel.sh [wheel|sdist|both]   (default wheel)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
what="${1:-wheel}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export ECGKERN_CACHE_DIR="$work/cache"  # a first build, as a new user gets

check() {  # kind, path of the package file to install
  local kind=$1 file=$2 venv="$work/venv-$1"
  python -m venv "$venv"
  "$venv/bin/pip" install -q torch==2.13.0
  "$venv/bin/pip" install -q "$file"
  cd "$work"
  "$venv/bin/python" - <<'PY'
import ecgkern, torch
from pathlib import Path
from ecgkern.backends import reference

assert "site-packages" in ecgkern.__file__, ecgkern.__file__
status = ecgkern.available_backends()["cpp"]
assert status.available, f"cpp backend unavailable from the installed package: {status.reason}"
torch.manual_seed(0)
x = torch.randn(4, 7, 3, dtype=torch.float64, requires_grad=True)
outs = {}
for backend in ("cpp", "reference"):
    torch.manual_seed(1)
    lstm = ecgkern.LSTM(3, 5, batch_first=True, backend=backend).double()
    y, _ = lstm(x)
    (gx,) = torch.autograd.grad(y.square().sum(), x)
    outs[backend] = (y.detach(), gx)
for a, b in zip(outs["cpp"], outs["reference"]):
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
print(f"cpp forward/backward match the reference, from {Path(ecgkern.__file__).parent}")
PY
  "$venv/bin/ecgkern" train --epochs 1 --backend cpp --out "$work/run-$kind" --no-progress
  test -s "$work/run-$kind/metrics.json"
  cd "$repo"
  echo "check_wheel: $kind ok (site-packages $(du -sh "$venv"/lib/python3*/site-packages | cut -f1))"
}

if [[ $what == wheel || $what == both ]]; then
  rm -rf "$repo/build"  # stale files from an earlier in-tree build would end up in the wheel
  python -m pip wheel "$repo" -w "$work/dist" --no-deps -q
  check wheel "$(ls "$work"/dist/ecgkern-*.whl)"
fi
if [[ $what == sdist || $what == both ]]; then
  (cd "$repo" && python -c "from setuptools import build_meta as b; import sys; b.build_sdist(sys.argv[1])" "$work/sdist" >/dev/null)
  check sdist "$(ls "$work"/sdist/ecgkern-*.tar.gz)"
fi
