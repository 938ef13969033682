"""The one way a backend registers its recurrence as ``torch.library`` custom ops.

``RecurrenceOp(...)`` defines, in the ``ecgkern`` namespace:

* ``ecgkern::<name>(inputs..., options...) -> (outputs..., saved...)``: the training forward;
  ``saved`` are what the backward needs besides inputs and outputs (e.g. activated gates);
* ``ecgkern::<name>_backward(<backward_args>..., options...) -> <backward_returns>``: the
  backward kernel, from the upstream grads (named ``d<output>``) and saved values;
* ``ecgkern::<name>_inference(inputs..., options...) -> (outputs...)``: the forward without
  saved values, chosen only when nothing can require a gradient (its autograd kernel raises);

with fake kernels, one autograd formula (``needs_input_grad``-aware; weight gradients that the
kernel does not return come from ``tails``, e.g. ``dw_hh_tail``: one GEMM over all steps), and
the slow-but-correct paths every backend shares, built on the differentiable ``reference``:

* double backward: a backward that runs with grad mode on (``create_graph=True``) is the
  reference's vjp, recomputed from the saved inputs, so it is itself differentiable;
* ``torch.func`` (grad, jacrev, vmap, jvp) and forward-mode AD go through an
  ``autograd.Function`` with ``setup_context``, a ``vmap`` rule (the vmapped dimension folds
  into the recurrence's batch when the weights are not batched) and a ``jvp`` (the reference's);
  only then, so that ``torch.compile``/``torch.export`` see the plain op.

Usage (see ``_ops.py`` for the cpp/cuda op)::

    op = RecurrenceOp("my_recurrence", inputs=("xg", "w_hh", "h0", "c0"),
                      batch_dims={"xg": 1, "h0": 0, "c0": 0}, outputs=("hs", "cs"),
                      saved=("gates",), fake=fake_fn, reference=reference.recurrence,
                      backward_args=("dhs", "dcs", "w_hh", "h0", "c0", "hs", "cs", "gates"),
                      backward_returns=("xg", "h0", "c0"), backward_fake=bwd_fake_fn,
                      tails={"w_hh": dw_hh_tail})
    op.register_kernels("cpu", forward=fwd, backward=bwd, inference=None)
    hs, cs = op(xg, w_hh, h0, c0)

Every output and saved value has its batch dimension at 1 ([T, B, ...]).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch.autograd import forward_ad

from .. import _build

_LIB = torch.library.Library("ecgkern", "DEF")  # keep a reference: the ops live as long as it

_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}
_AUTOCAST_KEYS = {"cpu": "AutocastCPU", "cuda": "AutocastCUDA"}


def _autocast_kernel(op, device_type: str) -> Callable:
    """The op under ``torch.autocast``, as nn.LSTM runs there: every floating-point tensor argument
    except float64 is cast to the autocast dtype (casts autograd differentiates: float32 leaves
    get float32 gradients), then the op runs with autocast off. The layer casts before it calls
    a backend; this covers the ops called directly and graphs that hold them."""
    def kernel(*args):
        dtype = torch.get_autocast_dtype(device_type)
        args = tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dtype != torch.float64 else a
                     for a in args)
        with torch.autocast(device_type, enabled=False):
            return op(*args)
    return kernel


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b``; a bfloat16/float16 GEMM the CPU has no instructions for runs in float32 and is
    rounded once (see ``_build.cpu_gemm_is_fast``), which is what the 16-bit GEMM computes."""
    if a.device.type == "cpu" and not _build.cpu_gemm_is_fast(a.dtype):
        return (a.float() @ b.float()).to(a.dtype)
    return a @ b


def dw_hh_tail(values: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """dW_hh = sum over steps of dgates_t^T h_{t-1}: ONE GEMM over all steps.

    Needs ``dxg`` [T, B, 4H] (the pre-activation gate gradients), ``h0`` [B, P], ``hs`` [T, B, P].
    """
    dxg, h0, hs = values["dxg"], values["h0"], values["hs"]
    h_prev = torch.cat((h0.unsqueeze(0), hs[:-1]))
    return matmul(dxg.reshape(-1, dxg.shape[-1]).t(), h_prev.reshape(-1, h_prev.shape[-1]))


def fake_states_and_gates(xg, w_hh, h0, c0, *options):
    """Fake forward of the plain LSTM recurrence: hs, cs [T, B, H] and gates [T, B, 4H]."""
    T, B, _ = xg.shape
    H = w_hh.shape[1]
    return xg.new_empty(T, B, H), xg.new_empty(T, B, H), torch.empty_like(xg)


def fake_input_grads(dhs, dcs, w_hh, h0, c0, hs, cs, gates, *options):
    """Fake backward returning (dxg, dh0, dc0); dW_hh comes from ``dw_hh_tail``."""
    return torch.empty_like(gates), torch.empty_like(h0), torch.empty_like(c0)


def lstm_recurrence_op(name: str, *, options: Sequence[tuple[str, str]] = (), kernel_returns_dw_hh: bool = False,
                       backward_fake: Callable | None = None) -> RecurrenceOp:
    """The plain LSTM contract (xg, w_hh, h0, c0) -> (hs, cs) saving the activated gates, whose
    backward kernel takes (dhs, dcs, w_hh, h0, c0, hs, cs, gates) and returns dxg, [dw_hh,]
    dh0, dc0; without ``kernel_returns_dw_hh``, dW_hh is ``dw_hh_tail``."""
    from . import reference  # the oracle: plain torch, imports nothing of the op layer

    returns = ("xg", "w_hh", "h0", "c0") if kernel_returns_dw_hh else ("xg", "h0", "c0")
    return RecurrenceOp(
        name, options=options, fake=fake_states_and_gates, reference=reference.recurrence,
        backward_args=("dhs", "dcs", "w_hh", "h0", "c0", "hs", "cs", "gates"), backward_returns=returns,
        backward_fake=backward_fake or fake_input_grads, tails={} if kernel_returns_dw_hh else {"w_hh": dw_hh_tail},
    )


def no_grad_can_reach(tensors) -> bool:
    """True when no gradient can ever flow through a call on ``tensors`` (None entries allowed).

    Grad mode off is not enough under ``torch.jit.trace`` or ``torch.export``: the graph they
    record may be trained later, so there a gradient can reach whenever an input (e.g. a
    parameter) requires grad.
    """
    if not any(t is not None and t.requires_grad for t in tensors):
        return True
    if torch.is_grad_enabled():
        return False
    return not (torch.jit.is_tracing() or torch.compiler.is_exporting())


def _functorch_active() -> bool:
    return torch._C._functorch.maybe_current_level() is not None


def _forward_ad_active(tensors) -> bool:
    return forward_ad._current_level >= 0 and any(forward_ad.unpack_dual(t).tangent is not None for t in tensors)


class RecurrenceOp:
    """One recurrence as custom ops; call it like the backend's ``recurrence``."""

    def __init__(
        self,
        name: str,
        *,
        inputs: Sequence[str] = ("xg", "w_hh", "h0", "c0"),
        batch_dims: Mapping[str, int] | None = None,
        outputs: Sequence[str] = ("hs", "cs"),
        saved: Sequence[str] = ("gates",),
        options: Sequence[tuple[str, str]] = (),
        fake: Callable,
        reference: Callable,
        backward_args: Sequence[str],
        backward_returns: Sequence[str],
        backward_fake: Callable,
        tails: Mapping[str, Callable] | None = None,
    ):
        """
        name: op name in the ``ecgkern`` namespace.
        inputs: the differentiable tensor inputs, in order.
        batch_dims: for each input that carries the batch, its batch dimension (the others are
            weights, shared by every sequence); default xg: 1, h0: 0, c0: 0.
        outputs / saved: names of the public outputs and of the extra values the backward needs.
        options: non-tensor arguments after the tensors, as (name, schema type), e.g.
            (("persistent", "bool"),); passed to every kernel, keyword arguments of ``__call__``.
        fake: (*inputs, *options) -> (*outputs, *saved), empty tensors of the right shapes.
        reference: (*inputs) -> outputs, differentiable plain torch (the slow-but-correct paths).
        backward_args: names the backward kernel takes: ``d<output>`` for upstream grads, input,
            output and saved names.
        backward_returns: names whose grads the backward kernel returns, in order: inputs, or an
            intermediate that ``tails`` differentiate further (e.g. ``xg`` of a fused projection).
        backward_fake: like the backward kernel, returning empty tensors.
        tails: input name -> fn(values) computing that input's grad after the kernel, only when
            needed; ``values`` maps every name above and ``d<input>`` for returned grads.
        """
        self.name = name
        self.inputs = tuple(inputs)
        self.batch_dims = dict(batch_dims if batch_dims is not None else {"xg": 1, "h0": 0, "c0": 0})
        self.outputs = tuple(outputs)
        self.saved = tuple(saved)
        self.options = tuple(options)
        self.reference = reference
        self.backward_args = tuple(backward_args)
        self.backward_returns = tuple(backward_returns)
        self.tails = dict(tails or {})
        missing = set(self.inputs) - set(self.backward_returns) - set(self.tails)
        if missing:
            raise ValueError(f"{name}: no gradient for inputs {sorted(missing)} (add them to backward_returns or tails)")

        opts = "".join(f", {kind} {option}" for option, kind in self.options)
        tensors = ", ".join(f"Tensor {n}" for n in self.inputs)
        ret = lambda k: "(" + ", ".join(["Tensor"] * k) + ")"
        _LIB.define(f"{name}({tensors}{opts}) -> {ret(len(self.outputs) + len(self.saved))}")
        _LIB.define(f"{name}_inference({tensors}{opts}) -> {ret(len(self.outputs))}")
        bwd = ", ".join(f"Tensor {n}" for n in self.backward_args)
        _LIB.define(f"{name}_backward({bwd}{opts}) -> {ret(len(self.backward_returns))}")
        namespace = torch.ops.ecgkern
        self.op = getattr(namespace, name).default
        self.inference_op = getattr(namespace, f"{name}_inference").default
        self.backward_op = getattr(namespace, f"{name}_backward").default
        n_out = len(self.outputs)
        torch.library.register_fake(f"ecgkern::{name}", fake, lib=_LIB)
        torch.library.register_fake(f"ecgkern::{name}_inference", lambda *a: tuple(fake(*a)[:n_out]), lib=_LIB)
        torch.library.register_fake(f"ecgkern::{name}_backward", backward_fake, lib=_LIB)
        torch.library.register_autograd(f"ecgkern::{name}", self._autograd_backward,
                                        setup_context=self._setup_context, lib=_LIB)
        torch.library.register_autograd(f"ecgkern::{name}_inference", self._inference_backward,
                                        setup_context=lambda ctx, inputs, output: None, lib=_LIB)
        for device_type in _DISPATCH_KEYS:
            _LIB.impl(name, _autocast_kernel(self.op, device_type), _AUTOCAST_KEYS[device_type])
            _LIB.impl(f"{name}_inference", _autocast_kernel(self.inference_op, device_type), _AUTOCAST_KEYS[device_type])
        self._has_inference: set[str] = set()

    # -- kernels --------------------------------------------------------------------------------

    def register_kernels(self, device_type: str, *, forward: Callable, backward: Callable,
                         inference: Callable | None = None) -> None:
        """Python kernels for one device type (they may call an extension's private ops).
        ``inference`` defaults to ``forward`` without the saved values."""
        key = _DISPATCH_KEYS[device_type]
        n_out = len(self.outputs)
        _LIB.impl(self.name, forward, key)
        _LIB.impl(f"{self.name}_backward", backward, key)
        if inference is not None:
            self._has_inference.add(device_type)
        _LIB.impl(f"{self.name}_inference", inference or (lambda *a: tuple(forward(*a)[:n_out])), key)

    # -- the call ------------------------------------------------------------------------------

    def __call__(self, *tensors: torch.Tensor, **options):
        tensors = tuple(t.contiguous() for t in tensors)
        opts = tuple(options[name] for name, _ in self.options)
        n_out = len(self.outputs)
        if not torch.compiler.is_compiling() and (_functorch_active() or _forward_ad_active(tensors)):
            return _TransformableRecurrence.apply(self, opts, *tensors)[:n_out]
        if tensors[0].device.type in self._has_inference and no_grad_can_reach(tensors):
            return self.inference_op(*tensors, *opts)
        return self.op(*tensors, *opts)[:n_out]

    # -- autograd ------------------------------------------------------------------------------

    def _setup_context(self, ctx, inputs, output):
        n_in = len(self.inputs)
        ctx.options = tuple(inputs[n_in:])
        ctx.save_for_backward(*inputs[:n_in], *output)
        # The saved outputs are never differentiated: no zero grads filled for them.
        ctx.set_materialize_grads(False)

    def _autograd_backward(self, ctx, *grads):
        return self.backward(ctx.saved_tensors, grads, ctx.needs_input_grad, ctx.options) + (None,) * len(ctx.options)

    def _inference_backward(self, ctx, *grads):
        raise RuntimeError(
            f"ecgkern::{self.name}_inference is the forward without saved values and has no gradient; "
            "call the backend's recurrence (it picks the differentiable op when an input requires grad)"
        )

    def backward(self, saved: Sequence[torch.Tensor], grads, needs_input_grad, options) -> tuple:
        """Grads of every input (None where not needed) from the saved (inputs, outputs, saved)."""
        n_in, n_out = len(self.inputs), len(self.outputs)
        inputs = tuple(saved[:n_in])
        needs = tuple(needs_input_grad[:n_in])
        grads = tuple(grads[:n_out])
        if torch.is_grad_enabled() or _functorch_active():
            # create_graph=True (or a torch.func transform): a differentiable backward.
            return self.reference_vjp(inputs, grads, needs)
        values = dict(zip(self.inputs + self.outputs + self.saved, saved))
        for name, g, out in zip(self.outputs, grads, saved[n_in:n_in + n_out]):
            values[f"d{name}"] = torch.zeros_like(out) if g is None else g.contiguous()
        returned = self.backward_op(*(values[n] for n in self.backward_args), *options)
        values.update({f"d{n}": g for n, g in zip(self.backward_returns, returned)})
        result = []
        for name, need in zip(self.inputs, needs):
            if not need:
                result.append(None)
            elif name in self.backward_returns:
                result.append(values[f"d{name}"])
            else:
                result.append(self.tails[name](values))
        return tuple(result)

    def reference_vjp(self, inputs, grads, needs) -> tuple:
        """The reference's vjp at ``inputs``: differentiable (itself traced by autograd) and
        composable with torch.func; only the needed inputs are differentiated."""
        wanted = [i for i, need in enumerate(needs) if need]
        if not wanted:
            return (None,) * len(inputs)

        def run(*diff):
            args = list(inputs)
            for i, t in zip(wanted, diff):
                args[i] = t
            return tuple(self.reference(*args))

        outs, vjp_fn = torch.func.vjp(run, *(inputs[i] for i in wanted))
        cotangents = tuple(torch.zeros_like(o) if g is None else g for o, g in zip(outs, grads))
        result = [None] * len(inputs)
        for i, g in zip(wanted, vjp_fn(cotangents)):
            result[i] = g
        return tuple(result)

    # -- torch.func ----------------------------------------------------------------------------

    def vmap(self, in_dims, options, tensors):
        """Batching rule: fold the vmapped dimension into the recurrence batch when no weight is
        vmapped (one call, outputs' batch dim split back); else one call per vmapped slice."""
        size = next(t.shape[d] for t, d in zip(tensors, in_dims) if d is not None)
        n_all = len(self.outputs) + len(self.saved)
        weights_batched = any(d is not None for name, d in zip(self.inputs, in_dims) if name not in self.batch_dims)
        if weights_batched:
            moved = [t if d is None else t.movedim(d, 0) for t, d in zip(tensors, in_dims)]
            slices = [_TransformableRecurrence.apply(self, options, *(t if d is None else t[k] for t, d in zip(moved, in_dims)))
                      for k in range(size)]
            return tuple(torch.stack([s[j] for s in slices]) for j in range(n_all)), (0,) * n_all
        folded = []
        for name, t, d in zip(self.inputs, tensors, in_dims):
            if name not in self.batch_dims:
                folded.append(t)
                continue
            b = self.batch_dims[name]
            t = t.unsqueeze(0).expand(size, *t.shape) if d is None else t.movedim(d, 0)
            t = t.movedim(0, b)  # [.., N, B, ..]
            folded.append(t.reshape(*t.shape[:b], -1, *t.shape[b + 2:]).contiguous())
        out = _TransformableRecurrence.apply(self, options, *folded)
        out = tuple(o.reshape(o.shape[0], size, -1, *o.shape[2:]) for o in out)
        return out, (1,) * n_all

    def jvp(self, inputs, tangents) -> tuple:
        """The reference's jvp at ``inputs`` along ``tangents`` (None: zero)."""
        tangents = tuple(torch.zeros_like(x) if t is None else t for x, t in zip(inputs, tangents))
        run = lambda *a: tuple(self.reference(*a))
        if _functorch_active():
            return tuple(torch.func.jvp(run, inputs, tangents)[1])
        # Plain forward AD allows no nested level: J v as the vjp of the (linear) vjp u -> J^T u.
        with torch.enable_grad():
            primals = [x.detach().requires_grad_() for x in inputs]
            outs = run(*primals)
            cotangents = [torch.zeros_like(o, requires_grad=True) for o in outs]
            vjps = torch.autograd.grad(outs, primals, cotangents, create_graph=True, allow_unused=True)
            pairs = [(g, t) for g, t in zip(vjps, tangents) if g is not None and g.requires_grad]
            result = torch.autograd.grad([g for g, _ in pairs], cotangents, [t for _, t in pairs], allow_unused=True)
        return tuple(torch.zeros_like(o) if r is None else r.detach() for o, r in zip(outs, result))


class _TransformableRecurrence(torch.autograd.Function):
    """The op for torch.func transforms and forward-mode AD (see the module docstring)."""

    @staticmethod
    def forward(op: RecurrenceOp, options, *tensors):
        return tuple(op.op(*tensors, *options))

    @staticmethod
    def setup_context(ctx, inputs, output):
        op, options, *tensors = inputs
        ctx.op, ctx.options = op, options
        ctx.save_for_backward(*tensors, *output)
        ctx.save_for_forward(*tensors)
        ctx.mark_non_differentiable(*output[len(op.outputs):])
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, *grads):
        op = ctx.op
        return (None, None) + op.backward(ctx.saved_tensors, grads, ctx.needs_input_grad[2:], ctx.options)

    @staticmethod
    def jvp(ctx, _op_tangent, _options_tangent, *tangents):
        op = ctx.op
        inputs = ctx.saved_tensors[:len(op.inputs)]
        out = op.jvp(inputs, tangents)
        return (*out, *(None for _ in op.saved))

    @staticmethod
    def vmap(info, in_dims, op, options, *tensors):
        return op.vmap(in_dims[2:], options, tensors)
