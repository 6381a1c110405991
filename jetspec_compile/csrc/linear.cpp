// jetspec::linear(x, w, b) == torch.nn.functional.linear(x, w, b), with the weight kept in the layout a
// GEMM wants. On this project's CPUs, MKL's fp32 GEMV/GEMM over [out, in] weights reaches about 11 GB/s at
// M = 1 and re-packs the weight on every call at small M. An fp32 weight is packed once into 16-column
// panels for the AVX2 kernel of panel_gemm.cpp (1.6-2.5x MKL and oneDNN at M = 1, bitwise batch-invariant);
// a bf16 weight, or any weight on a CPU without AVX2 + FMA, into oneDNN's prepacked layout.
//
// The runtime registers every linear weight once (jetspec::prepack_linear) after loading; a registered
// weight is packed once and shared by every graph that reads it. The registry holds only a weak
// reference to the weight and its version: a freed weight is forgotten, a modified one is re-packed,
// and an unregistered weight simply runs at::linear (same result up to float rounding).

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <mutex>
#include <unordered_map>
#include <vector>

namespace jetspec {
bool panel_gemm_available();
at::Tensor pack_panels(const at::Tensor& weight);
at::Tensor panel_linear(const at::Tensor& x, const at::Tensor& packed, int64_t N, const std::optional<at::Tensor>& b);
}  // namespace jetspec

namespace {

struct Packed {
  c10::weak_intrusive_ptr<c10::TensorImpl> weight;  // weak: the registry never keeps a weight alive
  int64_t version;                                  // the weight's version when it was packed
  at::Tensor packed;
};

std::mutex registry_mutex;
std::unordered_map<const void*, Packed> registry;  // key: the weight's data pointer

bool packable(const at::Tensor& w) {
  return w.device().is_cpu() && w.dim() == 2 && w.layout() == at::kStrided &&
         (w.scalar_type() == at::kFloat || w.scalar_type() == at::kBFloat16) && at::globalContext().userEnabledMkldnn();
}

bool panel_layout(const at::Tensor& w) { return w.scalar_type() == at::kFloat && jetspec::panel_gemm_available(); }

at::Tensor reorder(const at::Tensor& w) {
  if (panel_layout(w)) return jetspec::pack_panels(w);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mkldnn::_reorder_linear_weight", "")
                       .typed<at::Tensor(const at::Tensor&, std::optional<int64_t>)>();
  return op.call(w.contiguous(), std::nullopt);
}

// The packed form of `w`, or an undefined tensor when `w` is not a registered weight. A constant handed
// to a compiled graph may be a fresh tensor over the registered memory: what makes it the same weight is
// the registered tensor being alive at this address with this shape. A registered weight modified in
// place since it was packed is packed again.
at::Tensor lookup(const at::Tensor& w) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  auto it = registry.find(w.data_ptr());
  if (it == registry.end()) return at::Tensor();
  auto reg = it->second.weight.lock();
  if (!reg) {
    registry.erase(it);
    return at::Tensor();
  }
  at::Tensor r = at::Tensor(std::move(reg));
  if (r.data_ptr() != w.data_ptr() || r.sizes() != w.sizes() || r.strides() != w.strides()) return at::Tensor();
  if (static_cast<int64_t>(r._version()) != it->second.version) {
    it->second.packed = reorder(r);
    it->second.version = static_cast<int64_t>(r._version());
  }
  return it->second.packed;
}

int64_t prepack_linear(const at::Tensor& w) {
  if (!packable(w)) return 0;
  std::lock_guard<std::mutex> lock(registry_mutex);
  for (auto it = registry.begin(); it != registry.end();)  // drop entries whose weight was freed
    it = it->second.weight.expired() ? registry.erase(it) : std::next(it);
  auto it = registry.find(w.data_ptr());
  if (it != registry.end()) {  // already packed, unchanged: nothing to do
    auto reg = it->second.weight.lock();
    if (reg && reg.get() == w.unsafeGetTensorImpl() && static_cast<int64_t>(w._version()) == it->second.version)
      return 1;
  }
  registry.insert_or_assign(w.data_ptr(), Packed{c10::weak_intrusive_ptr<c10::TensorImpl>(w.getIntrusivePtr()),
                                                 static_cast<int64_t>(w._version()), reorder(w)});
  return 1;
}

int64_t registered_linear_weights() {
  std::lock_guard<std::mutex> lock(registry_mutex);
  int64_t n = 0;
  for (const auto& kv : registry) n += kv.second.weight.expired() ? 0 : 1;
  return n;
}

at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b) {
  at::Tensor packed = packable(w) && x.scalar_type() == w.scalar_type() ? lookup(w) : at::Tensor();
  if (!packed.defined()) return at::linear(x, w, b);
  if (packed.dim() == 3) return jetspec::panel_linear(x, packed, w.size(0), b);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                         c10::string_view, c10::List<std::optional<at::Scalar>>,
                                         std::optional<c10::string_view>)>();
  at::Tensor x2 = x.reshape({-1, x.size(-1)}).contiguous();
  at::Tensor y = op.call(x2, packed, b, "none", c10::List<std::optional<at::Scalar>>(), std::nullopt);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = w.size(0);
  return y.view(shape);
}

at::Tensor linear_any(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b) {
  return at::linear(x, w, b);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(jetspec, m) {
  m.def("linear(Tensor x, Tensor w, Tensor? b=None) -> Tensor");
  m.def("prepack_linear(Tensor w) -> int", &prepack_linear);
  m.def("registered_linear_weights() -> int", &registered_linear_weights);
}

TORCH_LIBRARY_IMPL(jetspec, CPU, m) { m.impl("linear", &linear_cpu); }
TORCH_LIBRARY_IMPL(jetspec, CUDA, m) { m.impl("linear", &linear_any); }
