// 2-D convolutions (NHWC activations, HWIO kernels, float32) through oneDNN,
// called from jitted JAX code as XLA FFI custom calls.
//
// Three handlers: forward, input gradient ("data") and kernel gradient
// ("weights"). Each caches its oneDNN primitive by shape, stride and padding,
// so a training step pays primitive creation once.

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = memory::format_tag;

namespace {

enum class Kind { kForward, kData, kWeights };

struct Geometry {
  memory::dims src, weights, dst;  // N C H W, O I KH KW, N O OH OW
  memory::dims strides, pad_l, pad_r;
  bool operator<(const Geometry& o) const {
    return std::tie(src, weights, dst, strides, pad_l, pad_r) <
           std::tie(o.src, o.weights, o.dst, o.strides, o.pad_l, o.pad_r);
  }
};

struct Plan {
  dnnl::primitive primitive;
  memory::desc src, dst;      // NHWC, as JAX holds them
  memory::desc weights;       // the layout the primitive wants its weights in
  memory::desc user_weights;  // HWIO, as JAX holds them
  bool reorder;               // weights differ from HWIO
  dnnl::reorder to_primitive, to_user;  // between the two layouts, where they differ
  memory scratch;             // the weights in the primitive's layout, where they differ
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

std::mutex mutex;  // guards the caches and serialises execution: one stream, one scratch per plan

dnnl::stream& Stream() {
  static dnnl::stream stream(Engine());
  return stream;
}

std::map<std::pair<Kind, Geometry>, std::shared_ptr<Plan>> plans;

dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g) {
  auto f32 = memory::data_type::f32;
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      memory::desc(g.src, f32, Tag::nhwc), memory::desc(g.weights, f32, Tag::any),
      memory::desc(g.dst, f32, Tag::nhwc), g.strides, g.pad_l, g.pad_r);
}

// The primitive descriptor of a backward pass (data or weights): the two
// take the same arguments.
template <typename Desc>
Desc BackwardDesc(const Geometry& g, const dnnl::convolution_forward::primitive_desc& fwd) {
  auto f32 = memory::data_type::f32;
  return Desc(Engine(), dnnl::algorithm::convolution_direct, memory::desc(g.src, f32, Tag::nhwc),
              memory::desc(g.weights, f32, Tag::any), memory::desc(g.dst, f32, Tag::nhwc), g.strides,
              g.pad_l, g.pad_r, fwd);
}

std::shared_ptr<Plan> MakePlan(Kind kind, const Geometry& g) {
  auto plan = std::make_shared<Plan>();
  auto f32 = memory::data_type::f32;
  plan->src = memory::desc(g.src, f32, Tag::nhwc);
  plan->dst = memory::desc(g.dst, f32, Tag::nhwc);
  plan->user_weights = memory::desc(g.weights, f32, Tag::hwio);
  auto fwd = ForwardDesc(g);
  if (kind == Kind::kForward) {
    plan->weights = fwd.weights_desc();
    plan->primitive = dnnl::convolution_forward(fwd);
  } else if (kind == Kind::kData) {
    auto pd = BackwardDesc<dnnl::convolution_backward_data::primitive_desc>(g, fwd);
    plan->weights = pd.weights_desc();
    plan->primitive = dnnl::convolution_backward_data(pd);
  } else {
    auto pd = BackwardDesc<dnnl::convolution_backward_weights::primitive_desc>(g, fwd);
    plan->weights = pd.diff_weights_desc();
    plan->primitive = dnnl::convolution_backward_weights(pd);
  }
  plan->reorder = plan->weights != plan->user_weights;
  if (plan->reorder) {
    plan->to_primitive = dnnl::reorder(dnnl::reorder::primitive_desc(
        Engine(), plan->user_weights, Engine(), plan->weights));
    plan->to_user = dnnl::reorder(dnnl::reorder::primitive_desc(
        Engine(), plan->weights, Engine(), plan->user_weights));
    plan->scratch = memory(plan->weights, Engine());
  }
  return plan;
}

// NHWC / HWIO dimensions of XLA buffers -> oneDNN's logical N C H W / O I KH KW.
memory::dims Activation(ffi::Span<const int64_t> d) { return {d[0], d[3], d[1], d[2]}; }
memory::dims Kernel(ffi::Span<const int64_t> d) { return {d[3], d[2], d[0], d[1]}; }

ffi::Error Run(Kind kind, const Geometry& g, float* src, float* weights, float* dst) {
  try {
    std::lock_guard<std::mutex> lock(mutex);
    auto& plan = plans[{kind, g}];
    if (!plan) plan = MakePlan(kind, g);
    memory src_m(plan->src, Engine(), src);
    memory dst_m(plan->dst, Engine(), dst);
    memory user_w(plan->user_weights, Engine(), weights);
    memory w = plan->reorder ? plan->scratch : user_w;
    dnnl::stream& stream = Stream();
    if (plan->reorder && kind != Kind::kWeights) plan->to_primitive.execute(stream, user_w, w);
    if (kind == Kind::kForward) {
      plan->primitive.execute(stream, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, dst_m}});
    } else if (kind == Kind::kData) {
      plan->primitive.execute(stream, {{DNNL_ARG_DIFF_SRC, src_m}, {DNNL_ARG_WEIGHTS, w},
                                       {DNNL_ARG_DIFF_DST, dst_m}});
    } else {
      plan->primitive.execute(stream, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_DIFF_WEIGHTS, w},
                                       {DNNL_ARG_DIFF_DST, dst_m}});
      if (plan->reorder) plan->to_user.execute(stream, w, user_w);
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

Geometry MakeGeometry(memory::dims src, memory::dims weights, memory::dims dst, int64_t stride_h,
                      int64_t stride_w, int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                      int64_t pad_right) {
  return {src, weights, dst, {stride_h, stride_w}, {pad_top, pad_left}, {pad_bottom, pad_right}};
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y,
                   int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  auto g = MakeGeometry(Activation(x.dimensions()), Kernel(w.dimensions()), Activation(y->dimensions()),
                        sh, sw, pt, pb, pl, pr);
  return Run(Kind::kForward, g, x.typed_data(), w.typed_data(), y->typed_data());
}

ffi::Error Data(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> dx,
                int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  auto g = MakeGeometry(Activation(dx->dimensions()), Kernel(w.dimensions()), Activation(dy.dimensions()),
                        sh, sw, pt, pb, pl, pr);
  return Run(Kind::kData, g, dx->typed_data(), w.typed_data(), dy.typed_data());
}

ffi::Error Weights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dw,
                   int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  auto g = MakeGeometry(Activation(x.dimensions()), Kernel(dw->dimensions()), Activation(dy.dimensions()),
                        sh, sw, pt, pb, pl, pr);
  return Run(Kind::kWeights, g, x.typed_data(), dw->typed_data(), dy.typed_data());
}

#define CONV_ATTRS                                                                          \
  .Attr<int64_t>("stride_h").Attr<int64_t>("stride_w").Attr<int64_t>("pad_top")            \
      .Attr<int64_t>("pad_bottom").Attr<int64_t>("pad_left").Attr<int64_t>("pad_right")

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvForward, Forward,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvData, Data,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvWeights, Weights,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() CONV_ATTRS);
