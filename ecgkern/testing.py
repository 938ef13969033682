"""Conformance checks for any LSTM recurrence or layer, against ecgkern's reference loop.

Usable on your own kernels::

    from ecgkern.testing import check_recurrence, gradcheck_recurrence, check_module
    check_recurrence(my_recurrence)          # (xg, w_hh, h0, c0) -> (hs, cs), each [T, B, H]
    gradcheck_recurrence(my_recurrence)      # float64 torch.autograd.gradcheck
    gradgradcheck_recurrence(my_recurrence)  # float64 second order (create_graph=True backward)
    check_jvp(my_recurrence)                 # forward-mode AD against finite differences
    check_module(my_lstm_module)             # anything with nn.LSTM's attributes and parameter names
    check_backward_memory(my_recurrence)     # the backward's allocations grow linearly in T (CPU)

The truth is the reference computed in float64 on the same (up-cast) inputs; every check
raises ``AssertionError`` naming the tensor, the worst element, and by how much it is off.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from .backends import reference
from .timing import cpu_allocation_deltas

# (rtol, atol) per dtype for |actual - truth| <= atol + rtol * |truth|, truth in float64.
# bfloat16/float16 follow the rule of ``reduced_precision_tolerance`` instead.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
}
# Gradients sum over every step and batch row; float32 rounding grows with that sum.
GRAD_TOLERANCES = {**TOLERANCES, torch.float32: (1e-4, 1e-5)}

# Unit roundoff u (half the gap between 1 and the next number) of the storage formats.
UNIT_ROUNDOFF = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}
# Multiples of u * sqrt(T) allowed for outputs and for gradients (see the rule below).
OUTPUT_ROUNDOFFS, GRAD_ROUNDOFFS = 4.0, 8.0


def reduced_precision_tolerance(dtype: torch.dtype, steps: int, truth: torch.Tensor, *, grad: bool = False) -> tuple[float, float]:
    """(rtol, atol) for a bfloat16/float16 result of a ``steps``-step recurrence vs the float64 truth.

    The rule: ``tol = K * u * sqrt(T)`` with u the unit roundoff of the storage format
    (bfloat16 2^-8, float16 2^-11), T the number of steps, K = 4 for outputs (hs, cs, output,
    h_n, c_n) and K = 8 for gradients; ``rtol = tol`` and ``atol = tol * max(1, max|truth|)``.

    Why: with float32 arithmetic inside, the error comes from rounding what is stored (h_t fed
    to the next step, c_t, the activated gates and the gradients), each at most u/2 relative;
    such errors are independent from step to step, so they add like a random walk (sqrt(T))
    and the forget gate (< 1) damps them rather than letting them grow. The truth is computed
    on the same rounded inputs, so input rounding is not counted. Gradients pass through one
    more rounded product per step (and sum over steps and rows), hence the larger K and the
    scale of the largest gradient entry in atol. Measured worst cases over T = 1..140 on every
    CPU backend: 1.2 (outputs) and 2.9 (gradients) in units of u * sqrt(T).
    """
    K = GRAD_ROUNDOFFS if grad else OUTPUT_ROUNDOFFS
    tol = K * UNIT_ROUNDOFF[dtype] * max(1, steps) ** 0.5
    scale = max(1.0, float(truth.detach().abs().max())) if truth.numel() else 1.0
    return tol, tol * scale


def tolerance(dtype: torch.dtype, steps: int, truth: torch.Tensor, *, grad: bool = False) -> tuple[float, float]:
    """(rtol, atol) for a result of ``dtype`` against its float64 truth (see TOLERANCES)."""
    if dtype in UNIT_ROUNDOFF:
        return reduced_precision_tolerance(dtype, steps, truth, grad=grad)
    return (GRAD_TOLERANCES if grad else TOLERANCES)[dtype]

# (T, B, H): odd sizes on purpose (B=1, T=1, H=1, H not a multiple of 8 or 16).
DEFAULT_SHAPES: tuple[tuple[int, int, int], ...] = (
    (1, 1, 1), (1, 3, 4), (6, 1, 17), (5, 4, 8), (9, 3, 33), (20, 5, 64),
)

Recurrence = Callable[..., tuple]


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float, context: str = "") -> None:
    """Elementwise ``|actual - expected| <= atol + rtol * |expected|`` (NaN only where expected is NaN)."""
    prefix = f"{context}: " if context else ""
    if actual is None:
        raise AssertionError(f"{prefix}{name} is None, expected a tensor of shape {tuple(expected.shape)}")
    if tuple(actual.shape) != tuple(expected.shape):
        raise AssertionError(f"{prefix}{name} has shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    ok = torch.isclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
    if bool(ok.all()):
        return
    diff = (a - e).abs().nan_to_num(nan=float("inf"))
    diff[ok] = 0
    flat = int(diff.argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape)) if a.dim() else ()
    raise AssertionError(
        f"{prefix}{name} differs from the reference at {int((~ok).sum())} of {a.numel()} elements; "
        f"worst at index {index}: got {a[index].item():.10g}, expected {e[index].item():.10g} "
        f"(|diff| = {diff[index].item():.3e}; allowed atol={atol:g} + rtol={rtol:g} * |expected|)"
    )


def random_recurrence_inputs(T: int, B: int, H: int, *, dtype=torch.float32, device="cpu", seed: int = 0, scale: float = 1.0):
    """(xg, w_hh, h0, c0) drawn like a trained layer's: weights ~ U(-1/sqrt(H), 1/sqrt(H))."""
    g = torch.Generator().manual_seed(seed)
    bound = 1.0 / H ** 0.5
    xg = torch.randn(T, B, 4 * H, generator=g, dtype=torch.float64) * scale
    w_hh = (torch.rand(4 * H, H, generator=g, dtype=torch.float64) * 2 - 1) * bound
    h0 = torch.randn(B, H, generator=g, dtype=torch.float64) * 0.5
    c0 = torch.randn(B, H, generator=g, dtype=torch.float64) * 0.5
    return tuple(t.to(device=device, dtype=dtype) for t in (xg, w_hh, h0, c0))


def _run_with_grads(fn: Recurrence, inputs: Sequence[torch.Tensor], dhs: torch.Tensor, dcs: torch.Tensor):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    hs, cs = fn(*leaves)
    loss = (hs.to(dhs.dtype) * dhs).sum() + (cs.to(dcs.dtype) * dcs).sum()
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return hs, cs, grads


def check_recurrence(
    recurrence: Recurrence,
    *,
    shapes: Iterable[tuple[int, int, int]] = DEFAULT_SHAPES,
    dtypes: Iterable[torch.dtype] = (torch.float32, torch.float64),
    device="cpu",
    seed: int = 0,
    scale: float = 1.0,
    check_grads: bool = True,
) -> None:
    """Outputs (hs, cs) and gradients w.r.t. xg, w_hh, h0, c0 against the float64 reference."""
    names = ("grad xg", "grad w_hh", "grad h0", "grad c0")
    for dtype in dtypes:
        for k, (T, B, H) in enumerate(shapes):
            context = f"T={T} B={B} H={H} {dtype} on {device}"
            inputs = random_recurrence_inputs(T, B, H, dtype=dtype, device=device, seed=seed + k, scale=scale)
            truth_inputs = [t.to(torch.float64) for t in inputs]
            g = torch.Generator().manual_seed(seed + 1000 + k)
            dhs = torch.randn(T, B, H, generator=g, dtype=torch.float64).to(device)
            dcs = torch.randn(T, B, H, generator=g, dtype=torch.float64).to(device)
            if not check_grads:
                with torch.no_grad():
                    hs, cs = recurrence(*inputs)
                    ths, tcs = reference.recurrence(*truth_inputs)
            else:
                hs, cs, grads = _run_with_grads(recurrence, inputs, dhs.to(dtype), dcs.to(dtype))
                ths, tcs, tgrads = _run_with_grads(reference.recurrence, truth_inputs, dhs, dcs)
            for name, tensor in (("hs", hs), ("cs", cs)):
                if tensor.dtype != dtype or tensor.device != inputs[0].device:
                    raise AssertionError(f"{context}: {name} came back as {tensor.dtype} on {tensor.device}")
            assert_close("hs", hs, ths, *tolerance(dtype, T, ths), context)
            assert_close("cs", cs, tcs, *tolerance(dtype, T, tcs), context)
            if check_grads:
                for name, got, want in zip(names, grads, tgrads):
                    assert_close(name, got, want, *tolerance(dtype, T, want, grad=True), context)


def gradcheck_recurrence(recurrence: Recurrence, *, shapes=((1, 1, 1), (3, 2, 3), (4, 3, 5)), device="cpu", seed: int = 0,
                         fast_mode: bool = False) -> None:
    """float64 ``torch.autograd.gradcheck`` on all four inputs at small shapes.

    ``fast_mode`` checks random projections of the Jacobian instead of every entry: for slow
    implementations (an interpreter), at the cost of a weaker check.
    """
    for k, (T, B, H) in enumerate(shapes):
        inputs = [t.requires_grad_(True) for t in random_recurrence_inputs(T, B, H, dtype=torch.float64, device=device, seed=seed + k)]
        ok = torch.autograd.gradcheck(lambda *a: recurrence(*a), inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=fast_mode, raise_exception=False)
        if not ok:
            # Run again raising, so the caller sees gradcheck's own report of which entry is off.
            torch.autograd.gradcheck(lambda *a: recurrence(*a), inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=fast_mode)


def gradgradcheck_recurrence(recurrence: Recurrence, *, shapes=((1, 1, 1), (3, 2, 3)), device="cpu", seed: int = 0, fast_mode: bool = True) -> None:
    """float64 ``torch.autograd.gradgradcheck``: the backward is itself differentiable and right
    (gradient penalties, MAML). ``fast_mode`` as in ``gradcheck_recurrence`` (on by default)."""
    for k, (T, B, H) in enumerate(shapes):
        inputs = [t.requires_grad_(True) for t in random_recurrence_inputs(T, B, H, dtype=torch.float64, device=device, seed=seed + k)]
        torch.autograd.gradgradcheck(lambda *a: recurrence(*a), inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=fast_mode)


def check_jvp(recurrence: Recurrence, *, shapes=((1, 1, 1), (4, 2, 3)), device="cpu", seed: int = 0) -> None:
    """Forward-mode AD (``torch.func.jvp``) in float64 against central finite differences along
    a random direction of all four inputs; an all-zero tangent fails."""
    for k, (T, B, H) in enumerate(shapes):
        inputs = random_recurrence_inputs(T, B, H, dtype=torch.float64, device=device, seed=seed + k)
        generator = torch.Generator(device=device).manual_seed(seed + 100 + k)
        direction = tuple(torch.randn(t.shape, dtype=t.dtype, device=device, generator=generator) for t in inputs)
        _, tangents = torch.func.jvp(lambda *a: tuple(recurrence(*a)), inputs, direction)
        eps = 1e-6
        with torch.no_grad():
            plus = recurrence(*(t + eps * d for t, d in zip(inputs, direction)))
            minus = recurrence(*(t - eps * d for t, d in zip(inputs, direction)))
        for name, tangent, p, m in zip(("hs", "cs"), tangents, plus, minus):
            if bool((tangent == 0).all()):
                raise AssertionError(f"jvp: the tangent of {name} is all zero at shape (T, B, H) = {(T, B, H)}")
            assert_close(f"jvp of {name}", tangent, (p - m) / (2 * eps), 1e-6, 1e-7, f"(T, B, H) = {(T, B, H)}")


def check_backward_memory(recurrence: Recurrence, *, T: int = 256, B: int = 4, H: int = 8, max_ratio: float = 16.0) -> float | None:
    """Bytes the backward allocates on the CPU, as a multiple of xg's size; at most ``max_ratio``.

    A linear-time backward allocates a few times xg. A per-step ``xg[t]`` under autograd makes
    it quadratic (each step's backward writes a whole zero [T, B, 4H] gradient: ~T times xg),
    which no value check sees. Counted from torch's profiler (every CPU tensor allocation);
    returns None where this torch's profiler does not expose its memory events.
    """
    leaves = [t.requires_grad_(True) for t in random_recurrence_inputs(T, B, H, seed=0)]
    hs, cs = recurrence(*leaves)
    loss = hs.sum() + cs.sum()
    deltas = cpu_allocation_deltas(lambda: torch.autograd.grad(loss, leaves))
    if deltas is None:
        return None
    xg = leaves[0]
    ratio = sum(d for d in deltas if d > 0) / (xg.numel() * xg.element_size())
    assert ratio <= max_ratio, (
        f"the backward at T={T}, B={B}, H={H} allocated {ratio:.0f}x the size of xg (limit {max_ratio:g}x): "
        "its memory work grows faster than linearly in T (a per-step xg[t] under autograd does this)"
    )
    return ratio


def _reference_twin(module: torch.nn.Module):
    from .lstm import LSTM

    twin = LSTM(
        module.input_size, module.hidden_size, module.num_layers, bias=module.bias,
        batch_first=module.batch_first, bidirectional=module.bidirectional, backend="reference",
        dtype=torch.float64,
    )
    twin.load_state_dict({k: v.detach().to("cpu", torch.float64) for k, v in module.state_dict().items()})
    return twin.to(next(module.parameters()).device)


def check_module(
    module: torch.nn.Module,
    *,
    batch: int = 3,
    steps: int = 6,
    lengths: Sequence[int] | None = None,
    with_state: bool = True,
    seed: int = 0,
) -> None:
    """An nn.LSTM-like module (nn.LSTM's attributes and parameter names) against the float64
    reference: output, h_n, c_n, and gradients of input, h0, c0 and every parameter.

    The module runs in its own dtype and device, in eval mode (dropout off).
    """
    p0 = next(module.parameters())
    dtype, device = p0.dtype, p0.device
    twin = _reference_twin(module)
    module_was_training = module.training
    module.eval()
    g = torch.Generator().manual_seed(seed)
    D = 2 if module.bidirectional else 1
    shape = (batch, steps, module.input_size) if module.batch_first else (steps, batch, module.input_size)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    state = (torch.randn(module.num_layers * D, batch, module.hidden_size, generator=g, dtype=torch.float64) * 0.5,
             torch.randn(module.num_layers * D, batch, module.hidden_size, generator=g, dtype=torch.float64) * 0.5)
    kwargs = {} if lengths is None else {"lengths": torch.as_tensor(lengths)}
    context = (f"{type(module).__name__}(input_size={module.input_size}, hidden_size={module.hidden_size}, "
               f"num_layers={module.num_layers}, bidirectional={module.bidirectional}, batch_first={module.batch_first}, "
               f"bias={module.bias}) {dtype} on {device}, lengths={lengths}")

    def run(m, cast):
        # Rounded to the module's dtype first: the truth sees the very inputs the module sees.
        leaves = [t.to(dtype).to(device=device, dtype=cast).requires_grad_(True) for t in (x, *state)]
        hx = (leaves[1], leaves[2]) if with_state else None
        out, (h, c) = m(leaves[0], hx, **kwargs)
        loss = (out.double() * out.double().detach().sin()).sum() + h.double().square().sum() + c.double().sum()
        params = list(m.parameters())
        wanted = leaves if with_state else leaves[:1]
        grads = torch.autograd.grad(loss, wanted + params, allow_unused=True)
        return out, h, c, grads, [n for n, _ in m.named_parameters()]

    try:
        out, h, c, grads, names = run(module, dtype)
    finally:
        module.train(module_was_training)
    tout, th, tc, tgrads, _ = run(twin, torch.float64)
    for name, got, want in (("output", out, tout), ("h_n", h, th), ("c_n", c, tc)):
        assert_close(name, got, want, *tolerance(dtype, steps, want), context)
    grad_names = ["grad input"] + (["grad h0", "grad c0"] if with_state else []) + [f"grad {n}" for n in names]
    for name, got, want in zip(grad_names, grads, tgrads):
        assert_close(name, got, want, *tolerance(dtype, steps, want, grad=True), context)
