// oneDNN's 2-D convolution (forward and both gradients) and the gradient of training-mode batch
// normalisation, as XLA FFI handlers for the CPU.
//
// Layouts are the ones flax hands to lax: activations NHWC, weights HWIO, float32. Stride and
// the four paddings (convolution) and epsilon (batch norm) are attributes. Built at first use by
// cnncli/kernels/build.py and called from jax through jax.ffi.ffi_call (conv.py, batchnorm.py).
//
// oneDNN picks the weights' internal layout (format `any`); the HWIO weights are reordered into
// it on each call (small next to the convolution). Primitives are built once per shape and kept.
// XLA may run two custom calls at once (the backward-data and backward-weights of one layer);
// one lock serialises oneDNN, whose primitives here share the library's scratchpad.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

using Tag = memory::format_tag;
using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;

struct Geometry {
  int64_t n, c, h, w, o, kh, kw, oh, ow, sh, sw, ph0, ph1, pw0, pw1;
  auto key() const { return std::make_tuple(n, c, h, w, o, kh, kw, oh, ow, sh, sw, ph0, ph1, pw0, pw1); }
  memory::desc src() const { return {{n, c, h, w}, memory::data_type::f32, Tag::nhwc}; }
  memory::desc dst() const { return {{n, o, oh, ow}, memory::data_type::f32, Tag::nhwc}; }
  memory::desc weights_hwio() const { return {{o, c, kh, kw}, memory::data_type::f32, Tag::hwio}; }
  memory::desc weights_any() const { return {{o, c, kh, kw}, memory::data_type::f32, Tag::any}; }
  memory::dims strides() const { return {sh, sw}; }
  memory::dims pad_l() const { return {ph0, pw0}; }
  memory::dims pad_r() const { return {ph1, pw1}; }
};

struct Primitives {
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data::primitive_desc bwd_data_pd;
  dnnl::convolution_backward_data bwd_data;
  dnnl::convolution_backward_weights::primitive_desc bwd_weights_pd;
  dnnl::convolution_backward_weights bwd_weights;
};

dnnl::engine& engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

std::mutex& lock() {
  static std::mutex m;
  return m;
}

// Built on first use of a shape; the caller holds lock().
Primitives& primitives(const Geometry& g) {
  static std::map<decltype(g.key()), std::unique_ptr<Primitives>> cache;
  auto it = cache.find(g.key());
  if (it != cache.end()) return *it->second;
  auto p = std::make_unique<Primitives>();
  auto& eng = engine();
  p->fwd_pd = dnnl::convolution_forward::primitive_desc(
      eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, g.src(), g.weights_any(),
      g.dst(), g.strides(), g.pad_l(), g.pad_r());
  p->fwd = dnnl::convolution_forward(p->fwd_pd);
  p->bwd_data_pd = dnnl::convolution_backward_data::primitive_desc(
      eng, dnnl::algorithm::convolution_direct, g.src(), g.weights_any(), g.dst(), g.strides(), g.pad_l(),
      g.pad_r(), p->fwd_pd);
  p->bwd_data = dnnl::convolution_backward_data(p->bwd_data_pd);
  p->bwd_weights_pd = dnnl::convolution_backward_weights::primitive_desc(
      eng, dnnl::algorithm::convolution_direct, g.src(), g.weights_any(), g.dst(), g.strides(), g.pad_l(),
      g.pad_r(), p->fwd_pd);
  p->bwd_weights = dnnl::convolution_backward_weights(p->bwd_weights_pd);
  auto& ref = *p;
  cache.emplace(g.key(), std::move(p));
  return ref;
}

// The HWIO weights in the layout `want`: the user's buffer itself where the layouts agree.
memory weights_as(const memory::desc& want, const Geometry& g, float* hwio, dnnl::stream& s) {
  auto& eng = engine();
  memory user(g.weights_hwio(), eng, hwio);
  if (want == g.weights_hwio()) return user;
  memory internal(want, eng);
  dnnl::reorder(user, internal).execute(s, user, internal);
  return internal;
}

ffi::Error run(const std::function<void()>& body) {
  try {
    std::lock_guard<std::mutex> guard(lock());
    body();
    return ffi::Error::Success();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, e.what());
  }
}

Geometry geometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w, ffi::Span<const int64_t> y,
                  int64_t sh, int64_t sw, int64_t ph0, int64_t ph1, int64_t pw0, int64_t pw1) {
  // x: N H W C, w: KH KW C O, y: N OH OW O
  return Geometry{x[0], x[3], x[1], x[2], w[3], w[0], w[1], y[1], y[2], sh, sw, ph0, ph1, pw0, pw1};
}

ffi::Error Forward(F32 x, F32 w, F32Out y, int64_t sh, int64_t sw, int64_t ph0, int64_t ph1, int64_t pw0,
                   int64_t pw1) {
  return run([&] {
    Geometry g = geometry(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, ph0, ph1, pw0, pw1);
    auto& p = primitives(g);
    auto& eng = engine();
    dnnl::stream s(eng);
    memory src(g.src(), eng, x.typed_data());
    memory dst(g.dst(), eng, y->typed_data());
    memory weights = weights_as(p.fwd_pd.weights_desc(), g, w.typed_data(), s);
    p.fwd.execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DST, dst}});
    s.wait();
  });
}

// dx from dy and w; x's shape comes from the result.
ffi::Error BackwardData(F32 dy, F32 w, F32Out dx, int64_t sh, int64_t sw, int64_t ph0, int64_t ph1, int64_t pw0,
                        int64_t pw1) {
  return run([&] {
    Geometry g = geometry(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw, ph0, ph1, pw0, pw1);
    auto& p = primitives(g);
    auto& eng = engine();
    dnnl::stream s(eng);
    memory diff_dst(g.dst(), eng, dy.typed_data());
    memory diff_src(g.src(), eng, dx->typed_data());
    memory weights = weights_as(p.bwd_data_pd.weights_desc(), g, w.typed_data(), s);
    p.bwd_data.execute(s, {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DIFF_SRC, diff_src}});
    s.wait();
  });
}

// dw (HWIO) from x and dy.
ffi::Error BackwardWeights(F32 x, F32 dy, F32Out dw, int64_t sh, int64_t sw, int64_t ph0, int64_t ph1, int64_t pw0,
                           int64_t pw1) {
  return run([&] {
    Geometry g = geometry(x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw, ph0, ph1, pw0, pw1);
    auto& p = primitives(g);
    auto& eng = engine();
    dnnl::stream s(eng);
    memory src(g.src(), eng, x.typed_data());
    memory diff_dst(g.dst(), eng, dy.typed_data());
    memory user(g.weights_hwio(), eng, dw->typed_data());
    const auto want = p.bwd_weights_pd.diff_weights_desc();
    memory diff_weights = want == g.weights_hwio() ? user : memory(want, eng);
    p.bwd_weights.execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_DIFF_WEIGHTS, diff_weights}});
    if (want != g.weights_hwio()) dnnl::reorder(diff_weights, user).execute(s, diff_weights, user);
    s.wait();
  });
}

// ---- batch normalisation's gradient (training mode: batch statistics, biased variance) ---------

struct NormPrimitives {
  dnnl::batch_normalization_forward::primitive_desc fwd_pd;  // the backward's hint only
  dnnl::batch_normalization_backward::primitive_desc bwd_pd;
  dnnl::batch_normalization_backward bwd;
};

const auto kScaleShift = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;

memory::desc nhwc(ffi::Span<const int64_t> d) {  // N H W C -> oneDNN's N C H W dims in nhwc order
  return {{d[0], d[3], d[1], d[2]}, memory::data_type::f32, Tag::nhwc};
}

memory::desc channels(int64_t c) { return {{c}, memory::data_type::f32, Tag::a}; }

NormPrimitives& norm_primitives(ffi::Span<const int64_t> d, float eps) {
  static std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, float>, std::unique_ptr<NormPrimitives>> cache;
  auto key = std::make_tuple(d[0], d[1], d[2], d[3], eps);
  auto it = cache.find(key);
  if (it != cache.end()) return *it->second;
  auto p = std::make_unique<NormPrimitives>();
  auto md = nhwc(d);
  p->fwd_pd = dnnl::batch_normalization_forward::primitive_desc(engine(), dnnl::prop_kind::forward_training, md, md,
                                                                eps, kScaleShift);
  p->bwd_pd = dnnl::batch_normalization_backward::primitive_desc(engine(), dnnl::prop_kind::backward, md, md, md, eps,
                                                                 kScaleShift, p->fwd_pd);
  p->bwd = dnnl::batch_normalization_backward(p->bwd_pd);
  auto& ref = *p;
  cache.emplace(key, std::move(p));
  return ref;
}

// dx, dscale, dshift from x, dy, scale and the forward pass's batch statistics.
ffi::Error NormBackward(F32 x, F32 dy, F32 scale, F32 mean, F32 var, F32Out dx, F32Out dscale, F32Out dshift,
                        float eps) {
  return run([&] {
    auto d = x.dimensions();
    auto& p = norm_primitives(d, eps);
    auto& eng = engine();
    dnnl::stream s(eng);
    auto md = nhwc(d);
    auto c = channels(d[3]);
    p.bwd.execute(s, {{DNNL_ARG_SRC, memory(md, eng, x.typed_data())},
                      {DNNL_ARG_DIFF_DST, memory(md, eng, dy.typed_data())},
                      {DNNL_ARG_SCALE, memory(c, eng, scale.typed_data())},
                      {DNNL_ARG_MEAN, memory(c, eng, mean.typed_data())},
                      {DNNL_ARG_VARIANCE, memory(c, eng, var.typed_data())},
                      {DNNL_ARG_DIFF_SRC, memory(md, eng, dx->typed_data())},
                      {DNNL_ARG_DIFF_SCALE, memory(c, eng, dscale->typed_data())},
                      {DNNL_ARG_DIFF_SHIFT, memory(c, eng, dshift->typed_data())}});
    s.wait();
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnNormBackward, NormBackward,
                              ffi::Ffi::Bind()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Ret<F32>()
                                  .Ret<F32>()
                                  .Ret<F32>()
                                  .Attr<float>("eps"));

#define CNN_CONV_ATTRS                                                                                  \
  .Attr<int64_t>("sh").Attr<int64_t>("sw").Attr<int64_t>("ph0").Attr<int64_t>("ph1").Attr<int64_t>("pw0") \
      .Attr<int64_t>("pw1")

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnConvForward, Forward,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>() CNN_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnConvBackwardData, BackwardData,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>() CNN_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnConvBackwardWeights, BackwardWeights,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>() CNN_CONV_ATTRS);

// The oneDNN version the library was built against, for the cache key and the bench report.
extern "C" const char* cnn_onednn_version() {
  static std::string v = [] {
    const dnnl_version_t* ver = dnnl_version();
    return std::to_string(ver->major) + "." + std::to_string(ver->minor) + "." + std::to_string(ver->patch);
  }();
  return v.c_str();
}
