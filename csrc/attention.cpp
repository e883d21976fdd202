// attention.cpp -- fp32 fused attention for CPU (fastft._C.attention_fwd_f32).
//
// The kernel body (attention_kernel.h) is compiled once per instruction set: baseline
// (portable, auto-vectorised), AVX2+FMA and AVX-512F, each inside a target pragma region, so
// the module is built without -march flags and the best copy the CPU supports is picked at
// run time (FASTFT_ATTN_ISA / the `isa` argument can force one). The caller passes raw
// pointers of contiguous buffers; nothing here links libtorch. The GIL is released during
// compute and work (batch x heads x query blocks) is spread over `num_threads` OpenMP threads.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#ifdef FASTFT_HAVE_OPENMP
#include <omp.h>
#endif

#include "attention_common.h"

namespace py = pybind11;

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace fastft {

// ---- baseline copy (whatever the compiler targets by default, e.g. SSE2 on x86-64) -------
#define FASTFT_NS isa_generic
#define FASTFT_VW 4
#define FASTFT_MR 4
#include "attention_kernel.h"
#undef FASTFT_NS
#undef FASTFT_VW
#undef FASTFT_MR

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define FASTFT_X86_DISPATCH 1

// ---- AVX2 + FMA copy ------------------------------------------------------------------
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#define FASTFT_NS isa_avx2
#define FASTFT_VW 8
#define FASTFT_MR 6
#include "attention_kernel.h"
#undef FASTFT_NS
#undef FASTFT_VW
#undef FASTFT_MR
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

// ---- AVX-512F copy ----------------------------------------------------------------------
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
#endif
#define FASTFT_NS isa_avx512
#define FASTFT_VW 16
#define FASTFT_MR 8
#include "attention_kernel.h"
#undef FASTFT_NS
#undef FASTFT_VW
#undef FASTFT_MR
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // x86

// ---- dispatch -----------------------------------------------------------------------------
using ItemFn = void (*)(const AttnParams&, Workspace&, int64_t);

struct IsaEntry {
  const char* name;
  ItemFn fn;
  bool (*supported)();
};

static bool always() { return true; }
#ifdef FASTFT_X86_DISPATCH
static bool has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
static bool has_avx512() {
  __builtin_cpu_init();
  return has_avx2() && __builtin_cpu_supports("avx512f");
}
#endif

// Best first.
static const IsaEntry kIsas[] = {
#ifdef FASTFT_X86_DISPATCH
    {"avx512", &isa_avx512::attn_item, &has_avx512},
    {"avx2", &isa_avx2::attn_item, &has_avx2},
#endif
    {"generic", &isa_generic::attn_item, &always},
};

static const IsaEntry& pick_isa(const std::string& want) {
  if (want.empty() || want == "auto") {
    for (const auto& e : kIsas)
      if (e.supported()) return e;
  }
  for (const auto& e : kIsas) {
    if (want == e.name) {
      if (!e.supported())
        throw std::invalid_argument("isa: this CPU does not support '" + want + "'");
      return e;
    }
  }
  throw std::invalid_argument("isa: unknown instruction set '" + want +
                              "' (expected auto, avx512, avx2 or generic)");
}

std::string attention_isa() { return pick_isa("auto").name; }

std::vector<std::string> attention_isas() {
  std::vector<std::string> out;
  for (const auto& e : kIsas)
    if (e.supported()) out.push_back(e.name);
  return out;
}

static float* alloc_floats(int64_t n) {
  void* p = nullptr;
  size_t bytes = static_cast<size_t>(n > 0 ? n : 1) * sizeof(float);
  bytes = (bytes + 63) / 64 * 64;
  if (posix_memalign(&p, 64, bytes) != 0) return nullptr;
  return static_cast<float*>(p);
}

static bool alloc_workspace(Workspace& ws, const AttnParams& P, int64_t Dp) {
  ws.kt = alloc_floats(P.Skp * P.D);
  ws.vp = alloc_floats(P.Skp * Dp);
  ws.s = alloc_floats(int64_t(BQ) * BK);
  ws.o = alloc_floats(int64_t(BQ) * Dp);
  ws.m = alloc_floats(BQ);
  ws.l = alloc_floats(BQ);
  ws.alpha = alloc_floats(BQ);
  ws.cached_bh = -1;
  return ws.kt && ws.vp && ws.s && ws.o && ws.m && ws.l && ws.alpha;
}

static void free_workspace(Workspace& ws) {
  std::free(ws.kt); std::free(ws.vp); std::free(ws.s); std::free(ws.o);
  std::free(ws.m); std::free(ws.l); std::free(ws.alpha);
}

static bool run_range(ItemFn fn, const AttnParams& P, int64_t Dp, int64_t lo, int64_t hi) {
  Workspace ws;
  const bool ok = alloc_workspace(ws, P, Dp);
  if (ok)
    for (int64_t it = lo; it < hi; ++it) fn(P, ws, it);
  free_workspace(ws);
  return ok;
}

static void attention_fwd_f32(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t mask,
                              uintptr_t bias, uintptr_t out, int64_t B, int64_t H, int64_t Sq,
                              int64_t Sk, int64_t D, bool causal, double scale,
                              int num_threads, const std::string& isa) {
  if (B < 0 || H < 0 || Sq < 0 || Sk < 0 || D < 1)
    throw std::invalid_argument("attention_fwd_f32: shapes must be >= 0 and head_dim >= 1");
  const IsaEntry& entry = pick_isa(isa);
  const int64_t nqb = (Sq + BQ - 1) / BQ;
  const int64_t items = B * H * nqb;
  if (items == 0) return;
  if (!q || !out || (Sk > 0 && (!k || !v)))
    throw std::invalid_argument("attention_fwd_f32: null data pointer");

  const int64_t Skp = (Sk + KEY_PAD - 1) / KEY_PAD * KEY_PAD;
  const int64_t Dp = (D + HEAD_PAD - 1) / HEAD_PAD * HEAD_PAD;
  const int64_t nkb = (Skp + BK - 1) / BK;
  const uint8_t* maskp = reinterpret_cast<const uint8_t*>(mask);
  const float* biasp = reinterpret_cast<const float*>(bias);

  py::gil_scoped_release release;

  // Per-key bias (0 / bias / -inf) and per-block "any key unmasked" flags, per batch row.
  std::vector<float> kb(static_cast<size_t>(B * Skp));
  std::vector<uint8_t> blk_any(static_cast<size_t>(B * nkb), 0);
  const float ninf = -INFINITY;
  for (int64_t b = 0; b < B; ++b) {
    float* row = kb.data() + b * Skp;
    for (int64_t j = 0; j < Skp; ++j) {
      float x = ninf;
      if (j < Sk) {
        x = biasp ? biasp[b * Sk + j] : 0.f;
        if (maskp && !maskp[b * Sk + j]) x = ninf;
      }
      row[j] = x;
      if (x != ninf) blk_any[b * nkb + j / BK] = 1;
    }
  }

  AttnParams P;
  P.q = reinterpret_cast<const float*>(q);
  P.k = reinterpret_cast<const float*>(k);
  P.v = reinterpret_cast<const float*>(v);
  P.out = reinterpret_cast<float*>(out);
  P.kb = kb.data();
  P.blk_any = blk_any.data();
  P.B = B; P.H = H; P.Sq = Sq; P.Sk = Sk; P.D = D;
  P.Skp = Skp; P.nkb = nkb; P.nqb = nqb;
  P.causal = causal;
  P.scale = static_cast<float>(scale);

  int nt = num_threads > 0 ? num_threads : 1;
  if (nt > items) nt = static_cast<int>(items);
  int failed = 0;
  const ItemFn fn = entry.fn;
#ifdef FASTFT_HAVE_OPENMP
#pragma omp parallel num_threads(nt) reduction(+ : failed)
  {
    // Dynamic, one query block at a time, in (batch, head, block) order: balances causal
    // work and threads descheduled by other load; consecutive items mostly share a head, so
    // a thread repacks K (and V) only when it moves on to another head.
    Workspace ws;
    if (alloc_workspace(ws, P, Dp)) {
#pragma omp for schedule(dynamic, 1)
      for (int64_t it = 0; it < items; ++it) fn(P, ws, it);
    } else {
      failed += 1;
#pragma omp for schedule(dynamic, 1)
      for (int64_t it = 0; it < items; ++it) {}
    }
    free_workspace(ws);
  }
#else
  (void)nt;
  if (!run_range(fn, P, Dp, 0, items)) failed = 1;
#endif
  if (failed) throw std::bad_alloc();
}

}  // namespace fastft

void register_attention(py::module_& m) {
  m.def("attention_fwd_f32", &fastft::attention_fwd_f32, py::arg("q"), py::arg("k"),
        py::arg("v"), py::arg("mask"), py::arg("bias"), py::arg("out"), py::arg("batch"),
        py::arg("heads"), py::arg("seq_q"), py::arg("seq_k"), py::arg("head_dim"),
        py::arg("causal"), py::arg("scale"), py::arg("num_threads"), py::arg("isa") = "auto",
        R"doc(Fused attention forward, fp32, CPU: out = softmax(q k^T * scale + bias) v.

Pointers (ints, e.g. tensor.data_ptr()) to contiguous buffers: q, out (batch, heads, seq_q,
head_dim); k, v (batch, heads, seq_k, head_dim); mask uint8/bool (batch, seq_k), nonzero =
attend, or 0; bias float32 (batch, seq_k) additive, or 0. causal: key j attends query i iff
j <= i (top-left aligned). Rows with every key masked give zeros. Releases the GIL.)doc");
  m.def("attention_isa", &fastft::attention_isa,
        "Instruction set the attention kernel uses on this CPU by default");
  m.def("attention_isas", &fastft::attention_isas,
        "Instruction sets of the attention kernel this CPU can run, best first");
}
