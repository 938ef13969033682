"""The timed callables: one LSTM layer per backend, all with the same weights and inputs.

Every runner times the whole layer (input projection included, as nn.LSTM's own timing does).
``fwd`` is a no_grad forward; ``fwdbwd`` is one training step's work: forward, a linear head on
the final hidden state, cross-entropy, and the gradients of every parameter.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..backends import BACKEND_NAMES, BackendUnavailableError, available_backends, get_backend
from .cases import Case

TORCH = "nn.LSTM"  # the torch.nn.LSTM baseline (oneDNN on CPU, cuDNN on GPU)
REFERENCE = "reference"
ALL_BACKENDS = (TORCH,) + BACKEND_NAMES
_ALIASES = {"torch": TORCH, "nn.lstm": TORCH, "nn": TORCH, "cudnn": TORCH, "onednn": TORCH}
HEAD_CLASSES = 5  # ECG5000 has 5 classes

# On CPU, bfloat16/float16 cases run every layer under torch.autocast (float32 weights, as
# training with mixed precision does; nn.LSTM under autocast is the baseline), and time the
# float32 cpp layer beside them under this name.
CPP_FLOAT32 = "cpp float32"
REDUCED_DTYPES = (torch.bfloat16, torch.float16)

TRITON_CPU_NOTE = ("excluded from CPU timing by default: on CPU Triton runs only under its interpreter "
                   "(for tests); name it in --backends to time it anyway")


def parse_backends(text: str | None) -> tuple[list[str], set[str]]:
    """``--backends`` -> (names in table order, names the user asked for explicitly).

    None or ``all`` means every backend. The two baselines (nn.LSTM, reference) are always
    added since every speedup is a ratio against them.
    """
    if text is None or text.strip().lower() == "all":
        return list(ALL_BACKENDS), set()
    asked = []
    for raw in text.split(","):
        name = raw.strip()
        if not name:
            continue
        name = _ALIASES.get(name.lower(), name)
        if name not in ALL_BACKENDS:
            raise ValueError(f"unknown backend {raw.strip()!r}; choose from {', '.join(ALL_BACKENDS)} (or 'all'; 'torch' = nn.LSTM)")
        asked.append(name)
    if not asked:
        raise ValueError("--backends is empty; name at least one backend or 'all'")
    chosen = set(asked) | {TORCH, REFERENCE}
    return [b for b in ALL_BACKENDS if b in chosen], set(asked)


def skip_reason(backend: str, device: str, dtype: torch.dtype, explicit: set[str]) -> str | None:
    """Why ``backend`` is not timed for this device/dtype, or None when it is."""
    if backend == TORCH:
        return None
    if backend == "triton" and device == "cpu" and backend not in explicit:
        return TRITON_CPU_NOTE
    reason = available_backends(device)[backend].reason
    if reason:
        return f"unavailable: {reason}"
    try:
        get_backend(backend, torch.device(device), dtype)
    except BackendUnavailableError as exc:
        return f"unsupported: {exc}"
    return None


def uses_autocast(case: Case) -> bool:
    """Whether the case's layers run in float32 under torch.autocast(case.dtype) (reduced CPU dtypes)."""
    return case.device == "cpu" and case.dtype in REDUCED_DTYPES


def extra_backends(case: Case, backends: list[str]) -> list[str]:
    """Rows timed beside the asked-for backends: float32 cpp next to an autocast cpp."""
    return [CPP_FLOAT32] if uses_autocast(case) and "cpp" in backends else []


def _model(backend: str, case: Case) -> torch.nn.Module:
    from .. import LSTM

    s = case.shape
    if backend == TORCH:
        return torch.nn.LSTM(s.input, s.hidden)
    return LSTM(s.input, s.hidden, backend=backend)


def make_inputs(case: Case, seed: int = 0):
    """Weights (an nn.LSTM state dict), input, labels and head, the same for every backend."""
    s = case.shape
    gen = torch.Generator().manual_seed(seed)
    ref = torch.nn.LSTM(s.input, s.hidden)
    for p in ref.parameters():
        with torch.no_grad():
            p.uniform_(-s.hidden ** -0.5, s.hidden ** -0.5, generator=gen)
    head = torch.nn.Linear(s.hidden, HEAD_CLASSES)
    x = torch.randn(s.seq, s.batch, s.input, generator=gen)
    y = torch.randint(0, HEAD_CLASSES, (s.batch,), generator=gen)
    return ref.state_dict(), head.state_dict(), x, y


def make_runner(backend: str, case: Case, inputs) -> Callable[[], None]:
    """A no-argument callable doing one timed unit of work for ``backend`` on ``case``."""
    if backend == CPP_FLOAT32:
        return make_runner("cpp", dataclasses.replace(case, dtype=torch.float32), inputs)
    if uses_autocast(case):
        run = make_runner(backend, dataclasses.replace(case, dtype=torch.float32), inputs)

        def run_autocast():
            with torch.autocast(case.device, dtype=case.dtype):
                run()
        return run_autocast
    state, head_state, x, y = inputs
    model = _model(backend, case)
    model.load_state_dict(state)
    head = torch.nn.Linear(case.shape.hidden, HEAD_CLASSES)
    head.load_state_dict(head_state)
    model.to(case.device, case.dtype)
    head.to(case.device, case.dtype)
    x = x.to(case.device, case.dtype)
    y = y.to(case.device)
    if case.mode == "fwd":
        model.eval()

        def run():
            with torch.no_grad():
                model(x)
    else:
        model.train()
        params = list(model.parameters()) + list(head.parameters())

        def run():
            _, (h_n, _) = model(x)
            loss = F.cross_entropy(head(h_n[-1]).float(), y)
            torch.autograd.grad(loss, params)
    return run
