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
#include "tensor_checks.h"

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

using ecgkern_checks::check_tensor;

// T, B, H from xg [T, B, 4H] and w_hh [4H, H] (shared checks), plus the CUDA path's own
// needs: at least one step, row and unit, and a dtype the kernels are built for.
std::tuple<int64_t, int64_t, int64_t> sizes_of(const char* op, const Tensor& xg, const Tensor& w_hh) {
  const auto [T, B, H] = ecgkern_checks::recurrence_sizes(op, w_hh, "xg", xg, c10::DeviceType::CUDA);
  kernel_dtype(xg.scalar_type());
  TORCH_CHECK(T >= 1 && B >= 1 && H >= 1, op, ": needs at least one step, batch row and hidden unit; got T=", T,
              " B=", B, " H=", H);
  TORCH_CHECK(xg.size(2) == 4 * H, op, ": xg's last dimension is ", xg.size(2), ", expected 4 * hidden = ", 4 * H);
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

std::tuple<Tensor, Tensor, Tensor> lstm_recurrence_cuda(const Tensor& xg_in, const Tensor& w_hh_in,
                                                        const Tensor& h0_in, const Tensor& c0_in) {
  constexpr const char* op = "ecgkern::lstm_recurrence (cuda)";
  const auto [T, B, H] = sizes_of(op, xg_in, w_hh_in);
  check_tensor(op, "xg", xg_in, "xg", xg_in, {T, B, 4 * H}, "[T, B, 4H]");
  check_tensor(op, "w_hh", w_hh_in, "xg", xg_in, {4 * H, H}, "[4H, H]");
  check_tensor(op, "h0", h0_in, "xg", xg_in, {B, H}, "[B, H]");
  check_tensor(op, "c0", c0_in, "xg", xg_in, {B, H}, "[B, H]");
  const Tensor xg = xg_in.contiguous(), w_hh = w_hh_in.contiguous(), h0 = h0_in.contiguous(), c0 = c0_in.contiguous();

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

  // The recurrent GEMM in acc precision (see lstm_cuda_kernels.cuh): float16/bfloat16 feed it
  // the float32 h_state the kernel keeps and W_hh upcast once; hW stays float32.
  const at::ScalarType acc = accumulate_type(xg.scalar_type());
  const bool narrow = acc != xg.scalar_type();
  const Tensor w_t = (narrow ? w_hh.to(acc) : w_hh).t();  // [H, 4H] view: h @ W_hh^T
  Tensor hw = at::empty({B, 4 * H}, xg.options().dtype(acc));  // recurrent GEMM output, reused every step
  Tensor c_state = c0.to(acc, /*non_blocking=*/false, /*copy=*/true);
  Tensor h_state = narrow ? h0.to(acc) : Tensor();
  for (int64_t t = 0; t < T; ++t) {
    at::mm_out(hw, narrow ? h_state : t == 0 ? h0 : hs.select(0, t - 1), w_t);
    const kern::PointwiseForwardArgs args{step_ptr<const void*>(xg, t, B * 4 * H), hw.data_ptr(), c_state.data_ptr(),
                                          narrow ? h_state.data_ptr() : nullptr,
                                          step_ptr<void*>(hs, t, B * H), step_ptr<void*>(cs, t, B * H),
                                          step_ptr<void*>(gates, t, B * 4 * H), B, H};
    C10_CUDA_CHECK(kern::pointwise_forward(dtype, args, stream));
  }
  return {hs, cs, gates};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_recurrence_backward_cuda(const Tensor& dhs_in, const Tensor& dcs_in,
                                                                         const Tensor& w_hh_in, const Tensor& h0_in,
                                                                         const Tensor& c0_in, const Tensor& hs_in,
                                                                         const Tensor& cs_in, const Tensor& gates_in) {
  constexpr const char* op = "ecgkern::lstm_recurrence_backward (cuda)";
  const auto [T, B, H] = sizes_of(op, gates_in, w_hh_in);
  check_tensor(op, "gates", gates_in, "gates", gates_in, {T, B, 4 * H}, "[T, B, 4H]");
  check_tensor(op, "dhs", dhs_in, "gates", gates_in, {T, B, H}, "[T, B, H]");
  check_tensor(op, "dcs", dcs_in, "gates", gates_in, {T, B, H}, "[T, B, H]");
  check_tensor(op, "w_hh", w_hh_in, "gates", gates_in, {4 * H, H}, "[4H, H]");
  check_tensor(op, "h0", h0_in, "gates", gates_in, {B, H}, "[B, H]");
  check_tensor(op, "c0", c0_in, "gates", gates_in, {B, H}, "[B, H]");
  check_tensor(op, "hs", hs_in, "gates", gates_in, {T, B, H}, "[T, B, H]");
  check_tensor(op, "cs", cs_in, "gates", gates_in, {T, B, H}, "[T, B, H]");
  const Tensor dhs = dhs_in.contiguous(), dcs = dcs_in.contiguous(), w_hh = w_hh_in.contiguous();
  const Tensor h0 = h0_in.contiguous(), c0 = c0_in.contiguous(), hs = hs_in.contiguous(), cs = cs_in.contiguous();
  const Tensor gates = gates_in.contiguous();

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
    const at::ScalarType acc = accumulate_type(gates.scalar_type());
    const bool narrow = acc != gates.scalar_type();  // GEMM in float32 on dgates_state, as forward
    const Tensor w_acc = narrow ? w_hh.to(acc) : w_hh;
    Tensor dgates_state = narrow ? at::empty({B, 4 * H}, gates.options().dtype(acc)) : Tensor();
    Tensor dc_state = at::zeros({B, H}, gates.options().dtype(acc));
    Tensor dh_rec = at::empty({B, H}, gates.options().dtype(acc));  // dgates_{t+1} @ W_hh
    for (int64_t t = T - 1; t >= 0; --t) {
      const kern::PointwiseBackwardArgs args{
          step_ptr<const void*>(dhs, t, B * H), t == T - 1 ? nullptr : dh_rec.data_ptr(),
          step_ptr<const void*>(dcs, t, B * H), dc_state.data_ptr(), step_ptr<const void*>(gates, t, B * 4 * H),
          step_ptr<const void*>(cs, t, B * H), t == 0 ? c0.data_ptr() : step_ptr<const void*>(cs, t - 1, B * H),
          step_ptr<void*>(dxg, t, B * 4 * H), narrow ? dgates_state.data_ptr() : nullptr, B, H};
      C10_CUDA_CHECK(kern::pointwise_backward(dtype, args, stream));
      at::mm_out(dh_rec, narrow ? dgates_state : dxg.select(0, t), w_acc);
    }
    dh0.copy_(dh_rec);
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
