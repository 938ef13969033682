// Input checks shared by the CPU and CUDA bindings of the ecgkern recurrence ops: the kernels
// trust nothing that Python passed. One rule for both devices: every tensor must be defined,
// on the same device as `like` (the input named `like_name`), of `like`'s (supported) dtype
// and of the expected shape. Contiguity is not an error: each op makes its inputs dense with
// .contiguous() (a no-op for tensors that already are).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>

namespace ecgkern_checks {

// float32, float64, float16 and bfloat16: every dtype the recurrence kernels take.
inline bool is_kernel_dtype(at::ScalarType type) {
  return type == at::kFloat || type == at::kDouble || type == at::kHalf || type == at::kBFloat16;
}

inline void check_tensor(const char* op, const char* name, const at::Tensor& t, const char* like_name,
                         const at::Tensor& like, at::IntArrayRef sizes, const char* dims) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is an undefined tensor");
  TORCH_CHECK(t.device().type() == like.device().type(), op, ": ", name, " must be a ", like.device().type(),
              " tensor, got one on ", t.device());
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " is on ", t.device(), " but ", like_name, " is on ",
              like.device());
  TORCH_CHECK(is_kernel_dtype(t.scalar_type()), op, ": ", name,
              " must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
              " but ", like_name, " has dtype ", like.scalar_type(), "; all inputs must share one dtype");
  TORCH_CHECK(t.dim() == static_cast<int64_t>(sizes.size()), op, ": ", name, " must be ", sizes.size(), "-D ",
              dims, ", got ", t.dim(), "-D with shape ", t.sizes());
  TORCH_CHECK(t.sizes() == sizes, op, ": ", name, " has shape ", t.sizes(), ", expected ", dims, " = ", sizes);
}

// (T, B, H) from w_hh [4H, H] and the [T, B, *] tensor `seq` that sets T and B, after checking
// that both have the ranks and the w_hh shape that make them meaningful. `seq` must be on
// `device_type` (the op's device), so every other tensor is checked against it.
inline std::tuple<int64_t, int64_t, int64_t> recurrence_sizes(const char* op, const at::Tensor& w_hh,
                                                              const char* seq_name, const at::Tensor& seq,
                                                              c10::DeviceType device_type) {
  TORCH_CHECK(w_hh.defined() && w_hh.dim() == 2, op, ": w_hh must be 2-D [4H, H], got ",
              w_hh.defined() ? w_hh.dim() : 0, "-D");
  const int64_t H = w_hh.size(1);
  TORCH_CHECK(w_hh.size(0) == 4 * H, op, ": w_hh has shape ", w_hh.sizes(), ", expected [4H, H] with 4H = 4 * ", H,
              " = ", 4 * H, " rows");
  TORCH_CHECK(seq.defined() && seq.dim() == 3, op, ": ", seq_name, " must be 3-D [T, B, *], got ",
              seq.defined() ? seq.dim() : 0, "-D");
  TORCH_CHECK(seq.device().type() == device_type, op, ": ", seq_name, " must be a ", device_type,
              " tensor, got one on ", seq.device());
  const int64_t T = seq.size(0), B = seq.size(1);
  // BLAS and the CUDA launch grids take int dimensions.
  TORCH_CHECK(4 * H <= INT32_MAX && B <= INT32_MAX, op, ": hidden size ", H, " or batch ", B,
              " is too large for int dimensions");
  return {T, B, H};
}

}  // namespace ecgkern_checks
