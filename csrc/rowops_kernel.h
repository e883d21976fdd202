// rowops_kernel.h -- the row kernels (residual LayerNorm, bias GELU), written once with GCC/Clang
// vector extensions and compiled per instruction set by rowops.cpp (as attention_kernel.h is).
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

namespace FASTFT_NS {

typedef int vi_ __attribute__((vector_size(FASTFT_VW * 4)));

// e^y for y <= 0 (y below -87 is taken as -87: e^-87 ~ 1.6e-38, the smallest normal range).
static inline __attribute__((always_inline)) vf exp_neg(vf y) {
  y = y < (-87.0f - vf{}) ? (-87.0f - vf{}) : y;
  const vf magic = 12582912.0f - vf{};  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const vf k = (y * (1.44269504088896341f - vf{}) + magic) - magic;
  const vf r = (y - k * (0.693145751953125f - vf{})) - k * (1.428606765330187e-06f - vf{});  // |r| <= ln2 / 2
  vf p = 1.0f / 5040 - vf{};
  p = p * r + (1.0f / 720);
  p = p * r + (1.0f / 120);
  p = p * r + (1.0f / 24);
  p = p * r + (1.0f / 6);
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const vi_ bits = (__builtin_convertvector(k, vi_) + 127) << 23;  // 2^k, k in [-126, 0]
  return p * reinterpret_cast<const vf&>(bits);
}

// gelu(x) = x / 2 * (1 + erf(x / sqrt 2)), erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7).
static inline __attribute__((always_inline)) vf gelu(vf x) {
  const vf z = x * (0.70710678118654752f - vf{});
  const vf az = z < vf{} ? -z : z;
  const vf t = 1.0f / (1.0f + 0.3275911f * az);
  vf p = 1.061405429f - vf{};
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  const vf e = 1.0f - p * t * exp_neg(-(az * az));  // erf(|z|)
  const vf erf = z < vf{} ? -e : e;
  return 0.5f * x * (1.0f + erf);
}

// out[i] = gelu(x[i] + bias[i % hidden]) for rows [r0, r1) of `hidden` values (bias may be null).
void bias_gelu_rows(const BiasGeluParams& P, int64_t r0, int64_t r1) {
  const int64_t H = P.hidden;
  for (int64_t r = r0; r < r1; ++r) {
    const float* a = P.x + r * H;
    float* o = P.out + r * H;
    int64_t j = 0;
    for (; j + VW <= H; j += VW) {
      vf v = ld(a + j);
      if (P.bias) v += ld(P.bias + j);
      st(o + j, gelu(v));
    }
    if (j < H) {  // the tail through one padded vector
      float buf[VW] = {};
      for (int64_t i = j; i < H; ++i) buf[i - j] = a[i] + (P.bias ? P.bias[i] : 0.f);
      const vf g = gelu(ld(buf));
      for (int64_t i = j; i < H; ++i) o[i] = g[i - j];
    }
  }
}

}  // namespace FASTFT_NS
