"""ecgkern.LSTM under DistributedDataParallel: gloo, two processes on 127.0.0.1 (loopback only).

One training step (forward, backward with DDP's gradient all-reduce, SGD step) on two halves of
a batch must give the same gradients and updated weights as one process on the whole batch.
The two workers are spawned once for all available backends; they are killed after
``TIMEOUT_S`` so a hung collective can never hang CI.
"""
from __future__ import annotations

import os
import socket
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ecgkern
from ecgkern.backends import available_backends
from ecgkern.testing import GRAD_TOLERANCES, assert_close

from _reliability import backend_dtypes

WORLD = 2
TIMEOUT_S = 300
B, T, I, H = 6, 7, 3, 5  # B split 3 + 3 across the ranks
LENGTHS = torch.tensor([7, 3, 5, 1, 7, 6])

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available")


def _model(backend: str, dtype: torch.dtype):
    torch.manual_seed(0)
    return ecgkern.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True, backend=backend, dtype=dtype)


def _batch(dtype: torch.dtype):
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, T, I, generator=g, dtype=torch.float64).to(dtype)


def _loss(model, x, lengths):
    out, (h, c) = model(x, lengths=lengths)
    # A per-sequence loss averaged over the (local) batch: DDP's gradient averaging over equal
    # halves then equals the gradient of the average over the whole batch.
    return (out.pow(2).sum(dim=(1, 2)) + h.sum(dim=(0, 2)) + c.pow(2).sum(dim=(0, 2))).mean()


def _step(model, x, lengths, train):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    _loss(train, x, lengths).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    return grads, {n: p.detach().clone() for n, p in model.named_parameters()}


def _loopback_interface() -> str | None:
    names = [name for _, name in socket.if_nameindex()]
    return next((n for n in names if n.startswith("lo")), None)


def _worker(rank: int, port: int, jobs: list, out_dir: str) -> None:
    if _loopback_interface() and "GLOO_SOCKET_IFNAME" not in os.environ:
        os.environ["GLOO_SOCKET_IFNAME"] = _loopback_interface()  # gloo talks over loopback only
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=TIMEOUT_S // 2))
    keep = []  # DDP wrappers live until the process ends (see below)
    try:
        for backend, dtype in jobs:
            model = _model(backend, dtype)
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            keep.append(ddp)
            shard = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
            grads, params = _step(model, _batch(dtype)[shard], LENGTHS[shard], ddp)
            torch.save({"grads": grads, "params": params}, os.path.join(out_dir, f"{backend}-{dtype}-{rank}.pt"))
    finally:
        dist.destroy_process_group()
    # Freeing a DDP Reducer can destroy gloo's process group with the GIL held while a gloo
    # thread waits for the GIL to free its last work item: a teardown deadlock in torch, seen
    # on a loaded 2-core machine. The results are on disk, so leave without running destructors.
    os._exit(0)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dtype(backend: str) -> torch.dtype:
    """float64 where the backend has it (the tightest comparison), else float32."""
    return max(backend_dtypes(backend), key=lambda d: d.itemsize)


def _jobs():
    return [(name, _dtype(name)) for name, s in available_backends("cpu").items() if s.available]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    """Runs the two workers once for every available backend and dtype; {(backend, dtype, rank): result}."""
    out_dir = tmp_path_factory.mktemp("ddp")
    jobs = _jobs()
    context = mp.start_processes(_worker, args=(_free_port(), jobs, str(out_dir)), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not context.join(timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
            if time.monotonic() > deadline:
                raise AssertionError(f"the DDP workers did not finish within {TIMEOUT_S}s (hung collective?)")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return {(b, d, r): torch.load(out_dir / f"{b}-{d}-{r}.pt", weights_only=True) for b, d in jobs for r in range(WORLD)}


def test_ddp_step_equals_single_process_on_the_whole_batch(ddp_results, backend):
    dtype = _dtype(backend)
    model = _model(backend, dtype)
    grads, params = _step(model, _batch(dtype), LENGTHS, model)
    rtol, atol = GRAD_TOLERANCES[dtype]
    for rank in range(WORLD):
        got = ddp_results[(backend, dtype, rank)]
        context = f"{backend} {dtype} DDP rank {rank} vs one process"
        for name in grads:
            assert_close(f"grad {name}", got["grads"][name], grads[name], rtol, atol, context)
            assert_close(f"{name} after the step", got["params"][name], params[name], rtol, atol, context)
