// attention_common.h -- types shared by the fused-attention dispatcher (attention.cpp) and
// every instruction-set copy of the kernel (attention_kernel.h).
#pragma once

#include <cstdint>

namespace fastft {

constexpr int BQ = 48;        // query rows per work item
constexpr int BK = 64;        // keys per key block (the unit of masked/causal skipping)
constexpr int KEY_PAD = 32;   // seq_k is padded to a multiple of this in packed buffers
constexpr int HEAD_PAD = 16;  // head_dim is padded to a multiple of this in buffers

struct AttnParams {
  const float* q;          // (B, H, Sq, D) contiguous
  const float* k;          // (B, H, Sk, D) contiguous
  const float* v;          // (B, H, Sk, D) contiguous
  float* out;              // (B, H, Sq, D) contiguous
  const float* kb;         // (B, Skp) per-key additive bias: 0 / user bias / -inf (masked, pad)
  const uint8_t* blk_any;  // (B, nkb) 1 when key block has at least one unmasked key
  int64_t B, H, Sq, Sk, D;
  int64_t Skp;             // Sk rounded up to KEY_PAD
  int64_t nkb, nqb;        // key blocks of BK, query blocks of BQ
  bool causal;
  float scale;
};

// Per-thread scratch; cached_bh remembers which (batch, head) K (and V) are packed.
struct Workspace {
  float* kt;     // Skp * D          packed K^T panels
  float* vp;     // Skp * Dpad       V padded to the vector width (only if needed)
  float* s;      // BQ * BK          scores / probabilities
  float* o;      // BQ * Dpad        output accumulators
  float* m;      // BQ               running max
  float* l;      // BQ               running sum
  float* alpha;  // BQ               rescale factor of this step
  int64_t cached_bh;
};

}  // namespace fastft
