// layernorm.h -- the residual LayerNorm CPU kernel (layernorm.cpp) of libfastft_ort's
// ai.fastft::SkipLayerNorm op: out = LayerNorm(x + skip + bias) over the last axis, one pass
// of memory where ONNX Runtime runs Add, Add and LayerNormalization as three nodes.
#pragma once

#include <cstdint>
#include <string>

namespace fastft {

struct SkipLnParams {
  const float* x;      // (rows, hidden)
  const float* skip;   // (rows, hidden)
  const float* bias;   // (hidden) or null
  const float* gamma;  // (hidden)
  const float* beta;   // (hidden) or null
  float* out;          // (rows, hidden), not aliasing x or skip
  int64_t rows, hidden;
  float epsilon;
};

// Runs the copy of the kernel for `isa` ("auto" or one of attention_isas(): the same names and
// detection as the attention kernel), on up to `num_threads` threads for large inputs (small
// ones run on the caller: waking a thread costs more than they do).
void skip_layernorm_f32(const SkipLnParams& p, int num_threads, const std::string& isa);

}  // namespace fastft
