"""Build (never run) the full ecgkern CUDA extension against a CUDA-enabled torch.

Used by .ci/check_cuda_build.sh in a separate virtual environment that holds a CUDA build of
torch; no GPU is needed. Goes through ecgkern._build.CUDA_EXTENSION, the same build path, so CI compiles
exactly what a GPU user's first call compiles, for the architectures in TORCH_CUDA_ARCH_LIST.
"""
import os
import sys
import time

import torch

if torch.version.cuda is None:
    sys.exit(f"torch {torch.__version__} was built without CUDA; this check needs a CUDA build of torch")
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

from ecgkern import _build  # after the arch list is set

start = time.perf_counter()
_build.CUDA_EXTENSION.build(arch_list=os.environ["TORCH_CUDA_ARCH_LIST"])
print(f"full CUDA extension built against torch {torch.__version__} (CUDA {torch.version.cuda}) for "
      f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']} in {time.perf_counter() - start:.0f} s")
