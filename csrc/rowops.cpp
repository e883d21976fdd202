// rowops.cpp -- the row-wise kernels of rowops.h (residual LayerNorm, bias GELU), compiled
// once per instruction set under target pragmas (no -march), picked at run time by the
// attention kernel's names.
//
// Why: ONNX Runtime's SkipLayerNormalization is slower on the CPU than the Add + Add +
// LayerNormalization it fuses (fastft.export.layernorm splits it back), and those three nodes
// each spread a few tens of microseconds over the intra-op threads: at seq 128 on two threads
// they ran slower than on one (waking a sleeping thread costs more than the work). ORT's
// BiasGelu makes three passes (add and scale, erf, multiply); here one.
#include "rowops.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "attention.h"
#include "isa_target.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace fastft {

// FASTFT_GENERIC_ONLY builds only this copy (what a non-x86 compiler gets; a syntax check of it)
#define FASTFT_NS ln_generic
#define FASTFT_VW 4
#include "rowops_kernel.h"
#undef FASTFT_NS
#undef FASTFT_VW

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)) && !defined(FASTFT_GENERIC_ONLY)
#define FASTFT_LN_X86 1
FASTFT_TARGET_PUSH("avx2,fma")
#define FASTFT_NS ln_avx2
#define FASTFT_VW 8
#include "rowops_kernel.h"
#undef FASTFT_NS
#undef FASTFT_VW
FASTFT_TARGET_POP()
FASTFT_TARGET_PUSH("avx512f,avx2,fma")
#define FASTFT_NS ln_avx512
#define FASTFT_VW 16
#include "rowops_kernel.h"
#undef FASTFT_NS
#undef FASTFT_VW
FASTFT_TARGET_POP()
#endif

// The copy of a kernel for the instruction set `want` ("auto": the attention kernel's pick).
template <typename Fn>
static Fn pick(const std::string& want, Fn avx512, Fn avx2, Fn generic) {
  static const std::string best = attention_isa();  // the CPU does not change
  const std::string& name = want.empty() || want == "auto" ? best : want;
  if (&name != &best) {
    bool runs = false;
    for (const auto& n : attention_isas()) runs = runs || n == name;
    if (!runs)
      throw std::invalid_argument("isa: '" + name + "' is not an instruction set this CPU runs");
  }
  if (name == "avx512" && avx512) return avx512;
  if (name == "avx2" && avx2) return avx2;
  return generic;
}

#ifdef FASTFT_LN_X86
#define FASTFT_COPIES(f) &ln_avx512::f, &ln_avx2::f, &ln_generic::f
#else  // typed null copies: pick deduces one function-pointer type
#define FASTFT_COPIES(f) \
  static_cast<decltype(&ln_generic::f)>(nullptr), static_cast<decltype(&ln_generic::f)>(nullptr), &ln_generic::f
#endif

// Below this much work (floats x the kernel's relative cost per float: ~50 us on one core) a
// call runs on the caller alone: waking a pool thread costs microseconds.
constexpr int64_t kThreadedWork = int64_t(1) << 17;

// fn(p, r0, r1) over rows [0, rows), in chunks shared over `workers` (ONNX Runtime's intra-op
// threads inside a session) or the attention kernel's own pool, when there is enough work.
template <typename P>
static void run_rows(void (*fn)(const P&, int64_t, int64_t), const P& p, int64_t rows, int64_t work,
                     int num_threads, const Workers* workers) {
  const int nt = num_threads > 1 && work >= kThreadedWork ? num_threads : 1;
  if (nt <= 1 || rows < 2) {
    fn(p, 0, rows);
    return;
  }
  const int64_t chunks = std::min<int64_t>(rows, 4 * nt);
  const int64_t per = (rows + chunks - 1) / chunks;
  parallel_for((rows + per - 1) / per, nt, [&](int64_t c) { fn(p, c * per, std::min(rows, (c + 1) * per)); },
               workers);
}

void skip_layernorm_f32(const SkipLnParams& p, int num_threads, const std::string& isa,
                        const Workers* workers) {
  if (p.rows < 0 || p.hidden < 1) throw std::invalid_argument("rows must be >= 0 and hidden >= 1");
  if (!p.x || !p.skip || !p.gamma || !p.out) throw std::invalid_argument("null data pointer");
  run_rows(pick(isa, FASTFT_COPIES(skip_layernorm_rows)), p, p.rows, p.rows * p.hidden, num_threads, workers);
}

void bias_gelu_f32(const BiasGeluParams& p, int num_threads, const std::string& isa,
                   const Workers* workers) {
  if (p.rows < 0 || p.hidden < 1) throw std::invalid_argument("rows must be >= 0 and hidden >= 1");
  if (!p.x || !p.out) throw std::invalid_argument("null data pointer");
  run_rows(pick(isa, FASTFT_COPIES(bias_gelu_rows)), p, p.rows, 4 * p.rows * p.hidden, num_threads, workers);
}

}  // namespace fastft
