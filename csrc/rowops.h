// rowops.h -- row-wise CPU kernels (rowops.cpp) of libfastft_ort's ops:
//   ai.fastft::SkipLayerNorm: out = LayerNorm(x + skip + bias) over the last axis, one pass of
//     memory where ONNX Runtime runs Add, Add and LayerNormalization as three nodes;
//   ai.fastft::BiasGelu: out = gelu(x + bias) (erf form), one pass where ORT's BiasGelu makes three.
#pragma once

#include <cstdint>
#include <string>

#include "attention.h"  // Workers

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
// ones run on the caller: waking a thread costs more than they do), those of `workers` where
// given (see Workers), else fastft's own pool.
void skip_layernorm_f32(const SkipLnParams& p, int num_threads, const std::string& isa,
                        const Workers* workers = nullptr);

struct BiasGeluParams {
  const float* x;     // (rows, hidden)
  const float* bias;  // (hidden) or null
  float* out;         // (rows, hidden)
  int64_t rows, hidden;
};

// The same dispatch and threading as skip_layernorm_f32.
void bias_gelu_f32(const BiasGeluParams& p, int num_threads, const std::string& isa,
                   const Workers* workers = nullptr);

}  // namespace fastft
