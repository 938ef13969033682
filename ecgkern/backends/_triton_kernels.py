"""Triton kernels of the ``triton`` backend. Import only through ``ecgkern.backends.triton``,
on first use; TRITON_INTERPRET=1 must be set before that for the interpreter (see there).

Two ways to run the recurrence, sharing the same pointwise math (``_cell_fwd``/``_cell_bwd``):

* step kernels: per time step one launch of ``step_forward`` (pre-activation gates, from a
  cuBLAS/oneDNN addmm, -> activated gates, c, h) and in reverse ``step_backward`` (dh, dc and
  the saved activations -> pre-activation gate gradients and dc_prev), each composed with the
  recurrent GEMM done by torch;
* persistent kernels (``persistent_forward``/``persistent_backward``, FlashRNN style): one
  launch runs the whole time loop for a block of batch rows, with W_hh held on-chip as four
  [H, H] tiles and the recurrent GEMM done by ``tl.dot``. Only for small hidden sizes.

Arithmetic is in ACC: float32 for float32/float16/bfloat16 tensors, float64 for float64.

Only core ``tl`` builtins are used, no ``triton.language.standard`` helpers (``tl.zeros``,
``tl.sigmoid``, ...): those are ``@triton.jit`` functions defined when triton was first
imported, and if that happened before TRITON_INTERPRET=1 was set they are not interpretable.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _sigmoid(x):
    # exp of a non-positive number only: no overflow for any finite x.
    z = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1 / (1 + z), z / (1 + z))


@triton.jit
def _tanh(x):
    z = tl.exp(-2 * tl.abs(x))
    t = (1 - z) / (1 + z)
    return tl.where(x >= 0, t, -t)


@triton.jit
def _cell_fwd(pi, pf, pg, po, c_prev):
    """Pre-activation gates and c_{t-1} -> activated i, f, g, o, c_t, h_t."""
    i = _sigmoid(pi)
    f = _sigmoid(pf)
    g = _tanh(pg)
    o = _sigmoid(po)
    c = f * c_prev + i * g
    h = o * _tanh(c)
    return i, f, g, o, c, h


@triton.jit
def _cell_bwd(dh, dc, i, f, g, o, c, c_prev):
    """dL/dh_t, dL/dc_t (both totals from above), the activated gates, c_t and c_{t-1}
    -> dL/d pre-activation gates and dL/dc_{t-1} through this step."""
    tanh_c = _tanh(c)
    dc = dc + dh * o * (1 - tanh_c * tanh_c)
    di = dc * g * i * (1 - i)
    df = dc * c_prev * f * (1 - f)
    dg = dc * i * (1 - g * g)
    do = dh * tanh_c * o * (1 - o)
    return di, df, dg, do, dc * f


# --------------------------------------------------------------------------------------------
# Step kernels: one program per BLOCK elements of the [B, H] state.


@triton.jit
def step_forward(gates, c_prev, h_out, c_out, act_out, N, H, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """gates [B, 4H] pre-activation, c_prev [B, H] -> h_out, c_out [B, H], act_out [B, 4H]."""
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = idx < N
    b = idx // H
    j = idx - b * H
    gi = b * 4 * H + j
    pi = tl.load(gates + gi, mask=m, other=0).to(ACC)
    pf = tl.load(gates + gi + H, mask=m, other=0).to(ACC)
    pg = tl.load(gates + gi + 2 * H, mask=m, other=0).to(ACC)
    po = tl.load(gates + gi + 3 * H, mask=m, other=0).to(ACC)
    cp = tl.load(c_prev + idx, mask=m, other=0).to(ACC)
    i, f, g, o, c, h = _cell_fwd(pi, pf, pg, po, cp)
    tl.store(act_out + gi, i, mask=m)
    tl.store(act_out + gi + H, f, mask=m)
    tl.store(act_out + gi + 2 * H, g, mask=m)
    tl.store(act_out + gi + 3 * H, o, mask=m)
    tl.store(c_out + idx, c, mask=m)
    tl.store(h_out + idx, h, mask=m)


@triton.jit
def step_backward(dh_out, dh_rec, dc_out, dc, act, c, c_prev, dgates, N, H, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """dh = dh_out + dh_rec, dc (carry, in/out: dc_out is added, dc_{t-1} is written back),
    act [B, 4H], c, c_prev [B, H] -> dgates [B, 4H] (pre-activation)."""
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = idx < N
    b = idx // H
    j = idx - b * H
    gi = b * 4 * H + j
    dh_t = tl.load(dh_out + idx, mask=m, other=0).to(ACC) + tl.load(dh_rec + idx, mask=m, other=0).to(ACC)
    dc_t = tl.load(dc_out + idx, mask=m, other=0).to(ACC) + tl.load(dc + idx, mask=m, other=0).to(ACC)
    i = tl.load(act + gi, mask=m, other=0).to(ACC)
    f = tl.load(act + gi + H, mask=m, other=0).to(ACC)
    g = tl.load(act + gi + 2 * H, mask=m, other=0).to(ACC)
    o = tl.load(act + gi + 3 * H, mask=m, other=0).to(ACC)
    c_t = tl.load(c + idx, mask=m, other=0).to(ACC)
    cp = tl.load(c_prev + idx, mask=m, other=0).to(ACC)
    di, df, dg, do, dc_prev = _cell_bwd(dh_t, dc_t, i, f, g, o, c_t, cp)
    tl.store(dgates + gi, di, mask=m)
    tl.store(dgates + gi + H, df, mask=m)
    tl.store(dgates + gi + 2 * H, dg, mask=m)
    tl.store(dgates + gi + 3 * H, do, mask=m)
    tl.store(dc + idx, dc_prev, mask=m)


# --------------------------------------------------------------------------------------------
# Persistent kernels: one program per BB batch rows runs all T steps; W_hh stays on-chip.
# BH = next power of two >= H (>= 16 for tl.dot); padded rows/columns are masked to zero.


@triton.jit
def _dot(a, w_tile, ACC: tl.constexpr, LOWP: tl.constexpr):
    if ACC == tl.float64:
        return tl.dot(a, w_tile, out_dtype=tl.float64)
    elif LOWP:  # float16/bfloat16 operands (the tile's dtype), float32 accumulation
        return tl.dot(a.to(w_tile.dtype), w_tile, out_dtype=tl.float32)
    else:  # exact float32 products, not TF32
        return tl.dot(a, w_tile, input_precision="ieee", out_dtype=tl.float32)


@triton.jit
def _w_tile(w, k, H, BH: tl.constexpr, TRANSPOSED: tl.constexpr, ACC: tl.constexpr, LOWP: tl.constexpr):
    """Gate k's block of w [4H, H] as a [BH, BH] tile: W_k^T (for h @ W_k^T) or W_k; kept in
    its own dtype for float16/bfloat16 (tl.dot operands), else in the arithmetic dtype."""
    r = tl.arange(0, BH)[:, None]
    s = tl.arange(0, BH)[None, :]
    m = (r < H) & (s < H)
    if TRANSPOSED:
        ptr = w + (k * H + s) * H + r
    else:
        ptr = w + (k * H + r) * H + s
    tile = tl.load(ptr, mask=m, other=0)
    if LOWP:
        return tile
    else:
        return tile.to(ACC)


@triton.jit
def _store_gates(p, i, f, g, o, H, m):
    """Store the four gate tiles of a [.., 4H] row block (gate order i, f, g, o)."""
    tl.store(p, i, mask=m)
    tl.store(p + H, f, mask=m)
    tl.store(p + 2 * H, g, mask=m)
    tl.store(p + 3 * H, o, mask=m)


@triton.jit
def persistent_forward(xg, w, h0, c0, hs, cs, acts, T, B, H,
                       BB: tl.constexpr, BH: tl.constexpr, ACC: tl.constexpr, LOWP: tl.constexpr):
    rb = tl.program_id(0) * BB + tl.arange(0, BB)
    rh = tl.arange(0, BH)
    m = (rb[:, None] < B) & (rh[None, :] < H)
    st = rb[:, None] * H + rh[None, :]          # offsets in a [B, H] state
    gt = rb[:, None] * 4 * H + rh[None, :]      # offsets of gate i in a [B, 4H] row block
    wi = _w_tile(w, 0, H, BH, True, ACC, LOWP)
    wf = _w_tile(w, 1, H, BH, True, ACC, LOWP)
    wg = _w_tile(w, 2, H, BH, True, ACC, LOWP)
    wo = _w_tile(w, 3, H, BH, True, ACC, LOWP)
    h = tl.load(h0 + st, mask=m, other=0).to(ACC)
    c = tl.load(c0 + st, mask=m, other=0).to(ACC)
    for t in range(T):
        x = xg + t * B * 4 * H + gt
        pi = tl.load(x, mask=m, other=0).to(ACC) + _dot(h, wi, ACC, LOWP)
        pf = tl.load(x + H, mask=m, other=0).to(ACC) + _dot(h, wf, ACC, LOWP)
        pg = tl.load(x + 2 * H, mask=m, other=0).to(ACC) + _dot(h, wg, ACC, LOWP)
        po = tl.load(x + 3 * H, mask=m, other=0).to(ACC) + _dot(h, wo, ACC, LOWP)
        i, f, g, o, c, h = _cell_fwd(pi, pf, pg, po, c)
        h = tl.where(m, h, 0)
        _store_gates(acts + t * B * 4 * H + gt, i, f, g, o, H, m)
        tl.store(cs + t * B * H + st, c, mask=m)
        tl.store(hs + t * B * H + st, h, mask=m)


@triton.jit
def persistent_backward(dhs, dcs, w, c0, cs, acts, dxg, dh0, dc0, T, B, H,
                        BB: tl.constexpr, BH: tl.constexpr, ACC: tl.constexpr, LOWP: tl.constexpr):
    rb = tl.program_id(0) * BB + tl.arange(0, BB)
    rh = tl.arange(0, BH)
    m = (rb[:, None] < B) & (rh[None, :] < H)
    st = rb[:, None] * H + rh[None, :]
    gt = rb[:, None] * 4 * H + rh[None, :]
    wi = _w_tile(w, 0, H, BH, False, ACC, LOWP)
    wf = _w_tile(w, 1, H, BH, False, ACC, LOWP)
    wg = _w_tile(w, 2, H, BH, False, ACC, LOWP)
    wo = _w_tile(w, 3, H, BH, False, ACC, LOWP)
    dh_rec = tl.full((BB, BH), 0, dtype=ACC)
    dc = tl.full((BB, BH), 0, dtype=ACC)
    for s in range(T):
        t = T - 1 - s
        a = acts + t * B * 4 * H + gt
        i = tl.load(a, mask=m, other=0).to(ACC)
        f = tl.load(a + H, mask=m, other=0).to(ACC)
        g = tl.load(a + 2 * H, mask=m, other=0).to(ACC)
        o = tl.load(a + 3 * H, mask=m, other=0).to(ACC)
        c = tl.load(cs + t * B * H + st, mask=m, other=0).to(ACC)
        # c_{t-1}: from cs for t > 0, from c0 at t = 0 (the other load is masked off).
        tt = t + tl.full((BB, BH), 0, dtype=tl.int32)
        cp = tl.load(cs + (t - 1) * B * H + st, mask=m & (tt > 0), other=0).to(ACC) \
            + tl.load(c0 + st, mask=m & (tt == 0), other=0).to(ACC)
        dh = tl.load(dhs + t * B * H + st, mask=m, other=0).to(ACC) + dh_rec
        dc = tl.load(dcs + t * B * H + st, mask=m, other=0).to(ACC) + dc
        di, df, dg, do, dc = _cell_bwd(dh, dc, i, f, g, o, c, cp)
        di = tl.where(m, di, 0)
        df = tl.where(m, df, 0)
        dg = tl.where(m, dg, 0)
        do = tl.where(m, do, 0)
        _store_gates(dxg + t * B * 4 * H + gt, di, df, dg, do, H, m)
        dh_rec = _dot(di, wi, ACC, LOWP) + _dot(df, wf, ACC, LOWP) + _dot(dg, wg, ACC, LOWP) + _dot(do, wo, ACC, LOWP)
    tl.store(dh0 + st, dh_rec, mask=m)
    tl.store(dc0 + st, dc, mask=m)
