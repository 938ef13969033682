// Declarations shared by the CUDA kernels (lstm_cuda_kernels.cu) and the torch binding
// (lstm_cuda.cpp). Plain C++ with CUDA runtime types only: no torch, no device code, so the
// kernel translation unit compiles with bare nvcc and the binding with any host compiler.
//
// Layouts (all contiguous, row-major): xg/gates/dxg [T, B, 4H] with gate blocks i, f, g, o;
// w_hh [4H, H]; h0/c0/dh0/dc0 [B, H]; hs/cs/dhs/dcs [T, B, H].
// "storage" is the tensors' dtype; "acc" is the accumulate type: double for float64, float
// for float32, float16 and bfloat16. Both strategies carry the recurrence (h, c and their
// gradients, and the recurrent GEMM's operands and result) in acc precision: float16/bfloat16
// is the storage of the outputs only, so the two strategies compute the same function.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace ecgkern_cuda {

enum class Dtype : int { f32 = 0, f64 = 1, f16 = 2, bf16 = 3 };

// The persistent kernels keep a hidden-size-wide slice of W_hh in each thread's registers,
// compiled for these padded widths; larger hidden sizes take the per-step (fused) path.
constexpr int64_t kPersistentMaxHidden = 64;

inline bool persistent_fits(int64_t hidden) { return hidden >= 1 && hidden <= kPersistentMaxHidden; }

// ---- Strategy (a): per step, the caller runs the recurrent GEMM, then ONE of these. ----------
// The GEMMs run in acc precision: on hs[t-1] / dxg[t] themselves where storage == acc, else on
// the acc copies h_state / dgates_state that these kernels write, with W_hh upcast once.

struct PointwiseForwardArgs {
  const void* xg;     // [B, 4H] storage: this step's input projection (biases included)
  const void* hw;     // [B, 4H] acc: h_{t-1} @ W_hh^T
  void* c_state;      // [B, H]  acc: c_{t-1} on entry, c_t on exit (kept in acc precision)
  void* h_state;      // [B, H]  acc: h_t for the next step's GEMM, or nullptr (storage == acc)
  void* h_out;        // [B, H]  storage: hs[t]
  void* c_out;        // [B, H]  storage: cs[t]
  void* gates_out;    // [B, 4H] storage: activated i, f, g, o
  int64_t batch;
  int64_t hidden;
};

struct PointwiseBackwardArgs {
  const void* dh_out;  // [B, H]  storage: dhs[t]
  const void* dh_rec;  // [B, H]  acc: dgates_{t+1} @ W_hh, or nullptr at the last step
  const void* dc_out;  // [B, H]  storage: dcs[t]
  void* dc_state;      // [B, H]  acc: f_{t+1} * dc_{t+1} on entry (zeros at the last step),
                       //         f_t * dc_t on exit (so dc0 after step 0)
  const void* gates;   // [B, 4H] storage: activated gates of step t
  const void* c;       // [B, H]  storage: cs[t]
  const void* c_prev;  // [B, H]  storage: cs[t-1], or c0 at step 0
  void* dxg;           // [B, 4H] storage: gradient of the pre-activations of step t
  void* dgates_state;  // [B, 4H] acc: the same gradients for the next GEMM, or nullptr (storage == acc)
  int64_t batch;
  int64_t hidden;
};

cudaError_t pointwise_forward(Dtype dtype, const PointwiseForwardArgs& args, cudaStream_t stream);
cudaError_t pointwise_backward(Dtype dtype, const PointwiseBackwardArgs& args, cudaStream_t stream);

// ---- Strategy (b): hidden <= kPersistentMaxHidden, all steps in one launch. -----------------
// One block per batch row (rows are independent, so no grid-wide synchronisation is needed).

struct PersistentForwardArgs {
  const void* xg;     // [T, B, 4H]
  const void* w_hh;   // [4H, H]
  const void* h0;     // [B, H]
  const void* c0;     // [B, H]
  void* hs;           // [T, B, H]
  void* cs;           // [T, B, H]
  void* gates;        // [T, B, 4H]
  int64_t steps;
  int64_t batch;
  int64_t hidden;
};

struct PersistentBackwardArgs {
  const void* dhs;    // [T, B, H]
  const void* dcs;    // [T, B, H]
  const void* w_hh;   // [4H, H]
  const void* c0;     // [B, H]
  const void* cs;     // [T, B, H]
  const void* gates;  // [T, B, 4H]
  void* dxg;          // [T, B, 4H]
  void* dh0;          // [B, H]
  void* dc0;          // [B, H]
  int64_t steps;
  int64_t batch;
  int64_t hidden;
};

// Both return cudaErrorInvalidValue when the sizes are out of range (see persistent_fits).
cudaError_t persistent_forward(Dtype dtype, const PersistentForwardArgs& args, cudaStream_t stream);
cudaError_t persistent_backward(Dtype dtype, const PersistentBackwardArgs& args, cudaStream_t stream);

}  // namespace ecgkern_cuda
