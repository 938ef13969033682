// Runs the real kernels of csrc/lstm_cuda_kernels.cu on the CPU, for float32, float64,
// bfloat16 and float16 (the CUDA headers' host conversions):
// each block's threads are std::threads, __syncthreads() is a std::barrier, __shared__ arrays
// are function statics (blocks run one after another). The per-step GEMMs of the fused
// strategy, which the torch binding runs through cuBLAS, are naive loops here.
//
//   emulate <persistent|fused> <f32|f64|bf16|f16> T B H inputs.bin outputs.bin
// inputs: xg [T,B,4H], w_hh [4H,H], h0 [B,H], c0 [B,H], dhs [T,B,H], dcs [T,B,H] (raw, dtype)
// outputs: hs, cs [T,B,H], gates [T,B,4H], dxg [T,B,4H], dh0, dc0 [B,H]
#include <cuda_runtime.h>  // vector types and the host definitions of __align__ etc.

#include <barrier>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;
static std::barrier<>* block_barrier = nullptr;
static void __syncthreads() { block_barrier->arrive_and_wait(); }

#undef __global__
#define __global__
#undef __shared__
#define __shared__ static
#undef __launch_bounds__
#define __launch_bounds__(...)
#define ECGKERN_CUDA_KERNELS_ONLY
#include "../../csrc/lstm_cuda_kernels.cu"

using namespace ecgkern_cuda;

template <typename Body>
static void launch(unsigned grid, unsigned block, Body body) {
  gridDim = dim3(grid);
  blockDim = dim3(block);
  for (unsigned b = 0; b < grid; ++b) {
    std::barrier<> barrier(block);
    block_barrier = &barrier;
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < block; ++t)
      threads.emplace_back([=] { blockIdx = make_uint3(b, 0, 0); threadIdx = make_uint3(t, 0, 0); body(); });
    for (auto& th : threads) th.join();
  }
}

// out[r][n] = sum_k a[r][k] * b(k, n), in acc precision: the fused strategy's recurrent GEMMs.
template <typename A, typename S, typename B>
static void gemm(const S* a, B b, A* out, int rows, int inner, int cols) {
  for (int r = 0; r < rows; ++r)
    for (int n = 0; n < cols; ++n) {
      A s = 0;
      for (int k = 0; k < inner; ++k) s += A(a[r * inner + k]) * A(b(k, n));
      out[r * cols + n] = s;
    }
}

template <typename S>
static int run(bool persistent, int T, int B, int H, FILE* in, FILE* out) {
  using A = acc_t<S>;
  const long G = 4L * H;
  auto read = [&](long n) { std::vector<S> v(n); if (fread(v.data(), sizeof(S), n, in) != size_t(n)) exit(3); return v; };
  auto xg = read(T * B * G), w = read(G * H), h0 = read(B * H), c0 = read(B * H), dhs = read(T * B * H), dcs = read(T * B * H);
  std::vector<S> hs(T * B * H), cs(T * B * H), gates(T * B * G), dxg(T * B * G), dh0(B * H), dc0(B * H);
  if (persistent) {
    const bool narrow = H <= 32;
    if (narrow) launch(B, 4 * 32, [&] { persistent_forward_kernel<S, 32>(xg.data(), w.data(), h0.data(), c0.data(), hs.data(), cs.data(), gates.data(), T, B, H); });
    else launch(B, 4 * 64, [&] { persistent_forward_kernel<S, 64>(xg.data(), w.data(), h0.data(), c0.data(), hs.data(), cs.data(), gates.data(), T, B, H); });
    if (narrow) launch(B, 4 * 32, [&] { persistent_backward_kernel<S, 32>(dhs.data(), dcs.data(), w.data(), c0.data(), cs.data(), gates.data(), dxg.data(), dh0.data(), dc0.data(), T, B, H); });
    else launch(B, 4 * 64, [&] { persistent_backward_kernel<S, 64>(dhs.data(), dcs.data(), w.data(), c0.data(), cs.data(), gates.data(), dxg.data(), dh0.data(), dc0.data(), T, B, H); });
  } else {
    // As the binding: GEMMs in acc precision, on hs/dxg where storage == acc, else on the acc
    // copies (h_state, dgates_state) the kernels keep. Two blocks of 64 threads, fewer than the
    // elements: exercises the grid-stride loops.
    const bool keep_acc = sizeof(S) != sizeof(A);
    std::vector<A> hw(B * G), dh_rec(B * H), c_state(B * H), dc_state(B * H, 0), h_state(B * H), dgates_state(B * G);
    for (int i = 0; i < B * H; ++i) c_state[i] = A(c0[i]), h_state[i] = A(h0[i]);
    for (int t = 0; t < T; ++t) {
      auto w_t = [&](int k, int n) { return w[n * H + k]; };  // h @ W^T
      if (keep_acc) gemm(h_state.data(), w_t, hw.data(), B, H, G);
      else gemm(t == 0 ? h0.data() : hs.data() + (t - 1) * B * H, w_t, hw.data(), B, H, G);
      launch(2, 64, [&] { pointwise_forward_kernel<S>(xg.data() + t * B * G, hw.data(), c_state.data(), keep_acc ? h_state.data() : nullptr, hs.data() + t * B * H, cs.data() + t * B * H, gates.data() + t * B * G, B, H); });
    }
    for (int t = T - 1; t >= 0; --t) {
      launch(2, 64, [&] { pointwise_backward_kernel<S>(dhs.data() + t * B * H, t == T - 1 ? nullptr : dh_rec.data(), dcs.data() + t * B * H, dc_state.data(), gates.data() + t * B * G, cs.data() + t * B * H, t == 0 ? c0.data() : cs.data() + (t - 1) * B * H, dxg.data() + t * B * G, keep_acc ? dgates_state.data() : nullptr, B, H); });
      auto w_ = [&](int k, int n) { return w[k * H + n]; };  // dgates @ W
      if (keep_acc) gemm(dgates_state.data(), w_, dh_rec.data(), B, G, H);
      else gemm(dxg.data() + t * B * G, w_, dh_rec.data(), B, G, H);
    }
    for (int i = 0; i < B * H; ++i) dh0[i] = S(dh_rec[i]), dc0[i] = S(dc_state[i]);
  }
  for (auto* v : {&hs, &cs, &gates, &dxg, &dh0, &dc0}) fwrite(v->data(), sizeof(S), v->size(), out);
  return 0;
}

int main(int argc, char** argv) {
  if (argc != 8) { fprintf(stderr, "usage: emulate <persistent|fused> <f32|f64|bf16|f16> T B H in out\n"); return 2; }
  const bool persistent = std::string(argv[1]) == "persistent";
  const int T = atoi(argv[3]), B = atoi(argv[4]), H = atoi(argv[5]);
  FILE* in = fopen(argv[6], "rb");
  FILE* out = fopen(argv[7], "wb");
  if (!in || !out) return 4;
  const std::string dtype = argv[2];
  const int rc = dtype == "f64" ? run<double>(persistent, T, B, H, in, out)
               : dtype == "bf16" ? run<__nv_bfloat16>(persistent, T, B, H, in, out)
               : dtype == "f16" ? run<__half>(persistent, T, B, H, in, out)
               : run<float>(persistent, T, B, H, in, out);
  fclose(in);
  fclose(out);
  return rc;
}
