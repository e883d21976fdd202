// attention_common.h -- types shared by the fused-attention dispatcher (attention.cpp) and
// every instruction-set copy of the kernel (attention_kernel.h).
#pragma once

#include <cstdint>

#include "attention.h"

namespace fastft {

constexpr int BQ = 48;       // query rows per work item (a multiple of every copy's tiles)
constexpr int BK_MAX = 256;  // largest key block (keys per online-softmax step)
constexpr int BK_DEFAULT = 64;  // measured best of 32..192 on AVX2 (S512, D32/64): S^T + V block stay in L1
constexpr int KR_MAX = 8;    // largest key micro-tile height of any copy (scratch rows)
constexpr int HEAD_PAD = 16;  // head_dim is padded to a multiple of this in scratch buffers

// The kernel's parameters: where the rows live (AttnRows, attention.h: per sequence b, head h,
// row t at base + (start[b] + t) * tok + h * head, in floats), per-sequence starts and lengths,
// and the rest of one call.
struct AttnParams : AttnRows {
  const int64_t* q_start;   // (B) first token of each sequence
  const int64_t* q_len;     // (B) query rows of each sequence
  const int64_t* k_start;   // (B)
  const int64_t* k_len;     // (B) keys of each sequence
  const int64_t* item_off;  // (B + 1) first work item of each sequence (H * query blocks each)
  const float* kb;          // (B, kb_stride) per-key additive bias in log2 units, -inf = masked;
                            // null: every key attended
  int64_t kb_stride;
  const uint8_t* blk_any;   // (B, blk_stride) 1 when key block (of bk) has an attended key, or null
  int64_t blk_stride;
  const float* q_bias;      // (H * D) added to q before scaling, or null
  const float* v_bias;      // (H * D) added to v, or null (rows with no attended key stay zeros)
  int64_t B, H, D;
  int bk;                   // keys per block, a multiple of every copy's key tile, <= BK_MAX
  bool causal;
  float qscale;             // scale * log2(e): scores are kept in log2 units (exp2)
  // The call as given, for exact_row: the mask and bias per key (key_stride apart), the scale.
  const uint8_t* key_mask;
  const float* key_bias;
  int64_t key_stride;
  double scale;
  int* suspect;             // set to 1 when a row was computed again by exact_row
};

// Query row i of sequence b, head h, computed again in double from the call's own inputs (the
// float64 reference's arithmetic) and written to dst (head_dim floats): for the rows float32 got
// wrong (see attention.h). Scalar, O(keys * head_dim); never throws or allocates.
void exact_row(const AttnParams& P, int64_t b, int64_t h, int64_t i, float* dst);

// Per-thread scratch.
struct Workspace {
  float* qt;     // D * BQ                  Q^T of the block, pre-scaled by qscale
  float* s;      // (BK_MAX + KR_MAX) * BQ  scores / probabilities, key-major (S^T)
  float* o;      // BQ * Dp                 output accumulators
  float* vp;     // BK_MAX * Dp             V block padded to Dp (head_dim % VW != 0 only)
  float* m;      // BQ                      running max (log2 units)
  float* l;      // BQ                      running sum
  float* alpha;  // BQ                      rescale factor of this step
  float* mx;     // BQ                      column max of this step's scores
};

}  // namespace fastft
