// CPU kernels for ecgkern::lstm_recurrence, ecgkern::lstm_recurrence_backward and
// ecgkern::lstm_recurrence_inference (the forward without the gates, for no-grad calls), and
// for the same forwards from the layer input, ecgkern::lstm_input_recurrence[_inference].
//
// The public ops' schemas, fake kernels and autograd live in ecgkern/backends/_ops.py; this
// file registers private ecgkern_cpu::* ops that their CPU kernels call. Layout: xg/gates
// [T,B,4H], hs/cs [T,B,H], x [T,B,I], w_hh [4H,H], w_ih [4H,I], gate order i, f, g, o
// (torch.nn.LSTM's).
//
// Speed notes (see the cpp backend's README section):
// - batch rows are independent for all T steps, so the batch is split across threads ONCE
//   (one at::parallel_for around the whole time loop, no barrier per step);
// - the per-step recurrent GEMMs are register-tiled at::vec kernels over w_hh packed once per
//   call (a BLAS call per step costs more than the math at these sizes); the forward tile
//   holds all four gates of a chunk of hidden units, so the cell update runs straight from
//   the accumulators; for H > 128 both GEMMs are K-blocked so a weight block stays in L1;
// - at::vec is built with the CPU's capability flags (see ecgkern/_build.py); float32 exp and
//   tanh are inlined polynomials (Cephes), float64 uses the Sleef functions libtorch exports;
// - the layer's input projection may run inside the forward (ecgkern::lstm_input_recurrence):
//   each tile's accumulators start from bias + x_t @ w_ih^T, and xg never exists in memory;
// - nothing is allocated inside the time loop; dW_hh is one GEMM after the loop, and for the op
//   from the layer input dW_ih and the bias gradient come from the same pass over dxg;
// - outputs of 32 MB and more are advised onto transparent huge pages (page faults).
//
// Precision: float64 computes in float64, float32 in float32. bfloat16 and float16 are storage
// formats only (xg, w_hh, hs, cs, gates and the gradients): every activation, the running cell
// state, the carried gradients and every GEMM accumulation are float32. Where the compiler
// targets AVX512-BF16 (ecgkern/_build.py adds -mavx512bf16 on CPUs that have it) the bf16
// recurrent GEMMs are vdpbf16ps dot products on w_hh packed in k-pairs, and so is bf16 dW_hh
// (weight_grad_bf16); otherwise (and for float16) the operands are widened to float32 and the
// float32 tiles run.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "tensor_checks.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace {

using at::vec::Vectorized;

// Inlining decisions that measured faster (see gemm_tile and backward_tile).
#if defined(__GNUC__)
#define ECGKERN_ALWAYS_INLINE __attribute__((always_inline)) inline
#define ECGKERN_NOINLINE __attribute__((noinline))
#else
#define ECGKERN_ALWAYS_INLINE inline
#define ECGKERN_NOINLINE
#endif

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#define ECGKERN_INLINE_EXPF 1
#else
#define ECGKERN_INLINE_EXPF 0
#endif

// exp of float32 vectors, inlined: Sleef's out-of-line calls clobber every vector register,
// which costs spills around each of the five calls per cell. Cephes expf: x = n ln2 + r with
// |r| <= ln2/2 (ln2 split in two for an exact reduction), degree-7 polynomial, times 2^n;
// within 1 ulp. x is clamped to [-87, 88] so 2^n stays normal (the results there round to
// the same sigmoid/tanh); NaN passes through. float64 and portable builds keep Sleef.
template <typename T>
inline Vectorized<T> exp(Vectorized<T> x) {
#if ECGKERN_INLINE_EXPF
  if constexpr (std::is_same_v<T, float>) {
    using Vec = Vectorized<float>;
    x = at::vec::clamp(x, Vec(-87.0f), Vec(88.0f));
    const Vec n = (x * Vec(1.44269504088896341f)).round();
    Vec r = at::vec::fnmadd(n, Vec(0.693359375f), x);
    r = at::vec::fnmadd(n, Vec(-2.12194440e-4f), r);
    Vec p(1.9875691500e-4f);
    p = at::vec::fmadd(p, r, Vec(1.3981999507e-3f));
    p = at::vec::fmadd(p, r, Vec(8.3334519073e-3f));
    p = at::vec::fmadd(p, r, Vec(4.1665795894e-2f));
    p = at::vec::fmadd(p, r, Vec(1.6666665459e-1f));
    p = at::vec::fmadd(p, r, Vec(5.0000001201e-1f));
    p = at::vec::fmadd(p, r * r, r + Vec(1.0f));
#if defined(CPU_CAPABILITY_AVX512)
    return Vec(_mm512_scalef_ps(p, n));
#else
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return p * Vec(_mm256_castsi256_ps(bits));
#endif
  }
#endif
  return x.exp();
}

template <typename T>
inline Vectorized<T> sigmoid(Vectorized<T> x) {
  const Vectorized<T> one(T(1));
  return one / (one + exp(x.neg()));
}

// float32 (inline): Cephes tanhf, an odd polynomial for |x| < 0.625, else
// 1 - 2 / (exp(2|x|) + 1) with x's sign; within 2 ulp (relative, also near 0).
// Otherwise tanh(x) = e / (e + 2) with e = expm1(2x): within 1.5 ulp and cheaper than Sleef's
// tanh; |x| is clamped where tanh already rounds to +-1, so expm1 cannot overflow. NaN passes.
template <typename T>
inline Vectorized<T> tanh(Vectorized<T> x) {
  using Vec = Vectorized<T>;
#if ECGKERN_INLINE_EXPF
  if constexpr (std::is_same_v<T, float>) {
    const Vec ax = x.abs(), one(1.0f), zero(0.0f);
    Vec big = one - Vec(2.0f) / (exp(ax + ax) + one);
    big = Vec::blendv(big, big.neg(), x < zero);
    const Vec z = x * x;
    Vec p(-5.70498872745e-3f);
    p = at::vec::fmadd(p, z, Vec(2.06390887954e-2f));
    p = at::vec::fmadd(p, z, Vec(-5.37397155531e-2f));
    p = at::vec::fmadd(p, z, Vec(1.33314422036e-1f));
    p = at::vec::fmadd(p, z, Vec(-3.33332819422e-1f));
    const Vec small = at::vec::fmadd(p * z, x, x);
    return Vec::blendv(big, small, ax < Vec(0.625f));
  }
#endif
  const Vec limit(sizeof(T) == 4 ? T(9) : T(19.5));
  const Vec xc = at::vec::clamp(x, limit.neg(), limit);
  const Vec e = (xc + xc).expm1();
  return e / (e + Vec(T(2)));
}

// Activations for bfloat16/float16 storage, whose results are rounded to 8 (11) bits, with
// AVX-512: sigmoid's division is a 14-bit reciprocal estimate (relative error < 2^-14, far below
// the storage's 2^-8 / 2^-11), its exp a short polynomial (below), and tanh(x) =
// 2 sigmoid(2x) - 1 (absolute error ~1e-7). With the float32 exp the activations took 40% of the
// bf16 no_grad recurrence at the ECG shape. Elsewhere (AVX2, portable) they are the float32 ones.
#if ECGKERN_INLINE_EXPF && defined(CPU_CAPABILITY_AVX512)
// 1 / (1 + exp(-k x)) to 2^-14: exp(-k x) = 2^y, y = -k log2(e) x = n + f with n = round(y),
// |f| <= 1/2, and 2^f a degree-4 minimax polynomial (relative error 2.7e-6): half the
// instructions of the float32 exp (measured: the bf16 no_grad recurrence 1.15-1.18x faster at
// the ECG shape). x is clamped as in exp, so 2^n stays normal; NaN passes through.
inline Vectorized<float> logistic_reduced(Vectorized<float> x, float k) {
  using Vec = Vectorized<float>;
  const Vec y = at::vec::clamp(x, Vec(-87.0f / k), Vec(87.0f / k)) * Vec(-k * 1.44269504088896341f);
  const Vec n(_mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  const Vec f = y - n;
  Vec p(9.57009568810463e-3f);
  p = at::vec::fmadd(p, f, Vec(5.591786280274391e-2f));
  p = at::vec::fmadd(p, f, Vec(2.40247443318367e-1f));
  p = at::vec::fmadd(p, f, Vec(6.931217908859253e-1f));
  p = at::vec::fmadd(p, f, Vec(9.999992847442627e-1f));
  return Vec(_mm512_rcp14_ps(Vec(1.0f) + Vec(_mm512_scalef_ps(p, n))));
}
#endif

inline Vectorized<float> sigmoid_reduced(Vectorized<float> x) {
#if ECGKERN_INLINE_EXPF && defined(CPU_CAPABILITY_AVX512)
  return logistic_reduced(x, 1.0f);
#else
  return sigmoid(x);
#endif
}

inline Vectorized<float> tanh_reduced(Vectorized<float> x) {
#if ECGKERN_INLINE_EXPF && defined(CPU_CAPABILITY_AVX512)
  return at::vec::fmsub(Vectorized<float>(2.0f), logistic_reduced(x, 2.0f), Vectorized<float>(1.0f));
#else
  return tanh(x);
#endif
}

// Storage type S -> the type every computation runs in: float64 for float64, else float32.
template <typename S>
using acc_t = std::conditional_t<std::is_same_v<S, double>, double, float>;
// bfloat16/float16 storage: the values are widened on load and rounded on store.
template <typename S>
constexpr bool kReduced = !std::is_same_v<S, acc_t<S>>;

template <typename T>
constexpr int64_t kV = Vectorized<T>::size();

// Apply f(j, n) over [0, H) in full vectors of compute type C, then one partial vector of
// n < size() lanes. f loads and stores with count n, so the tail needs no scalar copy of the math.
template <typename C, typename F>
inline void for_each_vector(int64_t H, F f) {
  constexpr int64_t V = kV<C>;
  int64_t j = 0;
  for (; j + V <= H; j += V) f(j, V);
  if (j < H) f(j, H - j);
}

#if defined(CPU_CAPABILITY_AVX512)
inline __m256i load_16bit(const void* p, int64_t n) {
  return n == 16 ? _mm256_loadu_si256(static_cast<const __m256i*>(p))
                 : _mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << n) - 1), p);
}
inline void store_16bit(__m256i v, void* p, int64_t n) {
  if (n == 16) _mm256_storeu_si256(static_cast<__m256i*>(p), v);
  else _mm256_mask_storeu_epi16(p, static_cast<__mmask16>((1u << n) - 1), v);
}
inline Vectorized<float> widen(const c10::BFloat16* p, int64_t n) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(load_16bit(p, n)), 16));
}
inline Vectorized<float> widen(const c10::Half* p, int64_t n) { return _mm512_cvtph_ps(load_16bit(p, n)); }
// Round to nearest even, as c10's scalar conversions do.
inline void narrow(const Vectorized<float>& v, c10::BFloat16* p, int64_t n) {
#if defined(__AVX512BF16__)
  store_16bit(reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)), p, n);
#else
  store_16bit(at::vec::cvtfp32_bf16(v), p, n);
#endif
}
inline void narrow(const Vectorized<float>& v, c10::Half* p, int64_t n) {
  store_16bit(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), p, n);
}
#elif defined(CPU_CAPABILITY_AVX2)
// AVX2 has no masked 16-bit loads/stores: a partial vector goes through a small buffer.
inline __m128i load_16bit(const void* p, int64_t n) {
  if (n == 8) return _mm_loadu_si128(static_cast<const __m128i*>(p));
  alignas(16) uint16_t buffer[8] = {};
  std::memcpy(buffer, p, n * sizeof(uint16_t));
  return _mm_load_si128(reinterpret_cast<const __m128i*>(buffer));
}
inline void store_16bit(__m128i v, void* p, int64_t n) {
  if (n == 8) {
    _mm_storeu_si128(static_cast<__m128i*>(p), v);
    return;
  }
  alignas(16) uint16_t buffer[8];
  _mm_store_si128(reinterpret_cast<__m128i*>(buffer), v);
  std::memcpy(p, buffer, n * sizeof(uint16_t));
}
inline Vectorized<float> widen(const c10::BFloat16* p, int64_t n) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(load_16bit(p, n)), 16));
}
inline Vectorized<float> widen(const c10::Half* p, int64_t n) { return _mm256_cvtph_ps(load_16bit(p, n)); }
// Round to nearest even, as c10's scalar conversions do.
inline void narrow(const Vectorized<float>& v, c10::BFloat16* p, int64_t n) {
  store_16bit(at::vec::cvtfp32_bf16(v), p, n);
}
inline void narrow(const Vectorized<float>& v, c10::Half* p, int64_t n) {
  store_16bit(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), p, n);
}
#else
// Portable widening/rounding through a small buffer (c10's scalar conversions).
template <typename S>
inline Vectorized<float> widen(const S* p, int64_t n) {
  alignas(64) float buffer[kV<float>] = {};
  for (int64_t l = 0; l < n; ++l) buffer[l] = static_cast<float>(p[l]);
  return Vectorized<float>::loadu(buffer);
}
template <typename S>
inline void narrow(const Vectorized<float>& v, S* p, int64_t n) {
  alignas(64) float buffer[kV<float>];
  v.store(buffer);
  for (int64_t l = 0; l < n; ++l) p[l] = static_cast<S>(buffer[l]);
}
#endif

// n lanes (n <= size()) of a storage or compute array, as a vector of compute type.
template <typename S>
inline Vectorized<acc_t<S>> load(const S* p, int64_t n) {
  using C = acc_t<S>;
  if constexpr (kReduced<S>) {
    return widen(p, n);
  } else {
    return n == kV<C> ? Vectorized<C>::loadu(p) : Vectorized<C>::loadu(p, n);
  }
}

template <typename S>
inline void store(const Vectorized<acc_t<S>>& v, S* p, int64_t n) {
  if constexpr (kReduced<S>) {
    narrow(v, p, n);
  } else {
    if (n == kV<S>) v.store(p); else v.store(p, n);
  }
}

// One row of the backward cell. dh_carry/dc_carry hold the gradient flowing back from step
// t+1 into h_t/c_t (compute type); dc_carry is replaced by the gradient into c_{t-1}. Writes
// the pre-activation gate gradients (= dxg[t]) into dgates.
template <typename S, typename C = acc_t<S>>
inline void cell_backward(const S* gates, const S* c, const S* c_prev, const S* dh_out, const S* dc_out,
                          const C* dh_carry, C* dc_carry, S* dgates, int64_t H) {
  using Vec = Vectorized<C>;
  const Vec one(C(1));
  for_each_vector<C>(H, [&](int64_t j, int64_t n) {
    Vec i = load(gates + j, n), f = load(gates + H + j, n);
    Vec g = load(gates + 2 * H + j, n), o = load(gates + 3 * H + j, n);
    Vec tc;
    if constexpr (kReduced<S>) tc = tanh_reduced(load(c + j, n));
    else tc = tanh(load(c + j, n));
    Vec dh = load(dh_out + j, n) + load(dh_carry + j, n);
    Vec dc = load(dc_out + j, n) + load(dc_carry + j, n) + dh * o * (one - tc * tc);
    store(dc * g * i * (one - i), dgates + j, n);
    store(dc * load(c_prev + j, n) * f * (one - f), dgates + H + j, n);
    store(dc * i * (one - g * g), dgates + 2 * H + j, n);
    store(dh * tc * o * (one - o), dgates + 3 * H + j, n);
    store(dc * f, dc_carry + j, n);
  });
}

// Split [0, B) across threads once; at most one chunk per thread, none smaller than min_rows.
template <typename F>
inline void parallel_over_batch(int64_t B, int64_t H, F f) {
  // Tiny problems are not worth waking a second thread for.
  const int64_t min_rows = H >= 32 ? 1 : 8;
  const int64_t per_thread = (B + at::get_num_threads() - 1) / at::get_num_threads();
  at::parallel_for(0, B, std::max(min_rows, per_thread), f);
}

// ---------------------------------------------------------------------------------------------
// Register-tiled recurrent GEMMs with w_hh packed once per call (before the time loop).

#if defined(CPU_CAPABILITY_AVX512)
constexpr int kVecRegs = 32;
#else
constexpr int kVecRegs = 16;
#endif
// Rows per register tile: 4 accumulators per row, plus 4 registers of w_hh and a broadcast.
constexpr int kMR = (kVecRegs - 6) / 4;  // 6 with AVX-512, 2 with AVX2

// Calls f(std::integral_constant<int, m>) with m = min(n, M): compile-time tile sizes for
// the remainder rows/columns.
template <int M, typename F>
inline void with_tile(int64_t n, F&& f) {
  if constexpr (M > 1) {
    if (n < M) {
      with_tile<M - 1>(n, f);
      return;
    }
  }
  f(std::integral_constant<int, M>{});
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// How the recurrent GEMMs of storage type S run: bfloat16 on AVX512-BF16 multiplies bf16
// pairs (w_hh packed as k-pairs, kPack = 2, accumulated in float32 by vdpbf16ps); everything
// else multiplies in the compute type with w_hh widened once at packing (kPack = 1).
#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
template <typename S>
constexpr bool kBf16Dot = std::is_same_v<S, c10::BFloat16>;
#else
template <typename S>
constexpr bool kBf16Dot = false;
#endif
template <typename S>
using packed_t = std::conditional_t<kBf16Dot<S>, c10::BFloat16, acc_t<S>>;
template <typename S>
constexpr int64_t kPack = kBf16Dot<S> ? 2 : 1;

template <typename W>
at::Tensor packed_buffer(int64_t numel) {
  return at::zeros({numel}, c10::CppTypeToScalarType<W>::value);
}

// Forward pack: for each chunk of V hidden units, for each k (k-pair with kPack 2), the four
// gates' V weights (V x kPack, pairs interleaved): element k of unit chunk*V + l, gate q is at
// (((chunk * Kp + k / P) * 4 + q) * V + l) * P + k % P, Kp = ceil(H / P); zeros past H.
template <typename S>
at::Tensor pack_forward(const S* w, int64_t H) {
  using W = packed_t<S>;
  constexpr int64_t V = kV<acc_t<S>>, P = kPack<S>;
  const int64_t chunks = round_up(H, V) / V, Kp = round_up(H, P) / P;
  at::Tensor packed = packed_buffer<W>(chunks * Kp * 4 * V * P);
  W* p = packed.data_ptr<W>();
  for (int64_t c = 0; c < chunks; ++c)
    for (int64_t k = 0; k < H; ++k)
      for (int64_t q = 0; q < 4; ++q)
        for (int64_t l = 0; l < V && c * V + l < H; ++l)
          p[(((c * Kp + k / P) * 4 + q) * V + l) * P + k % P] = static_cast<W>(w[(q * H + c * V + l) * H + k]);
  return packed;
}

// Backward pack: w_hh [4H, H] with rows padded to Hp = round_up(H, V) (zeros past H); with
// kPack 2, rows 2m and 2m+1 interleaved column by column (4H is even).
template <typename S>
at::Tensor pack_backward(const S* w, int64_t H) {
  using W = packed_t<S>;
  constexpr int64_t P = kPack<S>;
  const int64_t Hp = round_up(H, kV<acc_t<S>>);
  at::Tensor packed = packed_buffer<W>(4 * H * Hp);
  W* p = packed.data_ptr<W>();
  for (int64_t n = 0; n < 4 * H; ++n)
    for (int64_t k = 0; k < H; ++k) p[((n / P) * Hp + k) * P + n % P] = static_cast<W>(w[n * H + k]);
  return packed;
}

// How a GEMM tile's accumulators start: zero, out's values (kAccumulate), or, with a `start`
// callable other than nullptr, whatever start(acc) puts in them (acc: Vectorized[MR][NV]).
template <typename T, int MR, int NV, bool kAccumulate, typename Start>
inline void start_tile(Vectorized<T> (&acc)[MR][NV], const T* out, int64_t ldo, const Start& start) {
  if constexpr (!std::is_same_v<Start, std::nullptr_t>) {
    start(acc);
  } else {
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NV; ++v)
        acc[r][v] = kAccumulate ? Vectorized<T>::loadu(out + r * ldo + v * kV<T>) : Vectorized<T>(T(0));
  }
}

// out[r*ldo + v*V + l] (+)= sum_k a[r*a_r + k*a_k] * b[k*ldb + v*V + l] for an MR x NV-vector
// tile, accumulators in registers (started as start_tile says). Callers that post-process the
// tile pass a small stack buffer as `out`: with the accumulators themselves live across the
// epilogue's out-of-line Sleef calls, GCC keeps them in memory inside the k loop (about 3x
// slower). `a` may be of a storage type (widened per element). Always inlined into the forward:
// the copies GCC left out of line there stored every accumulator to the stack in each k step
// (measured: the float16 forward 2x slower, float32 no_grad 1.2x).
template <typename T, int MR, int NV, bool kAccumulate = false, typename A, typename Start = std::nullptr_t>
ECGKERN_ALWAYS_INLINE void gemm_tile(const A* a, int64_t a_r, int64_t a_k, const T* b, int64_t ldb, int64_t K,
                                     T* out, int64_t ldo, const Start& start = nullptr) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = kV<T>;
  Vec acc[MR][NV];
  {
    Vec first[MR][NV];  // acc's own address is never taken (it stays in registers)
    start_tile<T, MR, NV, kAccumulate>(first, out, ldo, start);
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = first[r][v];
  }
  for (int64_t k = 0; k < K; ++k) {
    Vec w[NV];
    for (int v = 0; v < NV; ++v) w[v] = Vec::loadu(b + k * ldb + v * V);
    for (int r = 0; r < MR; ++r) {
      const Vec x(static_cast<T>(a[r * a_r + k * a_k]));
      for (int v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(x, w[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v].store(out + r * ldo + v * V);
}

#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
// gemm_tile for bf16 rows of `a` (unit stride in k) against k-pair-packed bf16 `b` (packed row
// m = k-pair m, ldb elements apart): vdpbf16ps adds a[2m]*b[2m] + a[2m+1]*b[2m+1] to each
// float32 lane. An odd K ends with a pair whose second element is zero on both sides.
template <int MR, int NV, bool kAccumulate = false, typename Start = std::nullptr_t>
ECGKERN_ALWAYS_INLINE void gemm_tile_bf16(const c10::BFloat16* a, int64_t a_r, const c10::BFloat16* b, int64_t ldb,
                                          int64_t K, float* out, int64_t ldo, const Start& start = nullptr) {
  __m512 acc[MR][NV];
  {  // see gemm_tile
    Vectorized<float> first[MR][NV];
    start_tile<float, MR, NV, kAccumulate>(first, out, ldo, start);
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = first[r][v];
  }
  const auto step = [&](int64_t m, auto pair_of_row) {
    __m512bh w[NV];
    for (int v = 0; v < NV; ++v) w[v] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(b + m * ldb + v * 32));
    for (int r = 0; r < MR; ++r) {
      const __m512bh x = reinterpret_cast<__m512bh>(_mm512_set1_epi32(pair_of_row(a + r * a_r)));
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], x, w[v]);
    }
  };
  const int64_t pairs = K / 2;
  for (int64_t m = 0; m < pairs; ++m)
    step(m, [m](const c10::BFloat16* row) {
      int32_t bits;
      std::memcpy(&bits, row + 2 * m, sizeof(bits));
      return bits;
    });
  if (K % 2)
    step(pairs, [K](const c10::BFloat16* row) { return static_cast<int32_t>(row[K - 1].x); });
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(out + r * ldo + v * 16, acc[r][v]);
}
#endif

// The recurrent GEMM tile of storage type S: out (compute type) (+)= a [MR rows a_r apart,
// unit stride in k] times packed w_hh rows k in [0, K) (ldb elements per packed row).
template <typename S, int MR, int NV, bool kAccumulate = false, typename Start = std::nullptr_t>
inline void recurrent_tile(const S* a, int64_t a_r, const packed_t<S>* b, int64_t ldb, int64_t K, acc_t<S>* out,
                           int64_t ldo, const Start& start = nullptr) {
#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
  if constexpr (kBf16Dot<S>) {
    gemm_tile_bf16<MR, NV, kAccumulate>(a, a_r, b, ldb, K, out, ldo, start);
    return;
  }
#endif
  if constexpr (!kBf16Dot<S>) gemm_tile<acc_t<S>, MR, NV, kAccumulate>(a, a_r, 1, b, ldb, K, out, ldo, start);
}

// The backward's GEMM tiles, left out of line: forcing them inline (as the forward's are)
// measured 1.11x slower in the float32 backward.
template <typename S, int MR, int NV, bool kAccumulate>
ECGKERN_NOINLINE void backward_tile(const S* a, int64_t a_r, const packed_t<S>* b, int64_t ldb, int64_t K,
                                    acc_t<S>* out, int64_t ldo) {
  recurrent_tile<S, MR, NV, kAccumulate>(a, a_r, b, ldb, K, out, ldo);
}

// weight_grad's tile (out += a^T b over K rows of a, a_k apart), out of line for the same reason.
template <typename T, int MR, int NV>
ECGKERN_NOINLINE void weight_grad_tile(const T* a, int64_t a_k, const T* b, int64_t ldb, int64_t K, T* out,
                                       int64_t ldo) {
  gemm_tile<T, MR, NV, true>(a, 1, a_k, b, ldb, K, out, ldo);
}

// The cell update of MR rows x one chunk of V hidden units from the chunk's pre-activations
// (h_prev @ w_hh^T, row r's four gates at pre + r*4V), plus xg unless kFromInput (the input
// projection is already in pre; xg is null). Row r of c_prev/c_next/c_store/h is at r*H, of
// xg/gates at r*4H; j is the chunk's first unit, n its width (<= V). The cell state is read
// from c_prev and written to c_next in the compute type; c_store (reduced storage only)
// receives it rounded.
template <typename S, int MR, bool kGates, bool kFromInput, typename C = acc_t<S>>
inline void cell_tile(const C* pre, const S* xg, const C* c_prev, C* c_next, S* c_store, S* gates, S* h, int64_t H,
                      int64_t j, int64_t n) {
  using Vec = Vectorized<C>;
  constexpr int64_t V = kV<C>;
  const int64_t G = 4 * H;
  for (int r = 0; r < MR; ++r) {
    const S* x = kFromInput ? nullptr : xg + r * G + j;
    const C* p = pre + r * 4 * V;
    S* g = kGates ? gates + r * G + j : nullptr;
    const auto act = [](const Vec& v, bool is_tanh) {
      if constexpr (kReduced<S>) return is_tanh ? tanh_reduced(v) : sigmoid_reduced(v);
      else return is_tanh ? tanh(v) : sigmoid(v);
    };
    const auto pre_activation = [&](int q) {
      if constexpr (kFromInput) return Vec::loadu(p + q * V);
      else return Vec::loadu(p + q * V) + load(x + q * H, n);
    };
    const Vec i = act(pre_activation(0), false);
    const Vec f = act(pre_activation(1), false);
    const Vec gg = act(pre_activation(2), true);
    const Vec o = act(pre_activation(3), false);
    const Vec cn = f * load(c_prev + r * H + j, n) + i * gg;
    if constexpr (kGates) {
      store(i, g, n);
      store(f, g + H, n);
      store(gg, g + 2 * H, n);
      store(o, g + 3 * H, n);
    }
    store(cn, c_next + r * H + j, n);
    if constexpr (kReduced<S>) store(cn, c_store + r * H + j, n);
    store(o * act(cn, true), h + r * H + j, n);
  }
}

// The layer's input projection inside the kernels: the accumulators of each register tile of
// pre-activations start from bias + x_t @ w_ih^T instead of zero, so the [T, B, 4H] xg is
// never written to memory and read back, and x @ w_ih^T + bias + h @ w_hh^T is one float32
// accumulation (the separate projection rounds xg to the storage type first).
template <typename S>
struct InputProjection {
  using C = acc_t<S>;
  const S* x;        // [T, B, I]
  int64_t I;
  const C* packed;   // per chunk of V hidden units, 1 + I rows of the four gates' V values:
                     // the bias, then w_ih^T (see pack_input); zeros past H
  // A gemm_tile start: acc[r][q] lane l = the projection of gate q, unit chunk * V + l, for x
  // row r of the MR rows at x_rows (I apart).
  template <int MR>
  auto start(const S* x_rows, int64_t chunk) const {
    return [this, x_rows, chunk](Vectorized<C> (&acc)[MR][4]) {
      constexpr int64_t V = kV<C>;
      const C* w = packed + chunk * (1 + I) * 4 * V;
      for (int q = 0; q < 4; ++q) {
        const auto bias = Vectorized<C>::loadu(w + q * V);
        for (int r = 0; r < MR; ++r) acc[r][q] = bias;
      }
      for (int64_t i = 0; i < I; ++i) {
        Vectorized<C> wi[4];
        for (int q = 0; q < 4; ++q) wi[q] = Vectorized<C>::loadu(w + ((1 + i) * 4 + q) * V);
        for (int r = 0; r < MR; ++r) {
          const Vectorized<C> xv(static_cast<C>(x_rows[r * I + i]));
          for (int q = 0; q < 4; ++q) acc[r][q] = at::vec::fmadd(xv, wi[q], acc[r][q]);
        }
      }
    };
  }
};

// bias [4H] and w_ih [4H, I] in InputProjection's layout, in the compute type.
template <typename S>
at::Tensor pack_input(const S* w_ih, const S* bias, int64_t H, int64_t I) {
  using C = acc_t<S>;
  constexpr int64_t V = kV<C>;
  const int64_t chunks = round_up(H, V) / V;
  at::Tensor packed = at::zeros({chunks * (1 + I) * 4 * V}, c10::CppTypeToScalarType<C>::value);
  C* p = packed.data_ptr<C>();
  for (int64_t c = 0; c < chunks; ++c)
    for (int64_t q = 0; q < 4; ++q)
      for (int64_t l = 0; l < V && c * V + l < H; ++l) {
        const int64_t unit = q * H + c * V + l;
        C* column = p + (c * (1 + I) * 4 + q) * V + l;
        column[0] = static_cast<C>(bias[unit]);
        for (int64_t i = 0; i < I; ++i) column[(1 + i) * 4 * V] = static_cast<C>(w_ih[unit * I + i]);
      }
  return packed;
}

// One register tile of the four gates' pre-activations over all of k, then the cell update.
// kFromInput: the tile starts from the input projection of x_rows (proj) and xg is null.
template <typename S, int MR, bool kGates, bool kFromInput, typename C = acc_t<S>>
inline void forward_tile(const S* h_prev, const packed_t<S>* wc, const S* xg, const InputProjection<S>* proj,
                         const S* x_rows, int64_t chunk, const C* c_prev, C* c_next, S* c_store, S* gates, S* h,
                         int64_t H, int64_t j, int64_t n) {
  constexpr int64_t V = kV<C>;
  alignas(64) C pre[MR * 4 * V];
  if constexpr (kFromInput)
    recurrent_tile<S, MR, 4>(h_prev, H, wc, 4 * V * kPack<S>, H, pre, 4 * V,
                             proj->template start<MR>(x_rows, chunk));
  else
    recurrent_tile<S, MR, 4>(h_prev, H, wc, 4 * V * kPack<S>, H, pre, 4 * V);
  cell_tile<S, MR, kGates, kFromInput>(pre, xg, c_prev, c_next, c_store, gates, h, H, j, n);
}

// k per block of the recurrent GEMMs: one block of packed weights (k x 4 vectors, 32 KB in
// float32) stays in L1 while every row tile of the thread passes over it. Even, so k-pairs
// never straddle two blocks.
template <typename C>
constexpr int64_t kBlockK = (32 * 1024) / (4 * kV<C> * static_cast<int64_t>(sizeof(C)));

// kGates false: inference, the activated gates are not stored (gates is null). kFromInput: xg
// is null and the pre-activations start from the layer input's projection (proj).
template <typename S, bool kGates, bool kFromInput>
void forward_kernel(const S* xg, const InputProjection<S>* proj, const S* w, const S* h0, const S* c0, S* hs, S* cs,
                    S* gates, int64_t Tn, int64_t B, int64_t H) {
  using C = acc_t<S>;
  using W = packed_t<S>;
  constexpr int64_t V = kV<C>, KB = kBlockK<C>, P = kPack<S>;
  const int64_t G = 4 * H;
  const at::Tensor packed = pack_forward(w, H);
  const W* wf = packed.data_ptr<W>();
  const int64_t chunk_size = round_up(H, P) * 4 * V;  // packed elements per chunk of V units
  parallel_over_batch(B, H, [&](int64_t b0, int64_t b1) {
    // H > KB: the pre-activations of all the thread's rows for one chunk, summed over k blocks.
    const at::Tensor scratch = at::empty({H > KB ? (b1 - b0) * 4 * V : 0}, c10::CppTypeToScalarType<C>::value);
    C* pre = scratch.data_ptr<C>();
    // Reduced storage: the running cell state of the thread's rows stays in the compute type.
    const at::Tensor c_state = at::empty({kReduced<S> ? (b1 - b0) * H : 0}, c10::CppTypeToScalarType<C>::value);
    C* c_run = c_state.data_ptr<C>();
    if constexpr (kReduced<S>)
      for (int64_t e = 0; e < (b1 - b0) * H; ++e) c_run[e] = static_cast<C>(c0[b0 * H + e]);
    for (int64_t t = 0; t < Tn; ++t) {
      const S* h_prev = t == 0 ? h0 : hs + (t - 1) * B * H;
      // Row r of the step's xg, or null with proj (then row r of x is x_row(r)).
      const auto xg_row = [&](int64_t r) { return kFromInput ? nullptr : xg + (t * B + r) * G; };
      const auto x_row = [&](int64_t r) { return kFromInput ? proj->x + (t * B + r) * proj->I : nullptr; };
      // Rows r0.. of the cell state: previous (read), next (written), rounded copy (reduced).
      const auto cell_rows = [&](int64_t r0) -> std::tuple<const C*, C*, S*> {
        if constexpr (kReduced<S>) {
          C* run = c_run + (r0 - b0) * H;
          return {run, run, cs + (t * B + r0) * H};
        } else {
          return {(t == 0 ? c0 : cs + (t - 1) * B * H) + r0 * H, cs + (t * B + r0) * H, nullptr};
        }
      };
      // Chunk-outer: the chunk's packed weights (H*4*V values) stay in L1 across row tiles.
      for (int64_t j = 0; j < H; j += V) {
        const W* wc = wf + (j / V) * chunk_size;
        const int64_t n = std::min(V, H - j);
        if (H <= KB) {
          for (int64_t r0 = b0; r0 < b1; r0 += kMR) {
            const int64_t s = t * B + r0;
            const auto [c_prev, c_next, c_store] = cell_rows(r0);
            with_tile<kMR>(b1 - r0, [&, c_prev = c_prev, c_next = c_next, c_store = c_store](auto mr) {
              forward_tile<S, decltype(mr)::value, kGates, kFromInput>(
                  h_prev + r0 * H, wc, xg_row(r0), proj, x_row(r0), j / V, c_prev, c_next, c_store,
                  kGates ? gates + s * G : nullptr, hs + s * H, H, j, n);
            });
          }
          continue;
        }
        for (int64_t k0 = 0; k0 < H; k0 += KB) {
          for (int64_t r0 = b0; r0 < b1; r0 += kMR) {
            with_tile<kMR>(b1 - r0, [&](auto mr) {
              constexpr int MR = decltype(mr)::value;
              C* out = pre + (r0 - b0) * 4 * V;
              const S* a = h_prev + r0 * H + k0;
              const W* bk = wc + k0 * 4 * V;  // k0 is a multiple of P
              const int64_t kn = std::min(KB, H - k0);
              if (k0 > 0)
                recurrent_tile<S, MR, 4, true>(a, H, bk, 4 * V * P, kn, out, 4 * V);
              else if constexpr (kFromInput)
                recurrent_tile<S, MR, 4>(a, H, bk, 4 * V * P, kn, out, 4 * V,
                                         proj->template start<MR>(x_row(r0), j / V));
              else
                recurrent_tile<S, MR, 4>(a, H, bk, 4 * V * P, kn, out, 4 * V);
            });
          }
        }
        for (int64_t r0 = b0; r0 < b1; r0 += kMR) {
          const int64_t s = t * B + r0;
          const auto [c_prev, c_next, c_store] = cell_rows(r0);
          with_tile<kMR>(b1 - r0, [&, c_prev = c_prev, c_next = c_next, c_store = c_store](auto mr) {
            cell_tile<S, decltype(mr)::value, kGates, kFromInput>(pre + (r0 - b0) * 4 * V, xg_row(r0), c_prev, c_next,
                                                                  c_store, kGates ? gates + s * G : nullptr,
                                                                  hs + s * H, H, j, n);
          });
        }
      }
    }
  });
}

// dh0/dc0 (or, for reduced storage, compute-type scratch rows) are the carries (gradient into
// h_{t-1}/c_{t-1}); they start at zero.
// Per step: the cell pass over the thread's rows, then dh = dgates @ w_hh K-blocked: each
// block of w_hh (kBlockK rows x one 4-vector column group) is loaded into L1 once and used
// by every row tile (w_hh is 1 MB at H=256: streaming it per row tile thrashed L2).
template <typename S>
void backward_kernel(const S* dhs, const S* dcs, const S* w, const S* c0, const S* cs, const S* gates, S* dxg,
                     S* dh0, S* dc0, int64_t Tn, int64_t B, int64_t H) {
  using C = acc_t<S>;
  using W = packed_t<S>;
  constexpr int64_t V = kV<C>, KB = kBlockK<C>, P = kPack<S>;
  const int64_t G = 4 * H, Hp = round_up(H, V);
  const at::Tensor packed = pack_backward(w, H);
  const W* wb = packed.data_ptr<W>();
  parallel_over_batch(B, H, [&](int64_t b0, int64_t b1) {
    // One column group of dh for the thread's rows, summed over the k blocks.
    const at::Tensor scratch = at::empty({(b1 - b0) * 4 * V}, c10::CppTypeToScalarType<C>::value);
    C* acc = scratch.data_ptr<C>();
    const at::Tensor carries = at::zeros({kReduced<S> ? 2 * (b1 - b0) * H : 0}, c10::CppTypeToScalarType<C>::value);
    C* dh_carry;
    C* dc_carry;  // row r at (r - b0) * H
    if constexpr (kReduced<S>) {
      dh_carry = carries.data_ptr<C>();
      dc_carry = dh_carry + (b1 - b0) * H;
    } else {
      dh_carry = dh0 + b0 * H;
      dc_carry = dc0 + b0 * H;
    }
    for (int64_t t = Tn - 1; t >= 0; --t) {
      const S* c_prev = t == 0 ? c0 : cs + (t - 1) * B * H;
      for (int64_t r = b0; r < b1; ++r) {
        const int64_t s = t * B + r;
        cell_backward(gates + s * G, cs + s * H, c_prev + r * H, dhs + s * H, dcs + s * H, dh_carry + (r - b0) * H,
                      dc_carry + (r - b0) * H, dxg + s * G, H);
      }
      for (int64_t k0 = 0; k0 < Hp; k0 += 4 * V) {
        with_tile<4>((Hp - k0) / V, [&](auto nv) {
          constexpr int NV = decltype(nv)::value;
          for (int64_t kb = 0; kb < G; kb += KB) {
            for (int64_t r0 = b0; r0 < b1; r0 += kMR) {
              with_tile<kMR>(b1 - r0, [&](auto mr) {
                constexpr int MR = decltype(mr)::value;
                const S* a = dxg + (t * B + r0) * G + kb;
                C* out = acc + (r0 - b0) * NV * V;
                const W* bk = wb + (kb * Hp + k0 * P);  // kb is a multiple of P
                const int64_t kn = std::min(KB, G - kb);
                if (kb == 0) backward_tile<S, MR, NV, false>(a, G, bk, Hp * P, kn, out, NV * V);
                else backward_tile<S, MR, NV, true>(a, G, bk, Hp * P, kn, out, NV * V);
              });
            }
          }
          for (int64_t r = b0; r < b1; ++r)
            for (int v = 0; v < NV; ++v) {
              const int64_t k = k0 + v * V;
              if (k < H)
                store(Vectorized<C>::loadu(acc + (r - b0) * NV * V + v * V), dh_carry + (r - b0) * H + k,
                      std::min(V, H - k));
            }
        });
      }
    }
    if constexpr (kReduced<S>)
      for (int64_t e = 0; e < (b1 - b0) * H; ++e) {
        dh0[b0 * H + e] = static_cast<S>(dh_carry[e]);
        dc0[b0 * H + e] = static_cast<S>(dc_carry[e]);
      }
  });
}

// dw [4H, H] = sum_j dg[j]^T hp[j] over J rows (dg rows 4H apart, hp rows H apart): the
// one GEMM for dW_hh after the reverse loop. With x (rows I apart, else null) also, in the same
// pass while each block of dg is in cache, dwih_t [I, 4H] += sum_j x[j]^T dg[j] and db [4H] +=
// sum_j dg[j] (both accumulated: the caller zeroes them). Needs H % V == 0 (full-vector rows
// of hp). Threads split the rows of dw in whole vectors; j is blocked so the current block of
// dg and hp stays in L2.
template <typename T>
void weight_grad(const T* dg, const T* hp, T* dw, int64_t J, int64_t H, const T* x = nullptr, int64_t I = 0,
                 T* dwih_t = nullptr, T* db = nullptr) {
  constexpr int64_t V = kV<T>, JB = 256;
  const int64_t G = 4 * H;
  const T one(1);
  std::fill(dw, dw + G * H, T(0));
  at::parallel_for(0, G / V, 1, [&](int64_t v_begin, int64_t v_end) {
    const int64_t n_begin = v_begin * V, n_end = v_end * V;
    for (int64_t j0 = 0; j0 < J; j0 += JB) {
      const int64_t jn = std::min(JB, J - j0);
      for (int64_t n0 = n_begin; n0 < n_end; n0 += kMR) {
        for (int64_t k0 = 0; k0 < H; k0 += 4 * V) {
          with_tile<4>((H - k0) / V, [&](auto nv) {
            with_tile<kMR>(n_end - n0, [&](auto mr) {
              weight_grad_tile<T, decltype(mr)::value, decltype(nv)::value>(
                  dg + j0 * G + n0, G, hp + j0 * H + k0, H, jn, dw + n0 * H + k0, H);
            });
          });
        }
      }
      if (!x) continue;
      for (int64_t n0 = n_begin; n0 < n_end; n0 += 4 * V) {
        with_tile<4>((n_end - n0) / V, [&](auto nv) {
          constexpr int NV = decltype(nv)::value;
          const T* b = dg + j0 * G + n0;
          for (int64_t c0 = 0; c0 < I; c0 += kMR)
            with_tile<kMR>(I - c0, [&](auto mr) {
              weight_grad_tile<T, decltype(mr)::value, NV>(x + j0 * I + c0, I, b, G, jn, dwih_t + c0 * G + n0, G);
            });
          weight_grad_tile<T, 1, NV>(&one, 0, b, G, jn, db + n0, G);  // a_k = 0: every row times 1
        });
      }
    }
  });
}

#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
// The weight gradients of bf16 with vdpbf16ps, in one pass over dg = dxg [J = T*B rows, 4H]:
// dw_hh [4H, H] = sum_j dg[j]^T hp[j], hp[j] = h0 row j for j < B, else hs row j - B (no
// [h0, hs[:-1]] copy); with the layer input x [J, I] (else null) also dw_ih [4H, I] = sum_j
// dg[j]^T x[j] and db [4H] = sum_j dg[j], as if hp had I + 1 more columns, x's and ones. float32
// accumulation, one rounding at the end, as ATen's bf16 GEMM and sum. Needs H % 32 == 0.
// vdpbf16ps sums over PAIRS of rows (j, j+1), so each block of rows is first packed
// pair-interleaved into thread-local buffers with vpunpck{l,h}wd, which interleaves within
// 128-bit lanes: a packed 32-column chunk holds columns in the order of unpacked_column (undone
// when the results are written). The tile: 6 packed columns of hp (broadcast pairs) x 64 dg
// columns (4 vectors), 24 accumulators, over the block.
inline int64_t unpacked_column(int64_t q) {  // position q in 0..31 of a packed chunk -> column
  const int64_t m = q % 16;
  return 8 * (m / 4) + (q >= 16 ? 4 : 0) + m % 4;
}

// Rows j and j+1 (b may be null: a zero row) of one 32-column chunk, pair-interleaved: 16 pairs
// to out[0..15], 16 to out[16..31].
inline void pack_pair_chunk(const c10::BFloat16* a, const c10::BFloat16* b, int32_t* out) {
  const __m512i x = _mm512_loadu_si512(a), y = b ? _mm512_loadu_si512(b) : _mm512_setzero_si512();
  _mm512_storeu_si512(out, _mm512_unpacklo_epi16(x, y));
  _mm512_storeu_si512(out + 16, _mm512_unpackhi_epi16(x, y));
}

inline int32_t bf16_pair(c10::BFloat16 lo, c10::BFloat16 hi) {
  return static_cast<int32_t>(static_cast<uint32_t>(lo.x) | (static_cast<uint32_t>(hi.x) << 16));
}

template <int MR>
ECGKERN_ALWAYS_INLINE void weight_grad_bf16_tile(const int32_t* hp, int64_t ldh, const int32_t* dg, int64_t pairs,
                                                 float* acc, bool first) {
  __m512 a[MR][4];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < 4; ++v) a[r][v] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(acc + r * 64 + v * 16);
  for (int64_t p = 0; p < pairs; ++p) {
    __m512bh w[4];
    for (int v = 0; v < 4; ++v) w[v] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(dg + p * 64 + v * 16));
    for (int r = 0; r < MR; ++r) {
      const __m512bh x = reinterpret_cast<__m512bh>(_mm512_set1_epi32(hp[p * ldh + r]));
      for (int v = 0; v < 4; ++v) a[r][v] = _mm512_dpbf16_ps(a[r][v], x, w[v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < 4; ++v) _mm512_storeu_ps(acc + r * 64 + v * 16, a[r][v]);
}

void weight_grad_bf16(const c10::BFloat16* dg, const c10::BFloat16* h0, const c10::BFloat16* hs,
                      const c10::BFloat16* x, int64_t I, c10::BFloat16* dw_hh, c10::BFloat16* dw_ih,
                      c10::BFloat16* db, int64_t J, int64_t B, int64_t H) {
  constexpr int64_t JB = 64;  // row pairs per block: 16 KB of packed h (H = 64), 16 KB per dg group
  const int64_t G = 4 * H, groups = G / 64, cols = H + (x ? I + 1 : 0);  // packed columns of hp
  const int32_t ones = bf16_pair(c10::BFloat16(1.0f), c10::BFloat16(1.0f));
  const auto h_row = [&](int64_t j) { return j < B ? h0 + j * H : hs + (j - B) * H; };
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    // acc: per group, `cols` packed columns x 64 dg lanes; hpk: [JB][cols]; dgk: per group [JB][64].
    const at::Tensor sums = at::empty({(g1 - g0) * cols * 64}, at::kFloat);
    const at::Tensor packs = at::empty({JB * cols + (g1 - g0) * JB * 64}, at::kInt);
    float* acc = sums.data_ptr<float>();
    int32_t* hpk = packs.data_ptr<int32_t>();
    int32_t* dgk = hpk + JB * cols;
    for (int64_t j0 = 0; j0 < J; j0 += 2 * JB) {
      const int64_t pairs = std::min(JB, (J - j0 + 1) / 2);
      for (int64_t p = 0; p < pairs; ++p) {
        const int64_t j = j0 + 2 * p;
        const bool has_next = j + 1 < J;  // else the pair's second dg row is zero
        int32_t* hp = hpk + p * cols;
        for (int64_t c = 0; c < H; c += 32)
          pack_pair_chunk(h_row(j) + c, has_next ? h_row(j + 1) + c : nullptr, hp + c);
        if (x) {
          for (int64_t i = 0; i < I; ++i)
            hp[H + i] = bf16_pair(x[j * I + i], has_next ? x[(j + 1) * I + i] : c10::BFloat16(0.0f));
          hp[H + I] = ones;
        }
        for (int64_t g = g0; g < g1; ++g)
          for (int64_t c = 0; c < 64; c += 32)
            pack_pair_chunk(dg + j * G + g * 64 + c, has_next ? dg + (j + 1) * G + g * 64 + c : nullptr,
                            dgk + ((g - g0) * JB + p) * 64 + c);
      }
      for (int64_t g = g0; g < g1; ++g)
        for (int64_t k0 = 0; k0 < cols; k0 += kMR)
          with_tile<kMR>(cols - k0, [&](auto mr) {
            weight_grad_bf16_tile<decltype(mr)::value>(hpk + k0, cols, dgk + (g - g0) * JB * 64, pairs,
                                                       acc + ((g - g0) * cols + k0) * 64, j0 == 0);
          });
    }
    for (int64_t g = g0; g < g1; ++g)
      for (int64_t pos = 0; pos < cols; ++pos) {
        const float* lanes = acc + ((g - g0) * cols + pos) * 64;
        for (int64_t q = 0; q < 64; ++q) {
          const int64_t n = g * 64 + q / 32 * 32 + unpacked_column(q % 32);
          const auto value = static_cast<c10::BFloat16>(lanes[q]);
          if (pos < H) dw_hh[n * H + pos / 32 * 32 + unpacked_column(pos % 32)] = value;
          else if (pos < H + I) dw_ih[n * I + pos - H] = value;
          else db[n] = value;
        }
      }
  });
}
#endif

// ---------------------------------------------------------------------------------------------
// The ops: checked, dense inputs (csrc/tensor_checks.h), fresh outputs, dtype dispatch.

// Checks `t` against w_hh, the input every op has.
void check_tensor(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef sizes, const char* dims,
                  const at::Tensor& w_hh) {
  ecgkern_checks::check_tensor(op, name, t, "w_hh", w_hh, sizes, dims);
}

// (H, T, B) from w_hh [4H, H] and the [T, B, *] tensor `seq` that sets T and B.
std::tuple<int64_t, int64_t, int64_t> check_sizes(const char* op, const at::Tensor& w_hh, const char* seq_name,
                                                  const at::Tensor& seq) {
  const auto [Tn, B, H] = ecgkern_checks::recurrence_sizes(op, w_hh, seq_name, seq, c10::DeviceType::CPU);
  return {H, Tn, B};
}

// A fresh output tensor. Outputs of tens of MB (B=256, H=256: gates alone are 147 MB) come
// straight from mmap, and their first-touch page faults, one per 4 KiB, cost about a third of
// the forward: ask for transparent huge pages (no-op where THP is "never" or "always").
// Only from 32 MB: smaller outputs are recycled from malloc's heap after the first call, and
// the advice on those cost time (measured at the ECG shape).
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = (begin + t.nbytes()) & ~(kHuge - 1);
  if (t.nbytes() >= 16 * kHuge && last > first)
    madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);  // advice only: errors ignored
#endif
  return t;
}

const char* kFwd = "ecgkern::lstm_recurrence";
const char* kBwd = "ecgkern::lstm_recurrence_backward";
const char* kInf = "ecgkern::lstm_recurrence_inference";
const char* kInputFwd = "ecgkern::lstm_input_recurrence";
const char* kInputInf = "ecgkern::lstm_input_recurrence_inference";
const char* kInputBwd = "ecgkern::lstm_input_recurrence_backward";

// Checked, dense inputs and fresh outputs (hs, cs, and gates when with_gates) of a forward,
// from xg [T, B, 4H] or, when x is defined, from the layer input x [T, B, I], w_ih [4H, I] and
// bias [4H] (then xg is undefined).
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_forward(const char* op, const at::Tensor& xg_in,
                                                           const at::Tensor& x_in, const at::Tensor& w_ih_in,
                                                           const at::Tensor& bias_in, const at::Tensor& w_hh_in,
                                                           const at::Tensor& h0_in, const at::Tensor& c0_in,
                                                           bool with_gates) {
  const bool from_input = x_in.defined();
  const at::Tensor& seq = from_input ? x_in : xg_in;
  auto [H, Tn, B] = check_sizes(op, w_hh_in, from_input ? "x" : "xg", seq);
  check_tensor(op, "w_hh", w_hh_in, {4 * H, H}, "[4H, H]", w_hh_in);
  if (from_input) {
    const int64_t I = x_in.size(2);
    check_tensor(op, "x", x_in, {Tn, B, I}, "[T, B, I]", w_hh_in);
    check_tensor(op, "w_ih", w_ih_in, {4 * H, I}, "[4H, I]", w_hh_in);
    check_tensor(op, "bias", bias_in, {4 * H}, "[4H]", w_hh_in);
  } else {
    check_tensor(op, "xg", xg_in, {Tn, B, 4 * H}, "[T, B, 4H]", w_hh_in);
  }
  check_tensor(op, "h0", h0_in, {B, H}, "[B, H]", w_hh_in);
  check_tensor(op, "c0", c0_in, {B, H}, "[B, H]", w_hh_in);
  // Strided inputs (transposed, sliced, expanded) are copied once to dense row-major.
  const auto seq_dense = seq.contiguous(), w_hh = w_hh_in.contiguous();
  const auto h0 = h0_in.contiguous(), c0 = c0_in.contiguous();
  auto hs = empty_output({Tn, B, H}, w_hh.options());
  auto cs = empty_output({Tn, B, H}, w_hh.options());
  auto gates = with_gates ? empty_output({Tn, B, 4 * H}, w_hh.options()) : at::Tensor();
  if (hs.numel() == 0) return {hs, cs, gates};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, w_hh.scalar_type(), "lstm_recurrence_cpu", [&] {
    using Kernel = decltype(&forward_kernel<scalar_t, true, true>);
    const Kernel kernels[2][2] = {{forward_kernel<scalar_t, false, false>, forward_kernel<scalar_t, true, false>},
                                  {forward_kernel<scalar_t, false, true>, forward_kernel<scalar_t, true, true>}};
    const Kernel run = kernels[from_input][with_gates];  // [from the input?][with gates?]
    at::Tensor packed_input;
    InputProjection<scalar_t> proj{};
    if (from_input) {
      const int64_t I = x_in.size(2);
      const auto w_ih = w_ih_in.contiguous(), bias = bias_in.contiguous();
      packed_input = pack_input(w_ih.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(), H, I);
      proj = {seq_dense.data_ptr<scalar_t>(), I, packed_input.data_ptr<acc_t<scalar_t>>()};
    }
    run(from_input ? nullptr : seq_dense.data_ptr<scalar_t>(), from_input ? &proj : nullptr,
        w_hh.data_ptr<scalar_t>(), h0.data_ptr<scalar_t>(), c0.data_ptr<scalar_t>(), hs.data_ptr<scalar_t>(),
        cs.data_ptr<scalar_t>(), with_gates ? gates.data_ptr<scalar_t>() : nullptr, Tn, B, H);
  });
  return {hs, cs, gates};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_recurrence_cpu(
    const at::Tensor& xg, const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0) {
  return run_forward(kFwd, xg, {}, {}, {}, w_hh, h0, c0, /*with_gates=*/true);
}

// The no-grad forward: no [T, B, 4H] gates written (less memory traffic, fewer page faults).
std::tuple<at::Tensor, at::Tensor> lstm_recurrence_inference_cpu(
    const at::Tensor& xg, const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0) {
  auto [hs, cs, gates] = run_forward(kInf, xg, {}, {}, {}, w_hh, h0, c0, /*with_gates=*/false);
  return {hs, cs};
}

// The same two forwards from the layer input: xg = x @ w_ih^T + bias computed step by step.
std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_input_recurrence_cpu(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& bias, const at::Tensor& w_hh,
    const at::Tensor& h0, const at::Tensor& c0) {
  return run_forward(kInputFwd, {}, x, w_ih, bias, w_hh, h0, c0, /*with_gates=*/true);
}

std::tuple<at::Tensor, at::Tensor> lstm_input_recurrence_inference_cpu(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& bias, const at::Tensor& w_hh,
    const at::Tensor& h0, const at::Tensor& c0) {
  auto [hs, cs, gates] = run_forward(kInputInf, {}, x, w_ih, bias, w_hh, h0, c0, /*with_gates=*/false);
  return {hs, cs};
}

// ATen's float16 GEMM on CPUs without AVX512-FP16, and its bfloat16 one without AVX-512, are
// loops 15-50x slower than its float32 GEMM: there the 16-bit weight gradients widen, run in
// float32 and round once (what the 16-bit GEMM computes: float32 accumulation). The rule of
// ecgkern._build.cpu_gemm_is_fast, except that float16 widens even with AVX512-FP16 (not
// measured on such a CPU).
bool aten_gemm_is_slow(at::ScalarType dtype) {
#if defined(CPU_CAPABILITY_AVX512)
  return dtype == at::kHalf;
#else
  return dtype == at::kHalf || dtype == at::kBFloat16;
#endif
}

// The weight gradients from dxg [T, B, 4H], as sums over all T*B rows: w_hh = sum dgates^T
// h_prev (h_prev = [h0, hs[:-1]]) and, with the layer input x [T, B, I] (else undefined),
// w_ih = sum dgates^T x and bias = sum dgates. One pass over dxg for all of them where the
// kernels allow (weight_grad, weight_grad_bf16); else ATen's GEMMs, dw_ih as (x^T dxg)^T, the
// orientation autograd gives addmm (dxg^T x took 6.5x as long in float32 at I=3).
struct WeightGrads {
  at::Tensor w_hh, w_ih, bias;
};

WeightGrads weight_grads(const at::Tensor& dxg, const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& hs,
                         const at::Tensor& x) {
  const int64_t Tn = dxg.size(0), B = dxg.size(1), H = w_hh.size(1), G = 4 * H;
  const bool with_input = x.defined();
  const int64_t I = with_input ? x.size(2) : 0;
  const auto options = w_hh.options();
  WeightGrads out;
#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
  // Measured against the oneDNN GEMM below (Zen 5, benchmarks/ab_cpu_kernels.py): the bf16
  // backward op 1.08x faster at the ECG shape and at B=256, H=256.
  if (w_hh.scalar_type() == at::kBFloat16 && H % 32 == 0) {
    out.w_hh = at::empty_like(w_hh);
    if (with_input) out.w_ih = at::empty({G, I}, options), out.bias = at::empty({G}, options);
    const auto ptr = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<c10::BFloat16>() : nullptr; };
    weight_grad_bf16(ptr(dxg), ptr(h0), ptr(hs), ptr(x), I, ptr(out.w_hh), ptr(out.w_ih), ptr(out.bias), Tn * B, B,
                     H);
    return out;
  }
#endif
  if (aten_gemm_is_slow(w_hh.scalar_type())) {
    const auto wide = [](const at::Tensor& t) { return t.defined() ? t.to(at::kFloat) : t; };
    const auto round = [&](const at::Tensor& t) { return t.defined() ? t.to(w_hh.scalar_type()) : t; };
    const WeightGrads w = weight_grads(wide(dxg), wide(w_hh), wide(h0), wide(hs), wide(x));
    return {round(w.w_hh), round(w.w_ih), round(w.bias)};
  }
  const at::Tensor dg = dxg.reshape({-1, G});
  bool tiled = false;  // float32/float64 with H whole vectors: the register-tiled pass
  if (w_hh.scalar_type() != at::kBFloat16)
    AT_DISPATCH_FLOATING_TYPES(w_hh.scalar_type(), "lstm_weight_grads_cpu", [&] { tiled = H % kV<scalar_t> == 0; });
  if (!tiled) {
#if defined(CPU_CAPABILITY_AVX512)
    // bf16 with H not a multiple of 32, or without AVX512-BF16: ATen's bf16 GEMM (oneDNN,
    // float32 accumulation), rounded once; with a zero h0 (the default state) step 0 adds nothing
    // and hs[:-1] needs no copy (0.85x the time). float32/float64 with H not whole vectors.
    if (w_hh.scalar_type() == at::kBFloat16 && Tn > 1 && !h0.any().item<bool>())
      out.w_hh = at::mm(dxg.narrow(0, 1, Tn - 1).reshape({-1, G}).t(), hs.narrow(0, 0, Tn - 1).reshape({-1, H}));
#endif
    if (!out.w_hh.defined())
      out.w_hh = at::mm(dg.t(), at::cat({h0.unsqueeze(0), hs.narrow(0, 0, Tn - 1)}).reshape({-1, H}));
    if (with_input) out.w_ih = at::mm(x.reshape({-1, I}).t(), dg).t().contiguous(), out.bias = dg.sum(0);
    return out;
  }
  // float32/float64: steps 1..T-1 in the register-tiled pass, then step 0's (h0) rows.
  out.w_hh = at::empty_like(w_hh);
  at::Tensor dwih_t = with_input ? at::zeros({I, G}, options) : at::Tensor();
  if (with_input) out.bias = at::zeros({G}, options);
  AT_DISPATCH_FLOATING_TYPES(w_hh.scalar_type(), "lstm_recurrence_weight_grad_cpu", [&] {
    const auto ptr = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
    weight_grad<scalar_t>(ptr(dxg) + B * G, ptr(hs), ptr(out.w_hh), (Tn - 1) * B, H,
                          with_input ? ptr(x) + B * I : nullptr, I, ptr(dwih_t), ptr(out.bias));
  });
  out.w_hh.addmm_(dxg[0].t(), h0);
  if (with_input) {
    out.w_ih = dwih_t.addmm_(x[0].t(), dxg[0]).t().contiguous();
    out.bias.add_(dxg[0].sum(0));
  }
  return out;
}

// Checked, dense inputs of a backward, then the reverse loop: (dxg, dh0, dc0) and the dense
// w_hh, h0 and hs that the weight gradients need.
struct BackwardRun {
  at::Tensor dxg, dh0, dc0, w_hh, h0, hs;
};

BackwardRun run_backward(const char* op, const at::Tensor& dhs_in, const at::Tensor& dcs_in,
                         const at::Tensor& w_hh_in, const at::Tensor& h0_in, const at::Tensor& c0_in,
                         const at::Tensor& hs_in, const at::Tensor& cs_in, const at::Tensor& gates_in) {
  auto [H, Tn, B] = check_sizes(op, w_hh_in, "gates", gates_in);
  check_tensor(op, "w_hh", w_hh_in, {4 * H, H}, "[4H, H]", w_hh_in);
  check_tensor(op, "gates", gates_in, {Tn, B, 4 * H}, "[T, B, 4H]", w_hh_in);
  check_tensor(op, "dhs", dhs_in, {Tn, B, H}, "[T, B, H]", w_hh_in);
  check_tensor(op, "dcs", dcs_in, {Tn, B, H}, "[T, B, H]", w_hh_in);
  check_tensor(op, "hs", hs_in, {Tn, B, H}, "[T, B, H]", w_hh_in);
  check_tensor(op, "cs", cs_in, {Tn, B, H}, "[T, B, H]", w_hh_in);
  check_tensor(op, "h0", h0_in, {B, H}, "[B, H]", w_hh_in);
  check_tensor(op, "c0", c0_in, {B, H}, "[B, H]", w_hh_in);
  const auto dhs = dhs_in.contiguous(), dcs = dcs_in.contiguous(), w_hh = w_hh_in.contiguous();
  const auto h0 = h0_in.contiguous(), c0 = c0_in.contiguous(), hs = hs_in.contiguous();
  const auto cs = cs_in.contiguous(), gates = gates_in.contiguous();
  BackwardRun run{empty_output({Tn, B, 4 * H}, w_hh.options()), at::zeros({B, H}, w_hh.options()),
                  at::zeros({B, H}, w_hh.options()), w_hh, h0, hs};
  if (run.dxg.numel() == 0) return run;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, w_hh.scalar_type(), "lstm_recurrence_backward_cpu", [&] {
    backward_kernel<scalar_t>(dhs.data_ptr<scalar_t>(), dcs.data_ptr<scalar_t>(),
                              w_hh.data_ptr<scalar_t>(), c0.data_ptr<scalar_t>(),
                              cs.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>(),
                              run.dxg.data_ptr<scalar_t>(), run.dh0.data_ptr<scalar_t>(),
                              run.dc0.data_ptr<scalar_t>(), Tn, B, H);
  });
  return run;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_recurrence_backward_cpu(
    const at::Tensor& dhs, const at::Tensor& dcs, const at::Tensor& w_hh, const at::Tensor& h0,
    const at::Tensor& c0, const at::Tensor& hs, const at::Tensor& cs, const at::Tensor& gates) {
  BackwardRun r = run_backward(kBwd, dhs, dcs, w_hh, h0, c0, hs, cs, gates);
  at::Tensor dw_hh = r.dxg.numel() ? weight_grads(r.dxg, r.w_hh, r.h0, r.hs, {}).w_hh : at::zeros_like(r.w_hh);
  return {r.dxg, dw_hh, r.dh0, r.dc0};
}

// The backward of the recurrence from the layer input x [T, B, I]: also the gradients of w_ih
// [4H, I] and of the bias [4H] (dx = dxg @ w_ih is left to the caller: only needed when x
// requires grad), from the same pass over dxg as dw_hh where the kernels allow (weight_grads).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_input_recurrence_backward_cpu(
    const at::Tensor& dhs, const at::Tensor& dcs, const at::Tensor& x_in, const at::Tensor& w_hh,
    const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& hs, const at::Tensor& cs,
    const at::Tensor& gates) {
  const auto [H, Tn, B] = check_sizes(kInputBwd, w_hh, "gates", gates);
  const int64_t I = x_in.dim() == 3 ? x_in.size(2) : 0;
  check_tensor(kInputBwd, "x", x_in, {Tn, B, I}, "[T, B, I]", w_hh);
  BackwardRun r = run_backward(kInputBwd, dhs, dcs, w_hh, h0, c0, hs, cs, gates);
  const auto x = x_in.contiguous();
  if (r.dxg.numel() == 0)
    return {r.dxg, at::zeros({4 * H, I}, w_hh.options()), at::zeros({4 * H}, w_hh.options()), at::zeros_like(w_hh),
            r.dh0, r.dc0};
  const WeightGrads w = weight_grads(r.dxg, r.w_hh, r.h0, r.hs, x);
  return {r.dxg, w.w_ih, w.bias, w.w_hh, r.dh0, r.dc0};
}

}  // namespace

// Private ops: the public ecgkern::lstm_recurrence* ops are defined in Python (at import of
// ecgkern) and their CPU kernels load this library on first use and call these.
TORCH_LIBRARY(ecgkern_cpu, m) {
  m.def("lstm_recurrence(Tensor xg, Tensor w_hh, Tensor h0, Tensor c0) -> (Tensor, Tensor, Tensor)",
        &lstm_recurrence_cpu);
  m.def("lstm_recurrence_backward(Tensor dhs, Tensor dcs, Tensor w_hh, Tensor h0, Tensor c0, Tensor hs, "
        "Tensor cs, Tensor gates) -> (Tensor, Tensor, Tensor, Tensor)",
        &lstm_recurrence_backward_cpu);
  m.def("lstm_recurrence_inference(Tensor xg, Tensor w_hh, Tensor h0, Tensor c0) -> (Tensor, Tensor)",
        &lstm_recurrence_inference_cpu);
  m.def("lstm_input_recurrence(Tensor x, Tensor w_ih, Tensor bias, Tensor w_hh, Tensor h0, Tensor c0) "
        "-> (Tensor, Tensor, Tensor)",
        &lstm_input_recurrence_cpu);
  m.def("lstm_input_recurrence_inference(Tensor x, Tensor w_ih, Tensor bias, Tensor w_hh, Tensor h0, Tensor c0) "
        "-> (Tensor, Tensor)",
        &lstm_input_recurrence_inference_cpu);
  m.def("lstm_input_recurrence_backward(Tensor dhs, Tensor dcs, Tensor x, Tensor w_hh, Tensor h0, Tensor c0, "
        "Tensor hs, Tensor cs, Tensor gates) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
        &lstm_input_recurrence_backward_cpu);
}
