import os

import pytest
import torch

# Triton's interpreter is an explicit switch, read when Triton defines its kernels: without a
# GPU the triton backend's tests run on CPU tensors through it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from ecgkern.backends import BACKEND_NAMES, available_backends

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _backend_params(device_type: str):
    status = available_backends(device_type)
    params = []
    for name in BACKEND_NAMES:
        reason = status[name].reason
        marks = [pytest.mark.skip(reason=f"backend {name!r} unavailable on {device_type}: {reason}")] if reason else []
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def pytest_generate_tests(metafunc):
    # `backend`: every registered backend that can run on the CPU (the rest skip, saying why).
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", _backend_params("cpu"))
    if "cuda_backend" in metafunc.fixturenames:
        metafunc.parametrize("cuda_backend", _backend_params("cuda"))
