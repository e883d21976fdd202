// attention.cpp -- fp32 fused attention for CPU (fastft._C.attention_fwd_f32).
//
// The kernel body (attention_kernel.h) is compiled once per instruction set: baseline
// (portable, auto-vectorised), AVX2+FMA and AVX-512F, each inside a target pragma region, so
// the module is built without -march flags and the best copy the CPU supports is picked at
// run time (FASTFT_ATTN_ISA / the `isa` argument can force one). The caller passes raw
// pointers of contiguous buffers; nothing here links libtorch. The GIL is released during
// compute and work (batch x heads x query blocks) is spread over `num_threads` threads.
//
// Threads: a small persistent pool of std::threads, not OpenMP. With OpenMP, a team joins at
// a barrier that spin-waits; on an oversubscribed machine (measured here: 2 cores, load ~10)
// the caller then burns its time slices spinning for a helper that is not running, and a
// (1, 12, 512, 32) call went from 2.7 ms of CPU to 13 ms and 4x the wall time. Here the
// caller never waits for a helper that has not started: work items are claimed from an
// atomic counter, the caller claims too, and it only waits (sleeping, on a condition
// variable) for items a helper actually claimed.
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <unistd.h>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

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

// One call's work, shared with the helper threads that join it.
struct Job {
  ItemFn fn;
  AttnParams P;
  int64_t Dp;
  int64_t items;
  std::atomic<int64_t> next{0};  // next unclaimed item
  std::atomic<int64_t> done{0};  // items finished
  std::atomic<int> slots{0};     // helpers still allowed to join
  std::mutex mu;
  std::condition_variable cv;    // signalled when done == items
};

static void run_items(Job& j, Workspace& ws) {
  int64_t mine = 0;
  for (;;) {
    const int64_t it = j.next.fetch_add(1);
    if (it >= j.items) break;
    j.fn(j.P, ws, it);
    ++mine;
  }
  if (mine && j.done.fetch_add(mine) + mine == j.items) {
    std::lock_guard<std::mutex> lk(j.mu);
    j.cv.notify_all();
  }
}

// Persistent helper threads, created on first use, one pool per process (a forked child
// gets a fresh one). Never destroyed: threads blocked at interpreter exit are just dropped.
class Pool {
 public:
  static Pool& get() {
    static std::mutex init_mu;
    static Pool* pool = nullptr;
    std::lock_guard<std::mutex> lk(init_mu);
    if (pool == nullptr || pool->pid_ != getpid()) pool = new Pool();  // old one leaked on fork
    return *pool;
  }

  void publish(const std::shared_ptr<Job>& job, int helpers) {
    std::lock_guard<std::mutex> lk(mu_);
    while (nthreads_ < helpers) {
      try {
        std::thread(&Pool::loop, this).detach();
      } catch (const std::system_error&) {  // no more threads: run with the ones we have
        break;
      }
      ++nthreads_;
    }
    job->slots.store(helpers);
    job_ = job;
    ++gen_;
    cv_.notify_all();
  }

 private:
  Pool() : pid_(getpid()) {}

  void loop() {
    uint64_t seen = 0;
    for (;;) {
      std::shared_ptr<Job> j;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return gen_ != seen; });
        seen = gen_;
        j = job_;
      }
      if (!j || j->next.load() >= j->items || j->slots.fetch_sub(1) <= 0) continue;
      Workspace ws;
      if (alloc_workspace(ws, j->P, j->Dp)) run_items(*j, ws);  // no memory: leave it to others
      free_workspace(ws);
    }
  }

  pid_t pid_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::shared_ptr<Job> job_;
  uint64_t gen_ = 0;
  int nthreads_ = 0;
};

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
  const double flops = 4.0 * double(B) * double(H) * double(Sq) * double(Sk) * double(D);
  if (flops < 4e6) nt = 1;  // ~tens of microseconds: not worth waking a thread

  auto job = std::make_shared<Job>();
  job->fn = entry.fn;
  job->P = P;
  job->Dp = Dp;
  job->items = items;
  Workspace ws;
  if (!alloc_workspace(ws, P, Dp)) {
    free_workspace(ws);
    throw std::bad_alloc();
  }
  if (nt > 1) Pool::get().publish(job, nt - 1);
  run_items(*job, ws);
  free_workspace(ws);
  {
    // wait (sleeping) for items that helpers claimed and are still computing
    std::unique_lock<std::mutex> lk(job->mu);
    job->cv.wait(lk, [&] { return job->done.load() == job->items; });
  }
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
