// attention_py.cpp -- fastft._C's attention functions: thin pybind11 wrappers that describe
// a padded (batch, heads, seq, head_dim) or a packed-token varlen call to the one kernel entry
// point (attention.h) and release the GIL while it runs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention.h"

namespace py = pybind11;

namespace {

bool attention_fwd_f32(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t mask, uintptr_t bias,
                       uintptr_t out, int64_t B, int64_t H, int64_t Sq, int64_t Sk, int64_t D,
                       bool causal, double scale, int num_threads, const std::string& isa,
                       int block_k) {
  if (B < 0 || H < 0 || Sq < 0 || Sk < 0 || D < 1)
    throw std::invalid_argument("attention_fwd_f32: shapes must be >= 0 and head_dim >= 1");
  std::vector<int64_t> q_start(B), q_len(B, Sq), k_start(B), k_len(B, Sk);
  for (int64_t b = 0; b < B; ++b) {
    q_start[b] = b * H * Sq;
    k_start[b] = b * H * Sk;
  }
  fastft::AttnRows rows{reinterpret_cast<const float*>(q), reinterpret_cast<const float*>(k),
                        reinterpret_cast<const float*>(v), reinterpret_cast<float*>(out),
                        D, Sq * D, D, Sk * D, D, Sk * D, D, Sq * D};
  py::gil_scoped_release release;
  return fastft::attention_f32(rows, q_start.data(), q_len.data(), k_start.data(), k_len.data(), B, H,
                        D, reinterpret_cast<const uint8_t*>(mask),
                        reinterpret_cast<const float*>(bias), Sk, nullptr, nullptr, causal, scale, num_threads,
                        isa, block_k);
}

void read_seqlens(uintptr_t cu, uintptr_t used, int64_t B, const char* name,
                  std::vector<int64_t>& start, std::vector<int64_t>& len) {
  const int32_t* cup = reinterpret_cast<const int32_t*>(cu);
  const int32_t* usedp = reinterpret_cast<const int32_t*>(used);
  start.resize(B);
  len.resize(B);
  for (int64_t b = 0; b < B; ++b) {
    start[b] = cup[b];
    len[b] = usedp ? usedp[b] : cup[b + 1] - cup[b];
    if (len[b] < 0 || len[b] > cup[b + 1] - cup[b])
      throw std::invalid_argument(std::string("attention_varlen_fwd_f32: ") + name +
                                  " must be nondecreasing (and seqused within it)");
  }
}

bool attention_varlen_fwd_f32(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out,
                              uintptr_t cu_q, uintptr_t cu_k, uintptr_t used_q, uintptr_t used_k,
                              int64_t B, int64_t H, int64_t D,
                              const std::vector<int64_t>& strides, bool causal, double scale,
                              int num_threads, const std::string& isa, int block_k) {
  if (B < 0 || H < 0 || D < 1)
    throw std::invalid_argument("attention_varlen_fwd_f32: batch, heads must be >= 0 and head_dim >= 1");
  if (strides.size() != 8)
    throw std::invalid_argument("attention_varlen_fwd_f32: strides must be (token, head) for q, k, v, out");
  if (!cu_q || !cu_k || !q || !out || !k || !v)
    throw std::invalid_argument("attention_varlen_fwd_f32: null pointer");
  std::vector<int64_t> q_start, q_len, k_start, k_len;
  read_seqlens(cu_q, used_q, B, "cu_seqlens_q", q_start, q_len);
  read_seqlens(cu_k, used_k, B, "cu_seqlens_k", k_start, k_len);
  fastft::AttnRows rows{reinterpret_cast<const float*>(q), reinterpret_cast<const float*>(k),
                        reinterpret_cast<const float*>(v), reinterpret_cast<float*>(out),
                        strides[0], strides[1], strides[2], strides[3],
                        strides[4], strides[5], strides[6], strides[7]};
  py::gil_scoped_release release;
  return fastft::attention_f32(rows, q_start.data(), q_len.data(), k_start.data(), k_len.data(), B, H,
                        D, nullptr, nullptr, 0, nullptr, nullptr, causal, scale, num_threads, isa, block_k);
}

}  // namespace

void register_attention(py::module_& m) {
  m.def("attention_fwd_f32", &attention_fwd_f32, py::arg("q"), py::arg("k"),
        py::arg("v"), py::arg("mask"), py::arg("bias"), py::arg("out"), py::arg("batch"),
        py::arg("heads"), py::arg("seq_q"), py::arg("seq_k"), py::arg("head_dim"),
        py::arg("causal"), py::arg("scale"), py::arg("num_threads"), py::arg("isa") = "auto",
        py::arg("block_k") = 0,
        R"doc(Fused attention forward, fp32, CPU: out = softmax(q k^T * scale + bias) v.

Pointers (ints, e.g. tensor.data_ptr()) to contiguous buffers: q, out (batch, heads, seq_q,
head_dim); k, v (batch, heads, seq_k, head_dim); mask uint8/bool (batch, seq_k), nonzero =
attend, or 0; bias float32 (batch, seq_k) additive, or 0. causal: key j attends query i iff
j <= i (top-left aligned). Masked keys (and keys scoring 100 log2 units below the row's
maximum) weigh exactly 0. Rows with every key masked give zeros; a NaN score among a row's
attended keys gives a NaN row. block_k: keys per block (0: the copy's default). Rows float32
gets wrong (q k^T * scale past its range, or inputs holding inf or NaN) are computed again in
double; returns True when there were any. Releases the GIL.)doc");
  m.def("attention_varlen_fwd_f32", &attention_varlen_fwd_f32, py::arg("q"),
        py::arg("k"), py::arg("v"), py::arg("out"), py::arg("cu_seqlens_q"),
        py::arg("cu_seqlens_k"), py::arg("seqused_q"), py::arg("seqused_k"), py::arg("batch"),
        py::arg("heads"), py::arg("head_dim"), py::arg("strides"), py::arg("causal"),
        py::arg("scale"), py::arg("num_threads"), py::arg("isa") = "auto",
        py::arg("block_k") = 0,
        R"doc(Variable-length fused attention forward, fp32, CPU, packed tokens.

q, out: (total_q, heads, head_dim); k, v: (total_k, heads, head_dim), head_dim contiguous,
token and head strides in `strides` = [q_tok, q_head, k_tok, k_head, v_tok, v_head, o_tok,
o_head] (floats). cu_seqlens_q/k: int32 (batch + 1) token offsets of each sequence;
seqused_q/k: int32 (batch) tokens used from each sequence's start, or 0 (all). Rows not used
are not written. causal: top-left aligned per sequence. Returns True as attention_fwd_f32 does.
Releases the GIL.)doc");
  m.def("attention_isa", &fastft::attention_isa,
        "Instruction set the attention kernel uses on this CPU by default");
  m.def("attention_isas", &fastft::attention_isas,
        "Instruction sets of the attention kernel this CPU can run, best first");
}
