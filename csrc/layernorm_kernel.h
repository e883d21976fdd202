// layernorm_kernel.h -- the residual LayerNorm row kernel, written once with GCC/Clang vector
// extensions and compiled per instruction set by layernorm.cpp (as attention_kernel.h is).
// No include guard on purpose: the includer defines FASTFT_NS (namespace of this copy) and
// FASTFT_VW (floats per SIMD vector).
//
// For each row r: s = x[r] + skip[r] (+ bias); out[r] = (s - mean(s)) / sqrt(var(s) + eps) * gamma
// (+ beta), var the biased variance. Three passes over one row (which sits in L1): the sum
// written to out as it is accumulated, the squared deviations, the normalisation in place.
namespace FASTFT_NS {

typedef float vf __attribute__((vector_size(FASTFT_VW * 4)));
typedef float vf_u __attribute__((vector_size(FASTFT_VW * 4), aligned(4)));
constexpr int VW = FASTFT_VW;

static inline __attribute__((always_inline)) vf ld(const float* p) { return *reinterpret_cast<const vf_u*>(p); }
static inline __attribute__((always_inline)) void st(float* p, vf x) { *reinterpret_cast<vf_u*>(p) = x; }
static inline __attribute__((always_inline)) float hsum(vf x) {
  float s = 0.f;
  for (int i = 0; i < VW; ++i) s += x[i];
  return s;
}

void skip_layernorm_rows(const SkipLnParams& P, int64_t r0, int64_t r1) {
  const int64_t H = P.hidden;
  const float inv_h = 1.0f / static_cast<float>(H);
  for (int64_t r = r0; r < r1; ++r) {
    const float* a = P.x + r * H;
    const float* b = P.skip + r * H;
    float* o = P.out + r * H;
    vf acc0 = {}, acc1 = {};
    int64_t j = 0;
    for (; j + 2 * VW <= H; j += 2 * VW) {
      vf s0 = ld(a + j) + ld(b + j), s1 = ld(a + j + VW) + ld(b + j + VW);
      if (P.bias) {
        s0 += ld(P.bias + j);
        s1 += ld(P.bias + j + VW);
      }
      st(o + j, s0);
      st(o + j + VW, s1);
      acc0 += s0;
      acc1 += s1;
    }
    float sum = hsum(acc0 + acc1);
    for (; j < H; ++j) {
      const float s = a[j] + b[j] + (P.bias ? P.bias[j] : 0.f);
      o[j] = s;
      sum += s;
    }
    const float mean = sum * inv_h;
    const vf vm = mean - vf{};
    vf q0 = {}, q1 = {};
    for (j = 0; j + 2 * VW <= H; j += 2 * VW) {
      const vf d0 = ld(o + j) - vm, d1 = ld(o + j + VW) - vm;
      q0 += d0 * d0;
      q1 += d1 * d1;
    }
    float sq = hsum(q0 + q1);
    for (; j < H; ++j) sq += (o[j] - mean) * (o[j] - mean);
    const float rstd = 1.0f / std::sqrt(sq * inv_h + P.epsilon);
    const vf vr = rstd - vf{};
    for (j = 0; j + VW <= H; j += VW) {
      vf y = (ld(o + j) - vm) * vr * ld(P.gamma + j);
      if (P.beta) y += ld(P.beta + j);
      st(o + j, y);
    }
    for (; j < H; ++j) o[j] = (o[j] - mean) * rstd * P.gamma[j] + (P.beta ? P.beta[j] : 0.f);
  }
}

}  // namespace FASTFT_NS
