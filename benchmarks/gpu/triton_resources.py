"""Compile the triton backend's kernels for a GPU architecture WITHOUT a GPU and report each
variant's registers, stack (spills) and shared memory, as ptxas does for the CUDA kernels in
.ci/check_cuda_build.sh. Needs a Triton with its NVIDIA backend (its bundled ptxas/cuobjdump);
no device, no CUDA torch.

    python benchmarks/gpu/triton_resources.py            # sm_90 (H100/H200)
    python benchmarks/gpu/triton_resources.py --arch 86  # e.g. shared memory on an RTX 30xx

The variants are those ``ecgkern.backends.triton`` launches: persistent kernels at each
(BB, BH, num_warps) that ``_persistent_meta`` picks, step kernels at the largest BLOCK.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"  # compile for real, even on a machine without a GPU
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ecgkern.backends import _triton_kernels as k

DTYPES = (("fp32", tl.float32, False), ("bf16", tl.float32, True), ("fp16", tl.float32, True), ("fp64", tl.float64, False))
PERSISTENT = ((16, 16, 4), (16, 32, 4), (32, 32, 4), (16, 64, 8))  # (BB, BH, num_warps)
FORWARD_ARGS = ["xg", "w", "h0", "c0", "hs", "cs", "acts"]
BACKWARD_ARGS = ["dhs", "dcs", "w", "c0", "cs", "acts", "dxg", "dh0", "dc0"]


def _cuobjdump() -> str:
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(bundled) if bundled.is_file() else "cuobjdump"


def _usage(cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name], capture_output=True, text=True, check=True).stdout
    found = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out))
    return f"{found.get('REG', '?'):>4} {found.get('STACK', '?'):>7}"


def compile_one(fn, signature: dict, constexprs: dict, num_warps: int, arch: int) -> str:
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                              target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
    return f"{_usage(compiled.asm['cubin'])} {compiled.metadata.shared:>8}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability without the dot (default 90)")
    args = parser.parse_args()
    print(f"triton {triton.__version__}, sm_{args.arch}")
    print(f"{'kernel':<20} {'dtype':<5} {'BB':>3} {'BH':>3} {'warps':>5} {'regs':>4} {'stack B':>7} {'smem B':>8}")
    for name, acc, lowp in DTYPES:
        ptr = "*" + name
        scalars = {"T": "i32", "B": "i32", "H": "i32"}
        for bb, bh, warps in PERSISTENT:
            meta = {"BB": bb, "BH": bh, "ACC": acc, "LOWP": lowp}
            for fn, names in ((k.persistent_forward, FORWARD_ARGS), (k.persistent_backward, BACKWARD_ARGS)):
                try:
                    row = compile_one(fn, {n: ptr for n in names} | scalars, meta, warps, args.arch)
                except Exception as exc:  # noqa: BLE001 - e.g. fp64 tl.dot where the target has none
                    row = f"does not compile: {str(exc).strip().splitlines()[-1][:80]}"
                print(f"{fn.__name__:<20} {name:<5} {bb:>3} {bh:>3} {warps:>5} {row}")
        step_fwd = {n: ptr for n in ["gates", "c_prev", "h_out", "c_out", "act_out"]} | {"N": "i32", "H": "i32"}
        carry = "*fp64" if name == "fp64" else "*fp32"
        step_bwd = {"dh_out": ptr, "dh_rec": ptr, "dc_out": ptr, "dc": carry, "act": ptr, "c": ptr, "c_prev": ptr,
                    "dgates": ptr, "N": "i32", "H": "i32"}
        for fn, sig in ((k.step_forward, step_fwd), (k.step_backward, step_bwd)):
            row = compile_one(fn, sig, {"BLOCK": 1024, "ACC": acc}, 4, args.arch)
            print(f"{fn.__name__:<20} {name:<5} {'':>3} {'':>3} {4:>5} {row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
