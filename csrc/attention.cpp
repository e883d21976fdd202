// attention.cpp -- fp32 fused attention for CPU, the one entry point of attention.h
// (fastft::attention_f32), which the Python module (attention_py.cpp: padded and varlen
// forms) and the ONNX Runtime custom op (ort_op.cpp) both call. Every caller describes its
// rows to the one kernel body the same way (per-sequence start and length, token and head
// strides), so padded, packed-token and packed-QKV layouts need no copies.
//
// The kernel body (attention_kernel.h) is compiled once per instruction set: baseline
// (portable, auto-vectorised), AVX2+FMA and AVX-512F, each inside a target pragma region, so
// the library is built without -march flags and the best copy the CPU supports is picked at
// run time (FASTFT_ATTN_ISA / the `isa` argument can force one). The caller passes raw
// pointers; nothing here links libtorch, Python or ONNX Runtime. Work (batch x heads x query
// blocks) is spread over `num_threads` threads.
//
// Threads: a small persistent pool of std::threads, not OpenMP. With OpenMP, a team joins at
// a barrier that spin-waits; on an oversubscribed machine (measured here: 2 cores, load ~10)
// the caller then burns its time slices spinning for a helper that is not running, and a
// (1, 12, 512, 32) call went from 2.7 ms of CPU to 13 ms and 4x the wall time. Here the
// caller never waits for a helper that has not started: work items are claimed from an
// atomic counter, the caller claims too, and it only waits for items a helper actually
// claimed (spinning up to ~50 us, then sleeping on a condition variable). The same pool runs
// parallel_for (the row ops of rowops.cpp). Inside ONNX Runtime (ort_op.cpp) the caller passes
// the session's own intra-op pool as `Workers` instead: the same items, claimed the same way,
// on the threads ORT's own kernels use between them.
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cfloat>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <unistd.h>

#include "attention.h"
#include "attention_common.h"
#include "isa_target.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace fastft {

// ---- baseline copy (whatever the compiler targets by default, e.g. SSE2 on x86-64) -------
#define FASTFT_NS isa_generic
#define FASTFT_VW 4
#define FASTFT_KR 4
#define FASTFT_NQ 3
#define FASTFT_MR 4
#define FASTFT_ND 2
#include "attention_kernel.h"
#undef FASTFT_ND
#undef FASTFT_NS
#undef FASTFT_VW
#undef FASTFT_KR
#undef FASTFT_NQ
#undef FASTFT_MR

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define FASTFT_X86_DISPATCH 1

// ---- AVX2 + FMA copy ------------------------------------------------------------------
// Tiles measured on an AVX2-only Zen 3 (S512, head_dim 32/64, one thread, CPU time): QK 4 keys
// x 24 queries beat 6 x 16 and 2 x 48; PV 6 rows x 16 head_dim beat 3 x 32 and 4 x 24.
FASTFT_TARGET_PUSH("avx2,fma")
#define FASTFT_NS isa_avx2
#define FASTFT_VW 8
#define FASTFT_KR 4
#define FASTFT_NQ 3
#define FASTFT_MR 6
#define FASTFT_ND 2
#define FASTFT_MAXPS __builtin_ia32_maxps256  // one vmaxps (GCC emits vcmpps + vblendvps)
#include "attention_kernel.h"
#undef FASTFT_MAXPS
#undef FASTFT_ND
#undef FASTFT_NS
#undef FASTFT_VW
#undef FASTFT_KR
#undef FASTFT_NQ
#undef FASTFT_MR
FASTFT_TARGET_POP()

// ---- AVX-512F copy ----------------------------------------------------------------------
FASTFT_TARGET_PUSH("avx512f,avx2,fma")
#define FASTFT_NS isa_avx512
#define FASTFT_VW 16
#define FASTFT_KR 8
#define FASTFT_NQ 3
#define FASTFT_MR 8
#define FASTFT_ND 2
#include "attention_kernel.h"
#undef FASTFT_ND
#undef FASTFT_NS
#undef FASTFT_VW
#undef FASTFT_KR
#undef FASTFT_NQ
#undef FASTFT_MR
FASTFT_TARGET_POP()
#endif  // x86

// ---- dispatch -----------------------------------------------------------------------------
using ItemFn = void (*)(const AttnParams&, Workspace&, int64_t);

struct IsaEntry {
  const char* name;
  ItemFn fn;
  bool (*supported)();
  int bk;  // default keys per block
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
    {"avx512", &isa_avx512::attn_item, &has_avx512, BK_DEFAULT},
    {"avx2", &isa_avx2::attn_item, &has_avx2, BK_DEFAULT},
#endif
    {"generic", &isa_generic::attn_item, &always, BK_DEFAULT},
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
  ws.qt = alloc_floats(P.D * BQ);
  ws.s = alloc_floats(int64_t(BK_MAX + KR_MAX) * BQ);
  ws.o = alloc_floats(int64_t(BQ) * Dp);
  ws.vp = alloc_floats(int64_t(BK_MAX) * Dp);
  ws.m = alloc_floats(BQ);
  ws.l = alloc_floats(BQ);
  ws.alpha = alloc_floats(BQ);
  ws.mx = alloc_floats(BQ);
  return ws.qt && ws.s && ws.o && ws.vp && ws.m && ws.l && ws.alpha && ws.mx;
}

static void free_workspace(Workspace& ws) {
  std::free(ws.qt); std::free(ws.s); std::free(ws.o); std::free(ws.vp);
  std::free(ws.m); std::free(ws.l); std::free(ws.alpha); std::free(ws.mx);
}

// One call's work, shared with the helper threads that join it: attention items (fn on P,
// with a per-thread Workspace) or any other items (task, no workspace; parallel_for).
struct Job {
  ItemFn fn = nullptr;
  AttnParams P;
  int64_t Dp = 0;
  std::function<void(int64_t)> task;
  int64_t items;
  std::atomic<int64_t> next{0};  // next unclaimed item
  std::atomic<int64_t> done{0};  // items finished
  std::atomic<int> slots{0};     // helpers still allowed to join
  std::mutex mu;
  std::condition_variable cv;    // signalled when done == items
};

static void run_items(Job& j, Workspace* ws) {
  int64_t mine = 0;
  for (;;) {
    const int64_t it = j.next.fetch_add(1);
    if (it >= j.items) break;
    if (j.task)
      j.task(it);
    else
      j.fn(j.P, *ws, it);
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
      if (j->task) {
        run_items(*j, nullptr);
        continue;
      }
      Workspace ws;
      if (alloc_workspace(ws, j->P, j->Dp)) run_items(*j, &ws);  // no memory: leave it to others
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

// Waits for the items of `j` that helpers claimed and are still computing: a helper that
// claimed one is running, so it should finish soon; spin for up to ~50 us (a sleeping caller
// pays another thread wake-up, tens of microseconds on a VM), then sleep.
static void wait_for_helpers(Job& j) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(50);
  for (int i = 1; j.done.load(std::memory_order_acquire) != j.items; ++i) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if (i % 64 == 0 && std::chrono::steady_clock::now() > until) {
      std::unique_lock<std::mutex> lk(j.mu);
      j.cv.wait(lk, [&] { return j.done.load() == j.items; });
      return;
    }
  }
}

// Runs every work item of P on the caller plus up to num_threads - 1 pool threads.
static void run_job(const IsaEntry& entry, const AttnParams& P, int num_threads, double flops,
                    const Workers* workers) {
  const int64_t items = P.item_off[P.B];
  if (items == 0) return;
  const int64_t Dp = (P.D + HEAD_PAD - 1) / HEAD_PAD * HEAD_PAD;
  int nt = num_threads > 0 ? num_threads : 1;
  if (nt > items) nt = static_cast<int>(items);
  if (flops < 4e6) nt = 1;  // ~tens of microseconds: not worth waking a thread

  auto job = std::make_shared<Job>();
  job->fn = entry.fn;
  job->P = P;
  job->Dp = Dp;
  job->items = items;
  if (nt > 1 && workers) {  // every copy gets its own workspace; one without memory leaves it to others
    std::atomic<bool> ran{false};
    (*workers)(nt, [&](int) {
      if (job->next.load() >= job->items) return;  // a copy that starts after the others took it all
      Workspace w;
      if (alloc_workspace(w, P, Dp)) {
        ran.store(true);
        run_items(*job, &w);
      }
      free_workspace(w);
    });
    if (!ran.load()) throw std::bad_alloc();
    return;
  }
  Workspace ws;
  if (!alloc_workspace(ws, P, Dp)) {
    free_workspace(ws);
    throw std::bad_alloc();
  }
  if (nt > 1) Pool::get().publish(job, nt - 1);
  run_items(*job, &ws);
  free_workspace(ws);
  wait_for_helpers(*job);
}

void parallel_for(int64_t items, int num_threads, const std::function<void(int64_t)>& fn,
                  const Workers* workers) {
  if (items <= 0) return;
  int nt = num_threads > 0 ? num_threads : 1;
  if (nt > items) nt = static_cast<int>(items);
  auto job = std::make_shared<Job>();
  job->task = fn;
  job->items = items;
  if (nt > 1 && workers) {
    (*workers)(nt, [&](int) { run_items(*job, nullptr); });
    return;
  }
  if (nt > 1) Pool::get().publish(job, nt - 1);
  run_items(*job, nullptr);
  wait_for_helpers(*job);
}

static int pick_bk(const IsaEntry& entry, int block_k) {
  if (block_k == 0) return entry.bk;
  if (block_k < 0 || block_k > BK_MAX || block_k % KR_MAX != 0)
    throw std::invalid_argument("block_k must be 0 (default) or a multiple of " +
                                std::to_string(KR_MAX) + " up to " + std::to_string(BK_MAX));
  return block_k;
}

constexpr double kLog2e = 1.4426950408889634;

// The reference's arithmetic for one row, in double: scores q k^T * scale + bias over the
// row's keys (a key masked by key_mask or by a bias of -inf takes no part, whatever its score or
// value; a key whose weight is 0, a finfo.min bias say, adds nothing either), the largest
// subtracted (0 where it is -inf), exp, sum, weighted values over the sum (over 1 where the sum
// is 0). inf / NaN inputs propagate as IEEE math says. Compiled once,
// for the baseline instruction set: every SIMD copy's rows come out the same. No allocation:
// the scores are computed again for each chunk of the head.
void exact_row(const AttnParams& P, int64_t b, int64_t h, int64_t i, float* dst) {
  constexpr int64_t kChunk = 64;
  const int64_t D = P.D, Sk = P.k_len[b];
  const int64_t last = P.causal && i + 1 < Sk ? i + 1 : Sk;  // keys j < last
  const float* q = P.q + (P.q_start[b] + i) * P.q_tok + h * P.q_head;
  const float* qb = P.q_bias ? P.q_bias + h * D : nullptr;
  const float* vb = P.v_bias ? P.v_bias + h * D : nullptr;
  const uint8_t* mask = P.key_mask ? P.key_mask + b * P.key_stride : nullptr;
  const float* bias = P.key_bias ? P.key_bias + b * P.key_stride : nullptr;
  const double ninf = -INFINITY;
  auto score = [&](int64_t j) {  // -inf for a masked key
    if ((mask && !mask[j]) || (bias && bias[j] == -INFINITY)) return ninf;
    const float* k = P.k + (P.k_start[b] + j) * P.k_tok + h * P.k_head;
    double acc = 0;
    for (int64_t d = 0; d < D; ++d) acc += (double(q[d]) + (qb ? double(qb[d]) : 0.0)) * double(k[d]);
    return acc * P.scale + (bias ? double(bias[j]) : 0.0);
  };
  double m = ninf;
  bool any = false;
  for (int64_t j = 0; j < last; ++j) {
    if ((mask && !mask[j]) || (bias && bias[j] == -INFINITY)) continue;
    any = true;
    const double s = score(j);
    if (m == m && !(s <= m)) m = s;  // NaN sticks
  }
  if (!any) {  // every key masked: zeros, as the kernel gives
    for (int64_t d = 0; d < D; ++d) dst[d] = 0.f;
    return;
  }
  const double shift = m == ninf ? 0.0 : m;
  for (int64_t d0 = 0; d0 < D; d0 += kChunk) {
    const int64_t dn = D - d0 < kChunk ? D - d0 : kChunk;
    double o[kChunk] = {};
    double l = 0;
    for (int64_t j = 0; j < last; ++j) {
      const double s = score(j);
      if (s == ninf) continue;  // weight 0 (a masked key's value never reaches the row)
      const double p = std::exp(s - shift);
      if (p == 0) continue;  // weighs nothing (a finfo.min bias, an underflow): its value adds nothing
      l += p;
      const float* v = P.v + (P.k_start[b] + j) * P.v_tok + h * P.v_head + d0;
      for (int64_t d = 0; d < dn; ++d) o[d] += p * double(v[d]);
    }
    const double inv = l > 0 ? 1.0 / l : 1.0;
    for (int64_t d = 0; d < dn; ++d)
      dst[d0 + d] = static_cast<float>(o[d] * inv + (vb ? double(vb[d0 + d]) : 0.0));
  }
}

bool attention_f32(const AttnRows& rows, const int64_t* q_start, const int64_t* q_len,
                   const int64_t* k_start, const int64_t* k_len, int64_t B, int64_t H,
                   int64_t D, const uint8_t* key_mask, const float* key_bias,
                   int64_t key_stride, const float* q_bias, const float* v_bias, bool causal,
                   double scale, int num_threads, const std::string& isa, int block_k,
                   const Workers* workers) {
  if (B < 0 || H < 0 || D < 1)
    throw std::invalid_argument("attention: batch and heads must be >= 0 and head_dim >= 1");
  const IsaEntry& entry = pick_isa(isa);
  const int bk = pick_bk(entry, block_k);
  std::vector<int64_t> item_off(B + 1);
  double flops = 0;
  int64_t max_k = 0;
  item_off[0] = 0;
  for (int64_t b = 0; b < B; ++b) {
    if (q_len[b] < 0 || k_len[b] < 0)
      throw std::invalid_argument("attention: sequence lengths must be >= 0");
    item_off[b + 1] = item_off[b] + H * ((q_len[b] + BQ - 1) / BQ);
    flops += 4.0 * double(H) * double(q_len[b]) * double(k_len[b]) * double(D);
    if (k_len[b] > max_k) max_k = k_len[b];
  }
  if (item_off[B] == 0) return false;
  if (!rows.q || !rows.out || (max_k > 0 && (!rows.k || !rows.v)))
    throw std::invalid_argument("attention: null data pointer");
  if ((key_mask || key_bias) && key_stride < max_k)
    throw std::invalid_argument("attention: key_stride shorter than a sequence's keys");

  // Per-key bias in log2 units (0 / bias / -inf) and per-block "any key attended" flags.
  const int64_t nkb = (max_k + bk - 1) / bk;
  std::vector<float> kb;
  std::vector<uint8_t> blk_any;
  if (key_mask || key_bias) {
    kb.assign(static_cast<size_t>(B * max_k), 0.f);
    blk_any.assign(static_cast<size_t>(B * nkb), 0);
    const float ninf = -INFINITY;
    const float l2e = static_cast<float>(kLog2e);
    for (int64_t b = 0; b < B; ++b) {
      float* row = kb.data() + b * max_k;
      for (int64_t j = 0; j < k_len[b]; ++j) {
        float x = 0.f;
        if (key_bias) {  // a finite bias stays finite in log2 units (finfo.min * log2 e overflows)
          const float y = key_bias[b * key_stride + j];
          x = y * l2e;
          if (std::isinf(x) && std::isfinite(y)) x = std::copysign(FLT_MAX, y);
        }
        if (key_mask && !key_mask[b * key_stride + j]) x = ninf;
        row[j] = x;
        if (x != ninf) blk_any[b * nkb + j / bk] = 1;
      }
    }
  }

  AttnParams P;
  static_cast<AttnRows&>(P) = rows;
  P.q_start = q_start; P.q_len = q_len;
  P.k_start = k_start; P.k_len = k_len;
  P.item_off = item_off.data();
  P.kb = kb.empty() ? nullptr : kb.data();
  P.kb_stride = max_k;
  P.blk_any = blk_any.empty() ? nullptr : blk_any.data();
  P.blk_stride = nkb;
  P.q_bias = q_bias; P.v_bias = v_bias;
  P.B = B; P.H = H; P.D = D;
  P.bk = bk;
  P.causal = causal;
  P.qscale = static_cast<float>(scale * kLog2e);
  P.key_mask = key_mask; P.key_bias = key_bias; P.key_stride = key_stride;
  P.scale = scale;
  int suspect = 0;
  P.suspect = &suspect;
  run_job(entry, P, num_threads, flops, workers);  // every item done (and its writes seen) on return
  return __atomic_load_n(&suspect, __ATOMIC_ACQUIRE) != 0;
}

}  // namespace fastft
