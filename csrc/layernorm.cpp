// layernorm.cpp -- the residual LayerNorm kernel of layernorm.h, compiled once per instruction
// set under target pragmas (no -march), picked at run time by the attention kernel's names.
//
// Why: ONNX Runtime's SkipLayerNormalization is slower on the CPU than the Add + Add +
// LayerNormalization it fuses (fastft.export.layernorm splits it back), and those three nodes
// each spread a few tens of microseconds over the intra-op threads: at seq 128 on two threads
// they ran slower than on one (waking a sleeping thread costs more than the work).
#include "layernorm.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <vector>

#include "attention.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace fastft {

#define FASTFT_NS ln_generic
#define FASTFT_VW 4
#include "layernorm_kernel.h"
#undef FASTFT_NS
#undef FASTFT_VW

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define FASTFT_LN_X86 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#define FASTFT_NS ln_avx2
#define FASTFT_VW 8
#include "layernorm_kernel.h"
#undef FASTFT_NS
#undef FASTFT_VW
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma"))), apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
#endif
#define FASTFT_NS ln_avx512
#define FASTFT_VW 16
#include "layernorm_kernel.h"
#undef FASTFT_NS
#undef FASTFT_VW
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

using RowsFn = void (*)(const SkipLnParams&, int64_t, int64_t);

static RowsFn pick(const std::string& want) {
  const std::string name = want.empty() || want == "auto" ? attention_isa() : want;
  bool runs = false;
  for (const auto& n : attention_isas()) runs = runs || n == name;
  if (!runs)
    throw std::invalid_argument("isa: '" + name + "' is not an instruction set this CPU runs");
#ifdef FASTFT_LN_X86
  if (name == "avx512") return &ln_avx512::skip_layernorm_rows;
  if (name == "avx2") return &ln_avx2::skip_layernorm_rows;
#endif
  return &ln_generic::skip_layernorm_rows;
}

// Below this many floats a call runs on the caller alone (~0.3 ms of work on one core: a
// thread started per call costs tens of microseconds).
constexpr int64_t kThreadedFloats = int64_t(1) << 20;

void skip_layernorm_f32(const SkipLnParams& p, int num_threads, const std::string& isa) {
  if (p.rows < 0 || p.hidden < 1) throw std::invalid_argument("rows must be >= 0 and hidden >= 1");
  if (!p.x || !p.skip || !p.gamma || !p.out) throw std::invalid_argument("null data pointer");
  const RowsFn fn = pick(isa);
  int nt = num_threads > 1 && p.rows * p.hidden >= kThreadedFloats ? num_threads : 1;
  if (nt > p.rows) nt = static_cast<int>(p.rows);
  if (nt <= 1) {
    fn(p, 0, p.rows);
    return;
  }
  std::vector<std::thread> helpers;
  const int64_t per = (p.rows + nt - 1) / nt;
  for (int t = 1; t < nt; ++t) {
    const int64_t r0 = t * per, r1 = std::min(p.rows, r0 + per);
    if (r0 >= r1) continue;
    try {
      helpers.emplace_back(fn, std::cref(p), r0, r1);
    } catch (const std::system_error&) {  // no more threads: the caller does it
      fn(p, r0, r1);
    }
  }
  fn(p, 0, std::min(p.rows, per));
  for (auto& h : helpers) h.join();
}

}  // namespace fastft
