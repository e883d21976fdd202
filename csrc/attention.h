// attention.h -- the fp32 fused-attention CPU kernel's C++ entry point, shared by the Python
// module (attention_py.cpp: fastft._C) and the ONNX Runtime custom-op library (ort_op.cpp:
// libfastft_ort.so). Nothing here needs Python or ONNX Runtime.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace fastft {

// How a kernel runs `workers` copies of a loop that share its work items (each copy claims items
// until none is left, so a copy that starts late just finds less): null means fastft's own
// persistent pool (the caller and up to workers - 1 helper threads). libfastft_ort passes ONNX
// Runtime's intra-op pool, so its ops run on the session's threads, the ones ORT's own kernels
// use between them, instead of waking a second set. The call returns when every copy has; a
// loop must not throw.
using Workers = std::function<void(int workers, const std::function<void(int)>& loop)>;

// Where the rows of q, k, v and out live (in floats): row t of sequence b, head h is at
//   base + (start[b] + t) * tok + h * head
// e.g. (batch, heads, seq, head_dim) contiguous: start[b] = b*heads*seq, tok = head_dim,
// head = seq*head_dim; packed tokens (total, heads, head_dim): start[b] = cu_seqlens[b],
// tok = heads*head_dim, head = head_dim; packed (batch, seq, 3, heads, head_dim) QKV:
// start[b] = b*seq, tok = 3*heads*head_dim, head = head_dim, k and v offset by heads*head_dim
// and twice that.
struct AttnRows {
  const float* q;
  const float* k;
  const float* v;
  float* out;
  int64_t q_tok, q_head, k_tok, k_head, v_tok, v_head, o_tok, o_head;
};

// out = softmax(q k^T * scale + bias) v for every (sequence, head): sequence b attends its
// q_len[b] query rows to its k_len[b] keys (rows past q_len[b] are not written). key_mask
// (uint8, nonzero = attend) and key_bias (additive) are per key, `key_stride` apart per
// sequence; either may be null. causal: key j attends query i iff j <= i. A row whose every
// key is masked gets zeros. Work is spread over `num_threads` threads (the caller and a
// persistent pool). isa: "auto" or one of attention_isas(); block_k 0: the copy's default.
// q_bias and v_bias (heads * head_dim, or null) are added to q and v as they are read (a
// bias on k would shift each row's scores by a constant, which softmax ignores).
// Rows float32 may get wrong where a float64 computation does not (a score of +inf, a NaN row,
// or a row left with no key although one is attended: q k^T * scale overflowed float32, or the
// inputs hold inf or NaN) are computed again in double from the inputs, row by row, and the
// call returns true when there were any. Throws std::invalid_argument on a bad argument.
bool attention_f32(const AttnRows& rows, const int64_t* q_start, const int64_t* q_len,
                   const int64_t* k_start, const int64_t* k_len, int64_t batch, int64_t heads,
                   int64_t head_dim, const uint8_t* key_mask, const float* key_bias,
                   int64_t key_stride, const float* q_bias, const float* v_bias, bool causal,
                   double scale, int num_threads, const std::string& isa, int block_k,
                   const Workers* workers = nullptr);

// fn(item) for every item in [0, items), on the caller and up to num_threads - 1 threads of the
// attention kernel's persistent pool (the caller claims items too and never waits for a helper
// that has not started), or of `workers` where given. fn must not throw.
void parallel_for(int64_t items, int num_threads, const std::function<void(int64_t)>& fn,
                  const Workers* workers = nullptr);

std::string attention_isa();                // the copy "auto" picks on this CPU
std::vector<std::string> attention_isas();  // the copies this CPU can run, best first

}  // namespace fastft
