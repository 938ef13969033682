// CUDA kernels of the ecgkern LSTM recurrence. No torch headers: plain nvcc compiles this file
// (.ci/check_cuda_build.sh does, for sm_80 and sm_90). The torch binding is lstm_cuda.cpp.
//
// Strategy (a), any hidden size: per step the binding runs the recurrent GEMM through ATen
// (cuBLAS), then ONE fused pointwise kernel does the gate math (forward) or the gate-gradient
// math (backward). For float16/bfloat16 those kernels also keep float32 copies of h_t and of
// the gate gradients, the operands of the next float32 GEMM, as the persistent kernels do.
// Strategy (b), hidden <= 64: one persistent launch runs every step. One block per batch row
// (rows are independent, so blocks never wait on each other), W_hh held in registers, the
// state in shared memory, two block barriers per step.
//
// Storage may be float64, float32, float16 or bfloat16; arithmetic is in double for float64
// and in float otherwise. No fast-math: expf/tanhf are the accurate library functions.
#include "lstm_cuda_kernels.cuh"

#include <cmath>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace ecgkern_cuda {
namespace {

// ---- storage <-> accumulate conversions ------------------------------------------------------

template <typename S> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename S> using acc_t = typename AccOf<S>::type;

__host__ __device__ __forceinline__ float load(const float* p) { return *p; }
__host__ __device__ __forceinline__ double load(const double* p) { return *p; }
__device__ __forceinline__ float load(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }

__host__ __device__ __forceinline__ void store(float* p, float v) { *p = v; }
__host__ __device__ __forceinline__ void store(double* p, double v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// ---- overflow-safe activations ---------------------------------------------------------------
// exp is only ever taken of a non-positive number, so it cannot overflow for any input.

__host__ __device__ __forceinline__ float sigmoid(float x) {
  const float z = expf(-fabsf(x));
  return x >= 0.0f ? 1.0f / (1.0f + z) : z / (1.0f + z);
}
__host__ __device__ __forceinline__ double sigmoid(double x) {
  const double z = exp(-fabs(x));
  return x >= 0.0 ? 1.0 / (1.0 + z) : z / (1.0 + z);
}
__host__ __device__ __forceinline__ float tanh_(float x) { return tanhf(x); }
__host__ __device__ __forceinline__ double tanh_(double x) { return tanh(x); }

// ---- the cell, once, for both strategies -----------------------------------------------------

template <typename A> struct CellForward { A i, f, g, o, c, h; };

// Pre-activations in, activated gates and the new state out.
template <typename A>
__host__ __device__ __forceinline__ CellForward<A> cell_forward(A pi, A pf, A pg, A po, A c_prev) {
  CellForward<A> r;
  r.i = sigmoid(pi);
  r.f = sigmoid(pf);
  r.g = tanh_(pg);
  r.o = sigmoid(po);
  r.c = r.f * c_prev + r.i * r.g;
  r.h = r.o * tanh_(r.c);
  return r;
}

template <typename A> struct CellBackward { A di, df, dg, d_o, dc_prev; };

// dh, dc: total upstream gradients of h_t and c_t (output grads plus the recurrent ones; dc
// does not yet include the path through h_t = o * tanh(c_t), added here). Returns the
// gradients of the four pre-activations and of c_{t-1}.
template <typename A>
__host__ __device__ __forceinline__ CellBackward<A> cell_backward(A i, A f, A g, A o, A c, A c_prev, A dh, A dc) {
  const A one = A(1);
  const A tc = tanh_(c);
  dc += dh * o * (one - tc * tc);
  CellBackward<A> r;
  r.di = dc * g * i * (one - i);
  r.df = dc * c_prev * f * (one - f);
  r.dg = dc * i * (one - g * g);
  r.d_o = dh * tc * o * (one - o);
  r.dc_prev = dc * f;
  return r;
}

// ---- strategy (a): fused pointwise kernels ---------------------------------------------------

constexpr int kPointwiseThreads = 256;

// Grid-stride loop over the B*H (batch row b, unit j) pairs, calling f(idx, row): idx = b*H + j
// indexes [B, H] tensors, row = b*4H + j indexes [B, 4H] ones (gate k of unit j at row + k*H).
template <typename F>
__device__ __forceinline__ void for_each_unit(int64_t batch, int64_t hidden, F&& f) {
  const int64_t n = batch * hidden;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += stride) {
    const int64_t b = idx / hidden;
    f(idx, b * 3 * hidden + idx);  // b*4H + j = b*3H + (b*H + j)
  }
}

template <typename S>
__global__ void __launch_bounds__(kPointwiseThreads)
pointwise_forward_kernel(const S* __restrict__ xg, const acc_t<S>* __restrict__ hw, acc_t<S>* __restrict__ c_state,
                         acc_t<S>* __restrict__ h_state, S* __restrict__ h_out, S* __restrict__ c_out,
                         S* __restrict__ gates, int64_t batch, int64_t hidden) {
  using A = acc_t<S>;
  for_each_unit(batch, hidden, [&](int64_t idx, int64_t row) {
    const A pi = load(xg + row) + load(hw + row);
    const A pf = load(xg + row + hidden) + load(hw + row + hidden);
    const A pg = load(xg + row + 2 * hidden) + load(hw + row + 2 * hidden);
    const A po = load(xg + row + 3 * hidden) + load(hw + row + 3 * hidden);
    const CellForward<A> r = cell_forward(pi, pf, pg, po, c_state[idx]);
    c_state[idx] = r.c;
    if (h_state != nullptr) h_state[idx] = r.h;
    store(c_out + idx, r.c);
    store(h_out + idx, r.h);
    store(gates + row, r.i);
    store(gates + row + hidden, r.f);
    store(gates + row + 2 * hidden, r.g);
    store(gates + row + 3 * hidden, r.o);
  });
}

template <typename S>
__global__ void __launch_bounds__(kPointwiseThreads)
pointwise_backward_kernel(const S* __restrict__ dh_out, const acc_t<S>* __restrict__ dh_rec,
                          const S* __restrict__ dc_out, acc_t<S>* __restrict__ dc_state, const S* __restrict__ gates,
                          const S* __restrict__ c, const S* __restrict__ c_prev, S* __restrict__ dxg,
                          acc_t<S>* __restrict__ dgates_state, int64_t batch, int64_t hidden) {
  using A = acc_t<S>;
  for_each_unit(batch, hidden, [&](int64_t idx, int64_t row) {
    const A dh = load(dh_out + idx) + (dh_rec != nullptr ? dh_rec[idx] : A(0));
    const A dc = load(dc_out + idx) + dc_state[idx];
    const CellBackward<A> r = cell_backward(load(gates + row), load(gates + row + hidden), load(gates + row + 2 * hidden),
                                            load(gates + row + 3 * hidden), load(c + idx), load(c_prev + idx), dh, dc);
    dc_state[idx] = r.dc_prev;
    store(dxg + row, r.di);
    store(dxg + row + hidden, r.df);
    store(dxg + row + 2 * hidden, r.dg);
    store(dxg + row + 3 * hidden, r.d_o);
    if (dgates_state != nullptr) {
      dgates_state[row] = r.di;
      dgates_state[row + hidden] = r.df;
      dgates_state[row + 2 * hidden] = r.dg;
      dgates_state[row + 3 * hidden] = r.d_o;
    }
  });
}

unsigned pointwise_blocks(int64_t n) {
  const int64_t blocks = (n + kPointwiseThreads - 1) / kPointwiseThreads;
  return static_cast<unsigned>(blocks < (1 << 20) ? blocks : (1 << 20));  // grid-stride beyond
}

// ---- strategy (b): persistent kernels --------------------------------------------------------

// Four consecutive accumulate-type values from 16-byte-aligned shared memory.
__device__ __forceinline__ void load4(const float* p, float& a, float& b, float& c, float& d) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  a = v.x; b = v.y; c = v.z; d = v.w;
}
__device__ __forceinline__ void load4(const double* p, double& a, double& b, double& c, double& d) {
  const double2 v0 = *reinterpret_cast<const double2*>(p);
  const double2 v1 = *reinterpret_cast<const double2*>(p + 2);
  a = v0.x; b = v0.y; c = v1.x; d = v1.y;
}

// sum_k w[k] * v[k] over KH entries of registers w and shared memory v, four independent
// chains so that the FMAs do not wait on each other.
template <int KH, typename A>
__device__ __forceinline__ A dot_padded(const A (&w)[KH], const A* v, A init) {
  A s0 = init, s1 = A(0), s2 = A(0), s3 = A(0);
#pragma unroll
  for (int k = 0; k < KH; k += 4) {
    A v0, v1, v2, v3;
    load4(v + k, v0, v1, v2, v3);
    s0 += w[k] * v0;
    s1 += w[k + 1] * v1;
    s2 += w[k + 2] * v2;
    s3 += w[k + 3] * v3;
  }
  return (s0 + s1) + (s2 + s3);
}

// Forward. Block = one batch row, 4*KH threads: thread (gate, j) = (tid / KH, tid % KH) owns
// row gate*H + j of W_hh (zero-padded to KH columns) and computes that pre-activation; then
// threads j < H update unit j's cell. Padding rows/columns are zero, so they add nothing.
template <typename S, int KH>
__global__ void __launch_bounds__(4 * KH)
persistent_forward_kernel(const S* __restrict__ xg, const S* __restrict__ w_hh, const S* __restrict__ h0,
                          const S* __restrict__ c0, S* __restrict__ hs, S* __restrict__ cs, S* __restrict__ gates,
                          int64_t steps, int64_t batch, int hidden) {
  using A = acc_t<S>;
  __shared__ __align__(16) A h_sm[KH];        // h_{t-1}, zero past hidden
  __shared__ __align__(16) A gate_sm[4 * KH];  // activated gates of this step, padded layout

  const int tid = threadIdx.x;
  const int gate = tid / KH;
  const int j = tid - gate * KH;
  const bool valid = j < hidden;
  const int64_t b = blockIdx.x;
  const int64_t G = 4 * static_cast<int64_t>(hidden);
  const int64_t col = static_cast<int64_t>(gate) * hidden + j;  // this thread's gate row / xg column

  A w[KH];
#pragma unroll
  for (int k = 0; k < KH; ++k) w[k] = (valid && k < hidden) ? A(load(w_hh + col * hidden + k)) : A(0);

  A c = A(0);
  if (tid < KH) h_sm[tid] = tid < hidden ? A(load(h0 + b * hidden + tid)) : A(0);
  if (tid < hidden) c = load(c0 + b * hidden + tid);
  A x_next = valid ? A(load(xg + b * G + col)) : A(0);
  __syncthreads();

  for (int64_t t = 0; t < steps; ++t) {
    const A x = x_next;
    if (valid && t + 1 < steps) x_next = load(xg + ((t + 1) * batch + b) * G + col);  // prefetch
    const A pre = dot_padded<KH>(w, h_sm, x);
    const A act = gate == 2 ? tanh_(pre) : sigmoid(pre);
    gate_sm[tid] = act;
    if (valid) store(gates + (t * batch + b) * G + col, act);
    __syncthreads();  // gates complete; every read of h_sm for this step is done
    if (tid < hidden) {
      const A i = gate_sm[tid], f = gate_sm[KH + tid], g = gate_sm[2 * KH + tid], o = gate_sm[3 * KH + tid];
      c = f * c + i * g;
      const A h = o * tanh_(c);
      h_sm[tid] = h;
      const int64_t at = (t * batch + b) * hidden + tid;
      store(hs + at, h);
      store(cs + at, c);
    }
    __syncthreads();  // h_t complete before the next step reads it; gate_sm free again
  }
}

// Backward. Block = one batch row, 4*KH threads. Threads j < H do unit j's cell backward and
// write the four pre-activation gradients to dxg and to dg_sm. Then dh_rec = dgates @ W_hh:
// thread (part, k) = (tid / KH, tid % KH) holds column k of gate block `part` of W_hh and sums
// over its KH rows; the four partial sums per k meet in part_sm, read by the next step.
template <typename S, int KH>
__global__ void __launch_bounds__(4 * KH)
persistent_backward_kernel(const S* __restrict__ dhs, const S* __restrict__ dcs, const S* __restrict__ w_hh,
                           const S* __restrict__ c0, const S* __restrict__ cs, const S* __restrict__ gates,
                           S* __restrict__ dxg, S* __restrict__ dh0, S* __restrict__ dc0,
                           int64_t steps, int64_t batch, int hidden) {
  using A = acc_t<S>;
  __shared__ __align__(16) A dg_sm[4 * KH];    // gate gradients of this step, zero in padding
  __shared__ __align__(16) A part_sm[4 * KH];  // part_sm[part * KH + k]: partial dh_rec[k]

  const int tid = threadIdx.x;
  const int part = tid / KH;
  const int k = tid - part * KH;
  const int64_t b = blockIdx.x;
  const int64_t G = 4 * static_cast<int64_t>(hidden);
  const int H = hidden;

  A w[KH];  // w[r] = W_hh[part*H + r][k]
#pragma unroll
  for (int r = 0; r < KH; ++r) w[r] = (k < H && r < H) ? A(load(w_hh + (static_cast<int64_t>(part) * H + r) * H + k)) : A(0);

  dg_sm[tid] = A(0);
  part_sm[tid] = A(0);  // no recurrent gradient into the last step

  // Unit tid's inputs of step t, loaded one step ahead.
  const bool unit = tid < H;
  A gi = 0, gf = 0, gg = 0, go = 0, c_t = 0, c_prev = 0, dh_o = 0, dc_o = 0;
  auto fetch = [&](int64_t t) {
    const int64_t row = (t * batch + b) * G + tid;
    const int64_t at = (t * batch + b) * H + tid;
    gi = load(gates + row);
    gf = load(gates + row + H);
    gg = load(gates + row + 2 * H);
    go = load(gates + row + 3 * H);
    c_t = load(cs + at);
    c_prev = t > 0 ? A(load(cs + at - batch * H)) : A(load(c0 + b * H + tid));
    dh_o = load(dhs + at);
    dc_o = load(dcs + at);
  };
  if (unit) fetch(steps - 1);
  A dc_carry = A(0);  // f_{t+1} * dc_{t+1}
  __syncthreads();

  for (int64_t t = steps - 1; t >= 0; --t) {
    if (unit) {
      const A i = gi, f = gf, g = gg, o = go, cc = c_t, cp = c_prev, dho = dh_o, dco = dc_o;
      if (t > 0) fetch(t - 1);  // prefetch
      const A dh = dho + ((part_sm[tid] + part_sm[KH + tid]) + (part_sm[2 * KH + tid] + part_sm[3 * KH + tid]));
      const CellBackward<A> r = cell_backward(i, f, g, o, cc, cp, dh, dco + dc_carry);
      dc_carry = r.dc_prev;
      dg_sm[tid] = r.di;
      dg_sm[KH + tid] = r.df;
      dg_sm[2 * KH + tid] = r.dg;
      dg_sm[3 * KH + tid] = r.d_o;
      const int64_t row = (t * batch + b) * G + tid;
      store(dxg + row, r.di);
      store(dxg + row + H, r.df);
      store(dxg + row + 2 * H, r.dg);
      store(dxg + row + 3 * H, r.d_o);
    }
    __syncthreads();  // dg_sm complete; every read of part_sm for this step is done
    part_sm[tid] = dot_padded<KH>(w, dg_sm + part * KH, A(0));
    __syncthreads();  // dh_rec partials complete before the next step (or the epilogue) reads them
  }
  if (unit) {
    const A dh = (part_sm[tid] + part_sm[KH + tid]) + (part_sm[2 * KH + tid] + part_sm[3 * KH + tid]);
    store(dh0 + b * H + tid, dh);
    store(dc0 + b * H + tid, dc_carry);
  }
}

}  // namespace
}  // namespace ecgkern_cuda

// Everything above is the kernels; tests/cuda_emulation runs them on the CPU (float32/float64)
// by including this file with ECGKERN_CUDA_KERNELS_ONLY defined. Below: dispatch and launches.
#ifndef ECGKERN_CUDA_KERNELS_ONLY
namespace ecgkern_cuda {
namespace {

// ---- dispatch ----------------------------------------------------------------------------

template <typename T> struct Tag { using type = T; };

template <typename F>
cudaError_t dispatch(Dtype dtype, F&& f) {
  switch (dtype) {
    case Dtype::f32: return f(Tag<float>{});
    case Dtype::f64: return f(Tag<double>{});
    case Dtype::f16: return f(Tag<__half>{});
    case Dtype::bf16: return f(Tag<__nv_bfloat16>{});
  }
  return cudaErrorInvalidValue;
}

bool sizes_ok(int64_t batch, int64_t hidden) { return batch >= 1 && hidden >= 1; }

bool persistent_sizes_ok(int64_t steps, int64_t batch, int64_t hidden) {
  return steps >= 1 && batch >= 1 && batch <= 0x7fffffff && persistent_fits(hidden);
}

template <typename S, int KH>
cudaError_t launch_persistent_forward(const PersistentForwardArgs& a, cudaStream_t stream) {
  persistent_forward_kernel<S, KH><<<static_cast<unsigned>(a.batch), 4 * KH, 0, stream>>>(
      static_cast<const S*>(a.xg), static_cast<const S*>(a.w_hh), static_cast<const S*>(a.h0),
      static_cast<const S*>(a.c0), static_cast<S*>(a.hs), static_cast<S*>(a.cs), static_cast<S*>(a.gates),
      a.steps, a.batch, static_cast<int>(a.hidden));
  return cudaGetLastError();
}

template <typename S, int KH>
cudaError_t launch_persistent_backward(const PersistentBackwardArgs& a, cudaStream_t stream) {
  persistent_backward_kernel<S, KH><<<static_cast<unsigned>(a.batch), 4 * KH, 0, stream>>>(
      static_cast<const S*>(a.dhs), static_cast<const S*>(a.dcs), static_cast<const S*>(a.w_hh),
      static_cast<const S*>(a.c0), static_cast<const S*>(a.cs), static_cast<const S*>(a.gates),
      static_cast<S*>(a.dxg), static_cast<S*>(a.dh0), static_cast<S*>(a.dc0), a.steps, a.batch,
      static_cast<int>(a.hidden));
  return cudaGetLastError();
}

}  // namespace

cudaError_t pointwise_forward(Dtype dtype, const PointwiseForwardArgs& a, cudaStream_t stream) {
  if (!sizes_ok(a.batch, a.hidden)) return cudaErrorInvalidValue;
  return dispatch(dtype, [&](auto tag) {
    using S = typename decltype(tag)::type;
    pointwise_forward_kernel<S><<<pointwise_blocks(a.batch * a.hidden), kPointwiseThreads, 0, stream>>>(
        static_cast<const S*>(a.xg), static_cast<const acc_t<S>*>(a.hw), static_cast<acc_t<S>*>(a.c_state),
        static_cast<acc_t<S>*>(a.h_state), static_cast<S*>(a.h_out), static_cast<S*>(a.c_out),
        static_cast<S*>(a.gates_out), a.batch, a.hidden);
    return cudaGetLastError();
  });
}

cudaError_t pointwise_backward(Dtype dtype, const PointwiseBackwardArgs& a, cudaStream_t stream) {
  if (!sizes_ok(a.batch, a.hidden)) return cudaErrorInvalidValue;
  return dispatch(dtype, [&](auto tag) {
    using S = typename decltype(tag)::type;
    pointwise_backward_kernel<S><<<pointwise_blocks(a.batch * a.hidden), kPointwiseThreads, 0, stream>>>(
        static_cast<const S*>(a.dh_out), static_cast<const acc_t<S>*>(a.dh_rec), static_cast<const S*>(a.dc_out),
        static_cast<acc_t<S>*>(a.dc_state), static_cast<const S*>(a.gates), static_cast<const S*>(a.c),
        static_cast<const S*>(a.c_prev), static_cast<S*>(a.dxg), static_cast<acc_t<S>*>(a.dgates_state),
        a.batch, a.hidden);
    return cudaGetLastError();
  });
}

cudaError_t persistent_forward(Dtype dtype, const PersistentForwardArgs& a, cudaStream_t stream) {
  if (!persistent_sizes_ok(a.steps, a.batch, a.hidden)) return cudaErrorInvalidValue;
  return dispatch(dtype, [&](auto tag) {
    using S = typename decltype(tag)::type;
    return a.hidden <= 32 ? launch_persistent_forward<S, 32>(a, stream) : launch_persistent_forward<S, 64>(a, stream);
  });
}

cudaError_t persistent_backward(Dtype dtype, const PersistentBackwardArgs& a, cudaStream_t stream) {
  if (!persistent_sizes_ok(a.steps, a.batch, a.hidden)) return cudaErrorInvalidValue;
  return dispatch(dtype, [&](auto tag) {
    using S = typename decltype(tag)::type;
    return a.hidden <= 32 ? launch_persistent_backward<S, 32>(a, stream) : launch_persistent_backward<S, 64>(a, stream);
  });
}

}  // namespace ecgkern_cuda
#endif  // ECGKERN_CUDA_KERNELS_ONLY
