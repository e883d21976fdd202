// ort_op.cpp -- libfastft_ort: fastft's fused-attention CPU kernel as an ONNX Runtime custom
// op, so the served graph runs it without leaving ONNX Runtime (no Python in between).
//
//   ai.fastft::FusedAttention(qkv, mask?, bias?) -> out
//     qkv   float (batch, seq, 3 * heads * head_dim): the packed Q, K, V projection
//     mask  int32 (batch, seq), optional: > 0 = the key is attended (as ORT's Attention reads it)
//     bias  float (3 * heads * head_dim), optional: the projection's bias, added as q and v are
//           read (k's is a constant shift of each row's scores, which softmax ignores)
//     out   float (batch, seq, heads * head_dim)
//     attributes: num_heads (int, required), scale (float; absent or 0: 1/sqrt(head_dim)),
//                 num_threads (int; absent or 0: 1; fastft sets the session's intra-op threads)
//
// Padding-free: a sequence whose mask is a prefix (attended keys first, then padding) attends
// its L valid query rows to its L valid keys and nothing else; its padded query rows are
// written as zeros. Any other mask is applied key by key to every row. A row with no attended
// key is zeros.
//
//   ai.fastft::SkipLayerNorm(x, skip, gamma, beta?, bias?) -> out = LayerNorm(x + skip + bias)
//     over the last axis (rowops.cpp), where the graph had Add (+ Add) + LayerNormalization.
//   ai.fastft::BiasGelu(x, bias?) -> out = gelu(x + bias), erf form (rowops.cpp), where the
//     graph had com.microsoft BiasGelu or Gelu.
// FASTFT_ATTN_ISA picks the instruction-set copy of every op's kernel. The kernels run on the
// session's ONNX Runtime intra-op threads (the ones ORT's own kernels use between them);
// FASTFT_OP_POOL=fastft puts them on fastft's own persistent pool instead (a comparison in
// bench/bench_ort_op.py).
//
// Load with SessionOptions.register_custom_ops_library(path).
#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <vector>

#include "attention.h"
#include "rowops.h"

namespace {

const char* kDomain = "ai.fastft";

// An optional attribute: its value, or `fallback` where the node does not set it.
template <typename T>
T attribute_or(const Ort::ConstKernelInfo& ki, const char* name, T fallback) {
  try {
    return ki.GetAttribute<T>(name);
  } catch (const Ort::Exception&) {
    return fallback;
  }
}

// f(), with an exception turned into a status that names the op ("fastft OP: what").
template <typename F>
OrtStatusPtr guarded(const OrtApi& api, OrtErrorCode code, const char* op, F&& f) {
  try {
    f();
    return nullptr;
  } catch (const std::exception& e) {
    return api.CreateStatus(code, (std::string("fastft ") + op + ": " + e.what()).c_str());
  } catch (...) {
    return api.CreateStatus(code, (std::string("fastft ") + op + ": unknown error").c_str());
  }
}

// FASTFT_ATTN_ISA (the kernels' instruction-set copy; "auto" when unset), refused when a
// session starts, not at its first run, if this CPU does not run it.
std::string isa_from_env() {
  const char* env = std::getenv("FASTFT_ATTN_ISA");
  const std::string isa = env && *env ? env : "auto";
  if (isa == "auto") return isa;
  for (const auto& name : fastft::attention_isas())
    if (name == isa) return isa;
  throw std::invalid_argument("FASTFT_ATTN_ISA=" + isa + " is not an instruction set this CPU runs (" +
                              "auto or one of fastft._C.attention_isas())");
}

// FASTFT_OP_POOL: true for ONNX Runtime's intra-op pool ("onnxruntime", the default when unset),
// false for fastft's own ("fastft"); anything else is refused when a session starts.
bool ort_pool_from_env() {
  const char* env = std::getenv("FASTFT_OP_POOL");
  const std::string pool = env && *env ? env : "onnxruntime";
  if (pool == "onnxruntime" || pool == "fastft") return pool == "onnxruntime";
  throw std::invalid_argument("FASTFT_OP_POOL=" + pool + " is not a thread pool (onnxruntime or fastft)");
}

// The number of threads a kernel may use: the node's num_threads (absent or < 1: one).
int threads_attribute(const Ort::ConstKernelInfo& ki) {
  const int64_t n = attribute_or<int64_t>(ki, "num_threads", 1);
  return n > 0 ? static_cast<int>(n) : 1;
}

// The data of optional 1-D input i, which must hold `n` floats; null when absent.
const float* vector_input(Ort::KernelContext& ctx, size_t i, int64_t n, const char* what) {
  if (ctx.GetInputCount() <= i) return nullptr;
  Ort::ConstValue v = ctx.GetInput(i);
  if (v == nullptr) return nullptr;
  if (v.GetTensorTypeAndShapeInfo().GetElementCount() != static_cast<size_t>(n))
    throw std::invalid_argument(std::string(what) + " must hold one value per hidden unit");
  return v.GetTensorData<float>();
}

// The shape numpy broadcasting gives two shapes (as ONNX's Add); throws where they do not broadcast.
std::vector<int64_t> broadcast_shape(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  std::vector<int64_t> out(std::max(a.size(), b.size()));
  for (size_t i = 0; i < out.size(); ++i) {  // from the last axis
    const int64_t da = i < a.size() ? a[a.size() - 1 - i] : 1, db = i < b.size() ? b[b.size() - 1 - i] : 1;
    if (da != db && da != 1 && db != 1) throw std::invalid_argument("x and skip do not broadcast to one shape");
    out[out.size() - 1 - i] = da == 1 ? db : da;
  }
  return out;
}

// `src` (shape `from`) broadcast to `to` into `buf`; returns buf's data.
const float* expand(const float* src, const std::vector<int64_t>& from, const std::vector<int64_t>& to,
                    std::vector<float>& buf) {
  const size_t n = to.size();
  std::vector<int64_t> stride(n, 0);  // src's stride per output axis, 0 where it is broadcast
  int64_t s = 1, total = 1;
  for (size_t i = 0; i < n; ++i) {
    const size_t axis = n - 1 - i;
    const int64_t d = i < from.size() ? from[from.size() - 1 - i] : 1;
    stride[axis] = d == 1 ? 0 : s;
    s *= d;
    total *= to[axis];
  }
  buf.resize(static_cast<size_t>(total));
  std::vector<int64_t> idx(n, 0);
  for (int64_t k = 0; k < total; ++k) {
    int64_t off = 0;
    for (size_t a = 0; a < n; ++a) off += idx[a] * stride[a];
    buf[static_cast<size_t>(k)] = src[off];
    for (size_t a = n; a-- > 0;) {  // next index, last axis fastest
      if (++idx[a] < to[a]) break;
      idx[a] = 0;
    }
  }
  return buf.data();
}

// An op of this library: Kernel gives its name, its inputs (kInputs, the first kRequired of
// them required, input_type(i)) and one float output, a constructor (const OrtApi&,
// const OrtKernelInfo*) that reads the attributes, and Compute(OrtKernelContext*).
template <typename Kernel>
struct Op : Ort::CustomOpBase<Op<Kernel>, Kernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    return guarded(api, ORT_INVALID_ARGUMENT, Kernel::kName, [&] { *kernel = new Kernel(api, info); });
  }
  const char* GetName() const { return Kernel::kName; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return Kernel::kInputs; }
  ONNXTensorElementDataType GetInputType(size_t i) const { return Kernel::input_type(i); }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return i < Kernel::kRequired ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

// fn(usr_data, i) as KernelContext_ParallelFor calls it: usr_data is the loop (which must not
// throw: on one of ORT's worker threads nothing would catch it).
void call_loop(void* loop, size_t i) noexcept {
  (*static_cast<const std::function<void(int)>*>(loop))(static_cast<int>(i));
}

// What every kernel shares: its threads and instruction-set copy, read when the session
// starts, and the status wrapper around Compute.
template <typename Kernel>
struct KernelBase {
  explicit KernelBase(const Ort::ConstKernelInfo& ki)
      : threads_(threads_attribute(ki)), isa_(isa_from_env()), ort_pool_(ort_pool_from_env()) {}

  // The kernels' Workers for one Compute: this session's ONNX Runtime intra-op pool (each of
  // the n loops one task; the calling thread takes some).
  static fastft::Workers workers(Ort::KernelContext ctx) {  // a copy: the context pointer itself
    return [ctx](int n, const std::function<void(int)>& loop) {
      ctx.ParallelFor(&call_loop, static_cast<size_t>(n), 0, const_cast<std::function<void(int)>*>(&loop));
    };
  }
  // What the kernels get: &w on ORT's pool, null (fastft's own pool) under FASTFT_OP_POOL=fastft.
  const fastft::Workers* pool(const fastft::Workers& w) const { return ort_pool_ ? &w : nullptr; }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return guarded(Ort::GetApi(), ORT_RUNTIME_EXCEPTION, Kernel::kName,
                   [&] { static_cast<Kernel*>(this)->Compute(context); });
  }
  static ONNXTensorElementDataType input_type(size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }

  int threads_;
  std::string isa_;
  bool ort_pool_;
};

// A row-wise op's output of `shape` (allocated) as the kernels see it: (rows, hidden), hidden
// the last axis.
struct RowTensors {
  float* out = nullptr;
  int64_t rows = 1, hidden = 0;

  RowTensors(Ort::KernelContext& ctx, const std::vector<int64_t>& shape) {
    if (shape.empty()) throw std::invalid_argument("x must have rank >= 1");
    hidden = shape.back();
    for (size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
    out = ctx.GetOutput(0, shape).GetTensorMutableData<float>();
  }
  bool empty() const { return rows * hidden == 0; }
};

struct FusedAttentionKernel : KernelBase<FusedAttentionKernel> {
  static constexpr const char* kName = "FusedAttention";
  static constexpr size_t kInputs = 3, kRequired = 1;
  static ONNXTensorElementDataType input_type(size_t i) {
    return i == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }

  FusedAttentionKernel(const OrtApi&, const OrtKernelInfo* info) : KernelBase(Ort::ConstKernelInfo(info)) {
    Ort::ConstKernelInfo ki(info);
    heads_ = ki.GetAttribute<int64_t>("num_heads");  // required: throws where missing
    scale_ = attribute_or<float>(ki, "scale", 0.f);
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    Ort::ConstValue qkv = ctx.GetInput(0);
    const std::vector<int64_t> shape = qkv.GetTensorTypeAndShapeInfo().GetShape();
    if (shape.size() != 3 || heads_ < 1 || shape[2] % (3 * heads_) != 0)
      throw std::invalid_argument("qkv must be (batch, seq, 3 * num_heads * head_dim)");
    const int64_t B = shape[0], S = shape[1], HD = shape[2] / 3, D = HD / heads_;
    Ort::UnownedValue out_v = ctx.GetOutput(0, {B, S, HD});
    float* out = out_v.GetTensorMutableData<float>();
    if (B * S == 0 || D == 0) return;
    const float* x = qkv.GetTensorData<float>();

    const int32_t* mask = nullptr;
    if (ctx.GetInputCount() > 1) {
      Ort::ConstValue m = ctx.GetInput(1);
      if (m != nullptr) {
        const std::vector<int64_t> ms = m.GetTensorTypeAndShapeInfo().GetShape();
        if (ms.size() != 2 || ms[0] != B || ms[1] != S)
          throw std::invalid_argument("mask must be (batch, seq) like qkv");
        mask = m.GetTensorData<int32_t>();
      }
    }
    const float* bias = nullptr;
    if (ctx.GetInputCount() > 2) {
      Ort::ConstValue bv = ctx.GetInput(2);
      if (bv != nullptr) {
        if (bv.GetTensorTypeAndShapeInfo().GetElementCount() != static_cast<size_t>(3 * HD))
          throw std::invalid_argument("bias must hold 3 * num_heads * head_dim values");
        bias = bv.GetTensorData<float>();
      }
    }
    std::vector<int64_t> start(B), len(B, S);
    std::vector<uint8_t> keys;  // per-key mask, only when some sequence's mask is not a prefix
    bool prefix = true;
    for (int64_t b = 0; b < B; ++b) {
      start[b] = b * S;
      if (!mask) continue;
      const int32_t* row = mask + b * S;
      int64_t n = 0;
      while (n < S && row[n] > 0) ++n;  // attended: > 0, as ORT's Attention reads its mask
      len[b] = n;
      for (int64_t j = n; j < S && prefix; ++j) prefix = row[j] <= 0;
    }
    // A sequence whose every key is masked attends to all of them, as ORT's Attention does (its
    // mask only lowers masked scores by a constant; the kernel would give zeros)
    std::vector<uint8_t> none(B, 0);
    for (int64_t b = 0; b < B && mask; ++b) {
      const int32_t* row = mask + b * S;
      none[b] = std::none_of(row, row + S, [](int32_t m) { return m > 0; });
      if (none[b]) len[b] = S;
    }
    if (!prefix) {
      keys.resize(static_cast<size_t>(B * S));
      for (int64_t i = 0; i < B * S; ++i) keys[i] = mask[i] > 0 || none[i / S];
      for (int64_t b = 0; b < B; ++b) len[b] = S;
    }
    for (int64_t b = 0; b < B; ++b)  // rows the kernel does not write
      if (len[b] < S) std::memset(out + (b * S + len[b]) * HD, 0, sizeof(float) * (S - len[b]) * HD);

    const fastft::AttnRows rows{x, x + HD, x + 2 * HD, out, 3 * HD, D, 3 * HD, D,
                                3 * HD, D, HD, D};
    const double scale = scale_ > 0 ? scale_ : 1.0 / std::sqrt(double(D));
    const fastft::Workers w = workers(ctx);
    // (rows whose scores leave float32's range are computed again in double by the kernel)
    (void)fastft::attention_f32(rows, start.data(), len.data(), start.data(), len.data(), B, heads_, D,
                          keys.empty() ? nullptr : keys.data(), nullptr, S,
                          bias, bias ? bias + 2 * HD : nullptr, false, scale,
                          threads_, isa_, 0, pool(w));
  }

  int64_t heads_ = 0;
  float scale_ = 0.f;
};

// ai.fastft::SkipLayerNorm(x, skip, gamma, beta?, bias?) -> out: LayerNorm(x + skip + bias)
// over the last axis, in one kernel where the graph had Add (+ Add) + LayerNormalization
// (fastft.runtime.ort_attention.swap_layernorm). Attributes: epsilon (float, required),
// num_threads (int; absent or 0: 1).
struct SkipLayerNormKernel : KernelBase<SkipLayerNormKernel> {
  static constexpr const char* kName = "SkipLayerNorm";
  static constexpr size_t kInputs = 5, kRequired = 3;

  SkipLayerNormKernel(const OrtApi&, const OrtKernelInfo* info) : KernelBase(Ort::ConstKernelInfo(info)) {
    epsilon_ = Ort::ConstKernelInfo(info).GetAttribute<float>("epsilon");  // required: throws where missing
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    Ort::ConstValue xv = ctx.GetInput(0), sv = ctx.GetInput(1);
    const std::vector<int64_t> xs = xv.GetTensorTypeAndShapeInfo().GetShape();
    const std::vector<int64_t> ss = sv.GetTensorTypeAndShapeInfo().GetShape();
    const std::vector<int64_t> shape = broadcast_shape(xs, ss);  // Add's (numpy) broadcasting
    const RowTensors t(ctx, shape);
    if (t.empty()) return;
    // the common case reads x and skip in place; a broadcast input is expanded first
    std::vector<float> xe, se;
    const float* x = xs == shape ? xv.GetTensorData<float>() : expand(xv.GetTensorData<float>(), xs, shape, xe);
    const float* skip = ss == shape ? sv.GetTensorData<float>() : expand(sv.GetTensorData<float>(), ss, shape, se);
    const int64_t H = t.hidden;
    const fastft::SkipLnParams p{x, skip, vector_input(ctx, 4, H, "bias"), vector_input(ctx, 2, H, "gamma"),
                                 vector_input(ctx, 3, H, "beta"), t.out, t.rows, H, epsilon_};
    const fastft::Workers w = workers(ctx);
    fastft::skip_layernorm_f32(p, threads_, isa_, pool(w));
  }

  float epsilon_ = 0.f;
};

// ai.fastft::BiasGelu(x, bias?) -> out = gelu(x + bias), the erf form, bias over the last axis
// (fastft.runtime.ort_attention.swap_gelu). Attributes: num_threads (int; absent or 0: 1).
struct BiasGeluKernel : KernelBase<BiasGeluKernel> {
  static constexpr const char* kName = "BiasGelu";
  static constexpr size_t kInputs = 2, kRequired = 1;

  BiasGeluKernel(const OrtApi&, const OrtKernelInfo* info) : KernelBase(Ort::ConstKernelInfo(info)) {}

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    Ort::ConstValue x = ctx.GetInput(0);
    const RowTensors t(ctx, x.GetTensorTypeAndShapeInfo().GetShape());
    if (t.empty()) return;
    const fastft::BiasGeluParams p{x.GetTensorData<float>(), vector_input(ctx, 1, t.hidden, "bias"), t.out, t.rows,
                                   t.hidden};
    const fastft::Workers w = workers(ctx);
    fastft::bias_gelu_f32(p, threads_, isa_, pool(w));
  }
};

}  // namespace

extern "C" ORT_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                               const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {  // an ONNX Runtime older than the headers: say so through its oldest API
    const OrtApi* oldest = api_base->GetApi(1);
    return oldest ? oldest->CreateStatus(ORT_FAIL,
                                         ("fastft: libfastft_ort needs ONNX Runtime API version " +
                                          std::to_string(ORT_API_VERSION) + " or newer, this one is " +
                                          api_base->GetVersionString())
                                             .c_str())
                  : nullptr;
  }
  static Op<FusedAttentionKernel> attention;
  static Op<SkipLayerNormKernel> skip_ln;
  static Op<BiasGeluKernel> gelu;
  static std::mutex mu;
  static std::vector<Ort::CustomOpDomain> domains;  // must outlive every session that uses them
  try {
    std::lock_guard<std::mutex> lk(mu);
    Ort::InitApi(api);
    Ort::CustomOpDomain domain(kDomain);
    domain.Add(&attention);
    domain.Add(&skip_ln);
    domain.Add(&gelu);
    Ort::UnownedSessionOptions(options).Add(domain);
    domains.push_back(std::move(domain));
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}
