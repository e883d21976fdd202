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
//     over the last axis (layernorm.cpp), where the graph had Add (+ Add) + LayerNormalization.
//
// Load with SessionOptions.register_custom_ops_library(path).
#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <vector>

#include "attention.h"
#include "layernorm.h"

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

struct FusedAttentionKernel {
  FusedAttentionKernel(const OrtApi&, const OrtKernelInfo* info) {
    Ort::ConstKernelInfo ki(info);
    heads_ = ki.GetAttribute<int64_t>("num_heads");  // required: throws where missing
    scale_ = attribute_or<float>(ki, "scale", 0.f);
    threads_ = static_cast<int>(attribute_or<int64_t>(ki, "num_threads", 1));
    const char* isa = std::getenv("FASTFT_ATTN_ISA");
    isa_ = isa && *isa ? isa : "auto";
    if (isa_ != "auto") {  // refused when the session starts, not at its first run
      bool known = false;
      for (const auto& name : fastft::attention_isas()) known = known || name == isa_;
      if (!known)
        throw std::invalid_argument("FASTFT_ATTN_ISA=" + isa_ + " is not an instruction set this CPU runs (" +
                                    "auto or one of fastft._C.attention_isas())");
    }
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    try {
      Compute(context);
      return nullptr;
    } catch (const std::exception& e) {
      return Ort::GetApi().CreateStatus(ORT_RUNTIME_EXCEPTION,
                                        (std::string("fastft FusedAttention: ") + e.what()).c_str());
    } catch (...) {
      return Ort::GetApi().CreateStatus(ORT_RUNTIME_EXCEPTION, "fastft FusedAttention: unknown error");
    }
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
    if (!prefix) {
      keys.resize(static_cast<size_t>(B * S));
      for (int64_t i = 0; i < B * S; ++i) keys[i] = mask[i] > 0;
      for (int64_t b = 0; b < B; ++b) len[b] = S;
    }
    for (int64_t b = 0; b < B; ++b)  // rows the kernel does not write
      if (len[b] < S) std::memset(out + (b * S + len[b]) * HD, 0, sizeof(float) * (S - len[b]) * HD);

    const fastft::AttnRows rows{x, x + HD, x + 2 * HD, out, 3 * HD, D, 3 * HD, D,
                                3 * HD, D, HD, D};
    const double scale = scale_ > 0 ? scale_ : 1.0 / std::sqrt(double(D));
    fastft::attention_f32(rows, start.data(), len.data(), start.data(), len.data(), B, heads_, D,
                          keys.empty() ? nullptr : keys.data(), nullptr, S,
                          bias, bias ? bias + 2 * HD : nullptr, false, scale,
                          threads_ > 0 ? threads_ : 1, isa_, 0);
  }

  int64_t heads_ = 0;
  float scale_ = 0.f;
  int threads_ = 1;
  std::string isa_;
};

struct FusedAttentionOp : Ort::CustomOpBase<FusedAttentionOp, FusedAttentionKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    try {
      *kernel = new FusedAttentionKernel(api, info);
      return nullptr;
    } catch (const std::exception& e) {
      return api.CreateStatus(ORT_INVALID_ARGUMENT,
                              (std::string("fastft FusedAttention: ") + e.what()).c_str());
    } catch (...) {
      return api.CreateStatus(ORT_INVALID_ARGUMENT, "fastft FusedAttention: unknown error");
    }
  }
  const char* GetName() const { return "FusedAttention"; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetInputType(size_t i) const {
    return i == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return i == 0 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

// ai.fastft::SkipLayerNorm(x, skip, gamma, beta?, bias?) -> out: LayerNorm(x + skip + bias)
// over the last axis, in one kernel where the graph had Add (+ Add) + LayerNormalization
// (fastft.runtime.ort_attention.swap_layernorm). Attributes: epsilon (float, required),
// num_threads (int; absent or 0: 1).
struct SkipLayerNormKernel {
  SkipLayerNormKernel(const OrtApi&, const OrtKernelInfo* info) {
    Ort::ConstKernelInfo ki(info);
    epsilon_ = ki.GetAttribute<float>("epsilon");  // required: throws where missing
    threads_ = static_cast<int>(attribute_or<int64_t>(ki, "num_threads", 1));
    const char* isa = std::getenv("FASTFT_ATTN_ISA");
    isa_ = isa && *isa ? isa : "auto";
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    try {
      Compute(context);
      return nullptr;
    } catch (const std::exception& e) {
      return Ort::GetApi().CreateStatus(ORT_RUNTIME_EXCEPTION,
                                        (std::string("fastft SkipLayerNorm: ") + e.what()).c_str());
    } catch (...) {
      return Ort::GetApi().CreateStatus(ORT_RUNTIME_EXCEPTION, "fastft SkipLayerNorm: unknown error");
    }
  }

  // The data of optional 1-D input i, which must hold `n` floats; null when absent.
  static const float* vector_input(Ort::KernelContext& ctx, size_t i, int64_t n, const char* what) {
    if (ctx.GetInputCount() <= i) return nullptr;
    Ort::ConstValue v = ctx.GetInput(i);
    if (v == nullptr) return nullptr;
    if (v.GetTensorTypeAndShapeInfo().GetElementCount() != static_cast<size_t>(n))
      throw std::invalid_argument(std::string(what) + " must hold one value per hidden unit");
    return v.GetTensorData<float>();
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    Ort::ConstValue x = ctx.GetInput(0), skip = ctx.GetInput(1);
    const std::vector<int64_t> shape = x.GetTensorTypeAndShapeInfo().GetShape();
    if (shape.empty() || skip.GetTensorTypeAndShapeInfo().GetShape() != shape)
      throw std::invalid_argument("x and skip must have the same shape, of rank >= 1");
    const int64_t H = shape.back();
    int64_t rows = 1;
    for (size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
    Ort::UnownedValue out = ctx.GetOutput(0, shape);
    if (rows * H == 0) return;
    fastft::SkipLnParams p{x.GetTensorData<float>(), skip.GetTensorData<float>(),
                           vector_input(ctx, 4, H, "bias"), vector_input(ctx, 2, H, "gamma"),
                           vector_input(ctx, 3, H, "beta"), out.GetTensorMutableData<float>(),
                           rows, H, epsilon_};
    if (!p.gamma) throw std::invalid_argument("gamma is required");
    fastft::skip_layernorm_f32(p, threads_ > 0 ? threads_ : 1, isa_);
  }

  float epsilon_ = 0.f;
  int threads_ = 1;
  std::string isa_;
};

struct SkipLayerNormOp : Ort::CustomOpBase<SkipLayerNormOp, SkipLayerNormKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    try {
      *kernel = new SkipLayerNormKernel(api, info);
      return nullptr;
    } catch (const std::exception& e) {
      return api.CreateStatus(ORT_INVALID_ARGUMENT, (std::string("fastft SkipLayerNorm: ") + e.what()).c_str());
    } catch (...) {
      return api.CreateStatus(ORT_INVALID_ARGUMENT, "fastft SkipLayerNorm: unknown error");
    }
  }
  const char* GetName() const { return "SkipLayerNorm"; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return 5; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return i < 3 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
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
  static FusedAttentionOp op;
  static SkipLayerNormOp skip_ln;
  static std::mutex mu;
  static std::vector<Ort::CustomOpDomain> domains;  // must outlive every session that uses them
  try {
    std::lock_guard<std::mutex> lk(mu);
    Ort::InitApi(api);
    Ort::CustomOpDomain domain(kDomain);
    domain.Add(&op);
    domain.Add(&skip_ln);
    Ort::UnownedSessionOptions(options).Add(domain);
    domains.push_back(std::move(domain));
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}
