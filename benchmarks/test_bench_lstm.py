"""pytest-benchmark suite: the key cases per backend, for tracking speed across commits.

    pytest benchmarks/ --benchmark-autosave                  # save a run (under .benchmarks/)
    pytest benchmarks/ --benchmark-compare                   # compare with the last saved run
    pytest benchmarks/ -k ecg --benchmark-group-by=group     # the ECG shape only

Each test's group is the case (``cpu-fwd-B64-T140-I1-H64``...), so a table compares the
backends of one case and ``--benchmark-compare`` matches the same test across commits.
The same runners as ``ecgkern bench`` (whole layer, input projection included; fwdbwd = a
training step of layer + linear head). pytest-benchmark runs tests one after another, so for
side-by-side ratios on a noisy machine prefer ``ecgkern bench`` (interleaved).
"""
import pytest
import torch

from ecgkern.backends import BACKEND_NAMES
from ecgkern.bench.cases import ECG, Case, Shape
from ecgkern.bench.runners import TORCH, make_inputs, make_runner, skip_reason

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# (shape, rounds): the ECG5000 shape, and the batch 256 / hidden 256 training case.
CASES = [(ECG, "fwd", 20), (ECG, "fwdbwd", 10), (Shape(256, 140, 1, 256), "fwdbwd", 5)]


def _params():
    for device in DEVICES:
        for shape, mode, rounds in CASES:
            for name in (TORCH,) + BACKEND_NAMES:
                reason = skip_reason(name, device, torch.float32, set())
                marks = [pytest.mark.skip(reason=f"{name} on {device}: {reason}")] if reason else []
                tag = "ecg" if shape == ECG else shape.label
                yield pytest.param(device, shape, mode, rounds, name, marks=marks,
                                   id=f"{device}-{tag}-{mode}-{name}")


@pytest.mark.parametrize("device, shape, mode, rounds, name", list(_params()))
def test_lstm(benchmark, device, shape, mode, rounds, name):
    case = Case(device, torch.float32, mode, shape)
    run = make_runner(name, case, make_inputs(case))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        run()
        sync()

    benchmark.group = f"{device}-{mode}-{shape.label}"
    benchmark.extra_info.update(backend=name, gemm_flops=case.flops, threads=torch.get_num_threads())
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=2, iterations=1)
