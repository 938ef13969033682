// CPU kernels of the LSTM recurrence with projections (torch.nn.LSTM's proj_size > 0):
//   gates_t = xg_t + h_{t-1} W_hh^T            (activated i, f, g, o; gate order of nn.LSTM)
//   c_t = f c_{t-1} + i g,   m_t = o tanh(c_t),   h_t = m_t W_hr^T
// Layout: xg/gates [T,B,4H], w_hh [4H,P], w_hr [P,H], h0/hs [.,B,P], c0/cs [.,B,H].
//
// Private ops of the ecgkern_cpu library (the public ecgkern::lstm_projected_recurrence op, its
// fake kernel and autograd are defined in ecgkern/backends/_ops_projected.py). The two GEMMs of a
// step are ATen calls (BLAS); the cell is vectorised with at::vec over the batch rows, split
// across threads.
// dW_hh and dW_hr are one GEMM each after the backward loop.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>

namespace {

using at::vec::Vectorized;

template <typename T>
inline Vectorized<T> sigmoid(const Vectorized<T>& x) {
  const Vectorized<T> one(T(1));
  return one / (one + x.neg().exp());
}

// Rows of the batch, split across threads (a row is 4H..8H values of work per step).
template <typename F>
inline void over_rows(int64_t B, int64_t H, F f) {
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, H));
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) f(b);
  });
}

// f(j, n) for the vectors of a row of H values: j the first index, n how many (a short tail last).
template <typename T, typename F>
inline void over_vectors(int64_t H, F f) {
  constexpr int64_t V = Vectorized<T>::size();
  for (int64_t j = 0; j < H; j += V) f(j, std::min<int64_t>(V, H - j));
}

template <typename T>
inline Vectorized<T> load(const T* p, int64_t n) {
  return n == Vectorized<T>::size() ? Vectorized<T>::loadu(p) : Vectorized<T>::loadu(p, n);
}

// gates holds the pre-activations on entry and the activated gates on return.
template <typename T>
void cell_forward(T* gates, const T* c_prev, T* c, T* m, int64_t B, int64_t H) {
  using Vec = Vectorized<T>;
  over_rows(B, H, [&](int64_t b) {
    T* g4 = gates + b * 4 * H;
    over_vectors<T>(H, [&](int64_t j, int64_t n) {
      const Vec i = sigmoid(load(g4 + j, n)), f = sigmoid(load(g4 + H + j, n));
      const Vec g = load(g4 + 2 * H + j, n).tanh(), o = sigmoid(load(g4 + 3 * H + j, n));
      const Vec cn = f * load(c_prev + b * H + j, n) + i * g;
      i.store(g4 + j, n);
      f.store(g4 + H + j, n);
      g.store(g4 + 2 * H + j, n);
      o.store(g4 + 3 * H + j, n);
      cn.store(c + b * H + j, n);
      (o * cn.tanh()).store(m + b * H + j, n);
    });
  });
}

// From dm (grad of m_t) and the cell grads, the pre-activation gate grads dgates [B,4H];
// dc_next holds dc_{t} from the step after on entry and dc_{t-1} on return.
template <typename T>
void cell_backward(const T* gates, const T* c, const T* c_prev, const T* dm, const T* dcs,
                   T* dc_next, T* dgates, int64_t B, int64_t H) {
  using Vec = Vectorized<T>;
  const Vec one(T(1));
  over_rows(B, H, [&](int64_t b) {
    const T* g4 = gates + b * 4 * H;
    T* d4 = dgates + b * 4 * H;
    const int64_t r = b * H;
    over_vectors<T>(H, [&](int64_t j, int64_t n) {
      const Vec i = load(g4 + j, n), f = load(g4 + H + j, n), g = load(g4 + 2 * H + j, n), o = load(g4 + 3 * H + j, n);
      const Vec tc = load(c + r + j, n).tanh(), dmv = load(dm + r + j, n);
      const Vec dc = load(dcs + r + j, n) + load(dc_next + r + j, n) + dmv * o * (one - tc * tc);
      (dc * g * i * (one - i)).store(d4 + j, n);
      (dc * load(c_prev + r + j, n) * f * (one - f)).store(d4 + H + j, n);
      (dc * i * (one - g * g)).store(d4 + 2 * H + j, n);
      (dmv * tc * o * (one - o)).store(d4 + 3 * H + j, n);
      (dc * f).store(dc_next + r + j, n);
    });
  });
}

void check(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like,
           at::IntArrayRef sizes) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
              ", expected ", like.scalar_type());
  TORCH_CHECK(t.sizes() == sizes, op, ": ", name, " has shape ", t.sizes(), ", expected ", sizes);
}

// (T, B, H, P) from xg [T,B,4H], w_hh [4H,P], w_hr [P,H], checking every other argument's shape.
std::tuple<int64_t, int64_t, int64_t, int64_t> sizes(const char* op, const at::Tensor& xg,
                                                      const at::Tensor& w_hh, const at::Tensor& w_hr,
                                                      const at::Tensor& h0, const at::Tensor& c0) {
  TORCH_CHECK(xg.dim() == 3 && w_hr.dim() == 2, op, ": xg must be [T,B,4H] and w_hr [P,H], got ",
              xg.sizes(), " and ", w_hr.sizes());
  TORCH_CHECK(xg.scalar_type() == at::kFloat || xg.scalar_type() == at::kDouble, op,
              ": supports float32 and float64, got ", xg.scalar_type());
  const int64_t T = xg.size(0), B = xg.size(1), P = w_hr.size(0), H = w_hr.size(1);
  TORCH_CHECK(xg.size(2) == 4 * H, op, ": xg has ", xg.size(2), " gate columns, expected 4 * H = ", 4 * H);
  check(op, "xg", xg, xg, {T, B, 4 * H});
  check(op, "w_hh", w_hh, xg, {4 * H, P});
  check(op, "w_hr", w_hr, xg, {P, H});
  check(op, "h0", h0, xg, {B, P});
  check(op, "c0", c0, xg, {B, H});
  return {T, B, H, P};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> projected_forward(
    const at::Tensor& xg_in, const at::Tensor& w_hh_in, const at::Tensor& w_hr_in,
    const at::Tensor& h0_in, const at::Tensor& c0_in) {
  const char* op = "lstm_projected_recurrence";
  const auto xg = xg_in.contiguous(), w_hh = w_hh_in.contiguous(), w_hr = w_hr_in.contiguous();
  const auto h0 = h0_in.contiguous(), c0 = c0_in.contiguous();
  int64_t T, B, H, P;  // structured bindings cannot be captured by lambdas in C++17
  std::tie(T, B, H, P) = sizes(op, xg, w_hh, w_hr, h0, c0);
  auto hs = at::empty({T, B, P}, xg.options());
  auto cs = at::empty({T, B, H}, xg.options());
  auto gates = at::empty({T, B, 4 * H}, xg.options());
  auto m = at::empty({B, H}, xg.options());
  const auto w_hh_t = w_hh.t(), w_hr_t = w_hr.t();
  for (int64_t t = 0; t < T; ++t) {
    const at::Tensor h_prev = t == 0 ? h0 : hs[t - 1];
    const at::Tensor c_prev = t == 0 ? c0 : cs[t - 1];
    at::Tensor g = gates[t];
    at::addmm_out(g, xg[t], h_prev, w_hh_t);
    AT_DISPATCH_FLOATING_TYPES(xg.scalar_type(), "lstm_projected_recurrence", [&] {
      cell_forward<scalar_t>(g.data_ptr<scalar_t>(), c_prev.data_ptr<scalar_t>(),
                             cs[t].data_ptr<scalar_t>(), m.data_ptr<scalar_t>(), B, H);
    });
    at::Tensor h = hs[t];
    at::mm_out(h, m, w_hr_t);
  }
  return {hs, cs, gates};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> projected_backward(
    const at::Tensor& dhs_in, const at::Tensor& dcs_in, const at::Tensor& w_hh_in,
    const at::Tensor& w_hr_in, const at::Tensor& h0_in, const at::Tensor& c0_in,
    const at::Tensor& hs_in, const at::Tensor& cs_in, const at::Tensor& gates_in) {
  const char* op = "lstm_projected_recurrence_backward";
  const auto gates = gates_in.contiguous(), w_hh = w_hh_in.contiguous(), w_hr = w_hr_in.contiguous();
  const auto h0 = h0_in.contiguous(), c0 = c0_in.contiguous();
  int64_t T, B, H, P;
  std::tie(T, B, H, P) = sizes(op, gates, w_hh, w_hr, h0, c0);
  const auto dhs = dhs_in.contiguous(), dcs = dcs_in.contiguous();
  const auto hs = hs_in.contiguous(), cs = cs_in.contiguous();
  check(op, "dhs", dhs, gates, {T, B, P});
  check(op, "hs", hs, gates, {T, B, P});
  check(op, "dcs", dcs, gates, {T, B, H});
  check(op, "cs", cs, gates, {T, B, H});

  auto dxg = at::empty({T, B, 4 * H}, gates.options());
  auto dh_all = at::empty({T, B, P}, gates.options());  // total grad of every h_t
  auto dh_next = at::zeros({B, P}, gates.options());
  auto dc_next = at::zeros({B, H}, gates.options());
  auto dm = at::empty({B, H}, gates.options());
  for (int64_t t = T - 1; t >= 0; --t) {
    at::Tensor dh = dh_all[t];
    at::add_out(dh, dhs[t], dh_next);
    at::mm_out(dm, dh, w_hr);
    const at::Tensor c_prev = t == 0 ? c0 : cs[t - 1];
    at::Tensor dg = dxg[t];
    AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_projected_recurrence_backward", [&] {
      cell_backward<scalar_t>(gates[t].data_ptr<scalar_t>(), cs[t].data_ptr<scalar_t>(),
                              c_prev.data_ptr<scalar_t>(), dm.data_ptr<scalar_t>(),
                              dcs[t].data_ptr<scalar_t>(), dc_next.data_ptr<scalar_t>(),
                              dg.data_ptr<scalar_t>(), B, H);
    });
    at::mm_out(dh_next, dg, w_hh);
  }
  // Weight grads over all steps at once: dW_hh = sum_t dgates_t^T h_{t-1}, dW_hr = sum_t dh_t^T m_t.
  const auto h_prev = at::cat({h0.unsqueeze(0), hs.narrow(0, 0, T - 1)}).reshape({T * B, P});
  auto dw_hh = at::mm(dxg.reshape({T * B, 4 * H}).t(), h_prev);
  const auto m = gates.narrow(2, 3 * H, H) * at::tanh(cs);
  auto dw_hr = at::mm(dh_all.reshape({T * B, P}).t(), m.reshape({T * B, H}));
  return {dxg, dw_hh, dw_hr, dh_next, dc_next};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ecgkern_cpu, m) {
  m.def("lstm_projected_recurrence(Tensor xg, Tensor w_hh, Tensor w_hr, Tensor h0, Tensor c0) "
        "-> (Tensor, Tensor, Tensor)",
        &projected_forward);
  m.def("lstm_projected_recurrence_backward(Tensor dhs, Tensor dcs, Tensor w_hh, Tensor w_hr, "
        "Tensor h0, Tensor c0, Tensor hs, Tensor cs, Tensor gates) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)",
        &projected_backward);
}
