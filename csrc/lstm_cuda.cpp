// Thin torch binding of the CUDA recurrence: checks every input, allocates, picks the strategy,
// runs the GEMMs through ATen (cuBLAS) and the kernels of lstm_cuda_kernels.cu on the current
// stream. Registers private ops (ecgkern_cuda::*) that the CUDA kernels of ecgkern/backends/_ops.py call.
//
// Only c10/cuda headers (no ATen/cuda, which needs cuBLAS headers), so this file also
// syntax-checks against a CPU-only torch plus the CUDA runtime headers (.ci/check_cuda_build.sh).
//
// Strategy: hidden <= 64 takes the persistent kernels, larger hidden sizes the per-step GEMM +
// fused pointwise kernel. ECGKERN_CUDA_STRATEGY=fused|persistent|auto overrides (benchmarks).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <tuple>

#include "lstm_cuda_kernels.cuh"

namespace {

using at::Tensor;
namespace kern = ecgkern_cuda;

kern::Dtype kernel_dtype(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return kern::Dtype::f32;
    case at::kDouble: return kern::Dtype::f64;
    case at::kHalf: return kern::Dtype::f16;
    case at::kBFloat16: return kern::Dtype::bf16;
    default: break;
  }
  TORCH_CHECK(false, "ecgkern cuda backend: unsupported dtype ", type, "; expected float32, float64, float16 or bfloat16");
}

at::ScalarType accumulate_type(at::ScalarType type) { return type == at::kDouble ? at::kDouble : at::kFloat; }

// Every tensor: defined, CUDA, on `like`'s device, `like`'s dtype, contiguous, of `sizes`.
void check_tensor(const char* op, const char* name, const Tensor& t, const Tensor& like, at::IntArrayRef sizes) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got one on ", t.device());
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " is on ", t.device(), " but the inputs are on ", like.device());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
              " but the inputs have ", like.scalar_type());
  TORCH_CHECK(t.sizes() == sizes, op, ": ", name, " has shape ", t.sizes(), ", expected ", sizes);
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

// T, B, H from xg [T, B, 4H] and w_hh [4H, H], with the checks that make them meaningful.
std::tuple<int64_t, int64_t, int64_t> sizes_of(const char* op, const Tensor& xg, const Tensor& w_hh) {
  TORCH_CHECK(xg.defined() && w_hh.defined(), op, ": xg and w_hh must be defined");
  TORCH_CHECK(xg.is_cuda(), op, ": xg must be a CUDA tensor, got one on ", xg.device());
  kernel_dtype(xg.scalar_type());
  TORCH_CHECK(xg.dim() == 3, op, ": xg must be 3-D [T, B, 4H], got shape ", xg.sizes());
  TORCH_CHECK(w_hh.dim() == 2, op, ": w_hh must be 2-D [4H, H], got shape ", w_hh.sizes());
  const int64_t T = xg.size(0), B = xg.size(1), H = w_hh.size(1);
  TORCH_CHECK(T >= 1 && B >= 1 && H >= 1, op, ": needs at least one step, batch row and hidden unit; got T=", T,
              " B=", B, " H=", H);
  TORCH_CHECK(xg.size(2) == 4 * H, op, ": xg's last dimension is ", xg.size(2), ", expected 4 * hidden = ", 4 * H);
  TORCH_CHECK(B <= INT32_MAX, op, ": batch ", B, " is too large");
  return {T, B, H};
}

bool use_persistent(int64_t H) {
  const char* env = std::getenv("ECGKERN_CUDA_STRATEGY");
  if (env == nullptr || *env == '\0' || std::strcmp(env, "auto") == 0) return kern::persistent_fits(H);
  if (std::strcmp(env, "fused") == 0) return false;
  if (std::strcmp(env, "persistent") == 0) {
    TORCH_CHECK(kern::persistent_fits(H), "ECGKERN_CUDA_STRATEGY=persistent needs hidden <= ",
                kern::kPersistentMaxHidden, ", got ", H);
    return true;
  }
  TORCH_CHECK(false, "ECGKERN_CUDA_STRATEGY must be auto, fused or persistent, got '", env, "'");
  return false;  // unreachable
}

// Pointer to step t of a contiguous [T, ...] tensor whose steps hold `step_numel` elements.
template <typename P>
P step_ptr(const Tensor& t, int64_t step, int64_t step_numel) {
  return reinterpret_cast<P>(static_cast<char*>(t.data_ptr()) + step * step_numel * static_cast<int64_t>(t.element_size()));
}

std::tuple<Tensor, Tensor, Tensor> lstm_recurrence_cuda(const Tensor& xg, const Tensor& w_hh, const Tensor& h0,
                                                        const Tensor& c0) {
  constexpr const char* op = "ecgkern::lstm_recurrence (cuda)";
  const auto [T, B, H] = sizes_of(op, xg, w_hh);
  check_tensor(op, "xg", xg, xg, {T, B, 4 * H});
  check_tensor(op, "w_hh", w_hh, xg, {4 * H, H});
  check_tensor(op, "h0", h0, xg, {B, H});
  check_tensor(op, "c0", c0, xg, {B, H});

  const c10::cuda::CUDAGuard guard(xg.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(xg.get_device()).stream();
  const kern::Dtype dtype = kernel_dtype(xg.scalar_type());
  Tensor hs = at::empty({T, B, H}, xg.options());
  Tensor cs = at::empty({T, B, H}, xg.options());
  Tensor gates = at::empty({T, B, 4 * H}, xg.options());

  if (use_persistent(H)) {
    const kern::PersistentForwardArgs args{xg.data_ptr(), w_hh.data_ptr(), h0.data_ptr(), c0.data_ptr(),
                                           hs.data_ptr(), cs.data_ptr(), gates.data_ptr(), T, B, H};
    C10_CUDA_CHECK(kern::persistent_forward(dtype, args, stream));
    return {hs, cs, gates};
  }

  const Tensor w_t = w_hh.t();                    // [H, 4H] view: h @ W_hh^T
  Tensor hw = at::empty({B, 4 * H}, xg.options());  // recurrent GEMM output, reused every step
  Tensor c_state = c0.to(accumulate_type(xg.scalar_type()), /*non_blocking=*/false, /*copy=*/true);
  for (int64_t t = 0; t < T; ++t) {
    at::mm_out(hw, t == 0 ? h0 : hs.select(0, t - 1), w_t);
    const kern::PointwiseForwardArgs args{step_ptr<const void*>(xg, t, B * 4 * H), hw.data_ptr(), c_state.data_ptr(),
                                          step_ptr<void*>(hs, t, B * H), step_ptr<void*>(cs, t, B * H),
                                          step_ptr<void*>(gates, t, B * 4 * H), B, H};
    C10_CUDA_CHECK(kern::pointwise_forward(dtype, args, stream));
  }
  return {hs, cs, gates};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_recurrence_backward_cuda(const Tensor& dhs, const Tensor& dcs,
                                                                         const Tensor& w_hh, const Tensor& h0,
                                                                         const Tensor& c0, const Tensor& hs,
                                                                         const Tensor& cs, const Tensor& gates) {
  constexpr const char* op = "ecgkern::lstm_recurrence_backward (cuda)";
  const auto [T, B, H] = sizes_of(op, gates, w_hh);
  check_tensor(op, "gates", gates, gates, {T, B, 4 * H});
  check_tensor(op, "dhs", dhs, gates, {T, B, H});
  check_tensor(op, "dcs", dcs, gates, {T, B, H});
  check_tensor(op, "w_hh", w_hh, gates, {4 * H, H});
  check_tensor(op, "h0", h0, gates, {B, H});
  check_tensor(op, "c0", c0, gates, {B, H});
  check_tensor(op, "hs", hs, gates, {T, B, H});
  check_tensor(op, "cs", cs, gates, {T, B, H});

  const c10::cuda::CUDAGuard guard(gates.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(gates.get_device()).stream();
  const kern::Dtype dtype = kernel_dtype(gates.scalar_type());
  Tensor dxg = at::empty({T, B, 4 * H}, gates.options());
  Tensor dh0 = at::empty({B, H}, gates.options());
  Tensor dc0 = at::empty({B, H}, gates.options());

  if (use_persistent(H)) {
    const kern::PersistentBackwardArgs args{dhs.data_ptr(), dcs.data_ptr(), w_hh.data_ptr(), c0.data_ptr(),
                                            cs.data_ptr(),  gates.data_ptr(), dxg.data_ptr(), dh0.data_ptr(),
                                            dc0.data_ptr(), T, B, H};
    C10_CUDA_CHECK(kern::persistent_backward(dtype, args, stream));
  } else {
    Tensor dc_state = at::zeros({B, H}, gates.options().dtype(accumulate_type(gates.scalar_type())));
    Tensor dh_rec = at::empty({B, H}, gates.options());  // dxg[t+1] @ W_hh
    for (int64_t t = T - 1; t >= 0; --t) {
      const kern::PointwiseBackwardArgs args{
          step_ptr<const void*>(dhs, t, B * H), t == T - 1 ? nullptr : dh_rec.data_ptr(),
          step_ptr<const void*>(dcs, t, B * H), dc_state.data_ptr(), step_ptr<const void*>(gates, t, B * 4 * H),
          step_ptr<const void*>(cs, t, B * H), t == 0 ? c0.data_ptr() : step_ptr<const void*>(cs, t - 1, B * H),
          step_ptr<void*>(dxg, t, B * 4 * H), B, H};
      C10_CUDA_CHECK(kern::pointwise_backward(dtype, args, stream));
      at::mm_out(t == 0 ? dh0 : dh_rec, dxg.select(0, t), w_hh);
    }
    dc0.copy_(dc_state);
  }

  // dW_hh = sum_t dgates_t^T @ h_{t-1}: ONE GEMM over all steps, h_{t-1} = [h0, hs[:-1]].
  Tensor h_prev = at::empty({T, B, H}, gates.options());
  h_prev.select(0, 0).copy_(h0);
  if (T > 1) h_prev.narrow(0, 1, T - 1).copy_(hs.narrow(0, 0, T - 1));
  Tensor dw_hh = at::mm(dxg.view({T * B, 4 * H}).t(), h_prev.view({T * B, H}));
  return {dxg, dw_hh, dh0, dc0};
}

}  // namespace

// Private ops: the public ecgkern::lstm_recurrence* ops are defined in Python (at import of
// ecgkern) and their CUDA kernels load this library on first use and call these.
TORCH_LIBRARY(ecgkern_cuda, m) {
  m.def("lstm_recurrence(Tensor xg, Tensor w_hh, Tensor h0, Tensor c0) -> (Tensor, Tensor, Tensor)",
        &lstm_recurrence_cuda);
  m.def("lstm_recurrence_backward(Tensor dhs, Tensor dcs, Tensor w_hh, Tensor h0, Tensor c0, Tensor hs, "
        "Tensor cs, Tensor gates) -> (Tensor, Tensor, Tensor, Tensor)",
        &lstm_recurrence_backward_cuda);
}
