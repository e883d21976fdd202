// attention_kernel.h -- the fp32 fused-attention CPU kernel body, written once with GCC/Clang
// vector extensions and compiled several times by attention.cpp: once for the baseline
// instruction set and once per SIMD extension inside a `#pragma GCC target(...)` region,
// each copy in its own namespace. attention.cpp picks a copy at run time from what the CPU
// supports, so the build never emits instructions the running CPU lacks.
//
// No include guard on purpose. The includer defines:
//   FASTFT_NS  namespace of this copy        FASTFT_VW  floats per SIMD vector
//   FASTFT_MR  query rows per micro-tile
// and must have included attention_common.h (AttnParams, Workspace, block sizes) first.
//
// Algorithm (FlashAttention-2 forward, one query block per work item):
//   for each key block that is not fully masked (and not above the causal diagonal):
//     S = (Q_blk K_blk^T) * scale + key_bias      register-blocked MR x (2*VW) micro-kernel,
//                                                  K block packed transposed, head_dim inner
//     m_new = max(m, rowmax S); P = exp(S - m_new); l = l*exp(m - m_new) + rowsum P
//     O = O*exp(m - m_new) + P V_blk             register-blocked MR x (2*VW) micro-kernel
//   out = O / l   (l == 0, i.e. every key of the row masked -> zeros)
// Extra memory per thread: packed K^T and (if head_dim is not a multiple of VW) padded V of
// one (batch, head), plus BQ x BK scores and BQ x head_dim accumulators.

namespace FASTFT_NS {

typedef float vf __attribute__((vector_size(FASTFT_VW * 4)));
typedef float vf_u __attribute__((vector_size(FASTFT_VW * 4), aligned(4)));
typedef int vi __attribute__((vector_size(FASTFT_VW * 4)));

constexpr int VW = FASTFT_VW;
constexpr int MR = FASTFT_MR;
constexpr int NV = 2;         // vectors per micro-tile row (keys in QK, head_dim in PV)
constexpr int KW = NV * VW;   // keys per packed K panel
static_assert(BK % KW == 0, "key block must be a multiple of the packed panel width");
static_assert(BQ % MR == 0, "query block must be a multiple of the micro-tile height");
static_assert(KEY_PAD % KW == 0, "key padding must be a multiple of the panel width");
static_assert(HEAD_PAD % VW == 0, "head_dim padding must be a multiple of the vector width");

#define FASTFT_FI static inline __attribute__((always_inline))

FASTFT_FI vf vload(const float* p) { return *reinterpret_cast<const vf_u*>(p); }
FASTFT_FI void vstore(float* p, vf x) { *reinterpret_cast<vf_u*>(p) = x; }
FASTFT_FI vf vset1(float x) { return vf{} + x; }
FASTFT_FI vf vmax(vf a, vf b) { return a > b ? a : b; }

// Butterfly reductions: every lane ends up holding the max / sum of all lanes.
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#if FASTFT_VW == 16
#define FASTFT_BFLY(x, OP)                                                                  \
  x = OP(x, __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7)); \
  x = OP(x, __builtin_shufflevector(x, x, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11)); \
  x = OP(x, __builtin_shufflevector(x, x, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13)); \
  x = OP(x, __builtin_shufflevector(x, x, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14));
#elif FASTFT_VW == 8
#define FASTFT_BFLY(x, OP)                                                    \
  x = OP(x, __builtin_shufflevector(x, x, 4, 5, 6, 7, 0, 1, 2, 3));          \
  x = OP(x, __builtin_shufflevector(x, x, 2, 3, 0, 1, 6, 7, 4, 5));          \
  x = OP(x, __builtin_shufflevector(x, x, 1, 0, 3, 2, 5, 4, 7, 6));
#elif FASTFT_VW == 4
#define FASTFT_BFLY(x, OP)                                  \
  x = OP(x, __builtin_shufflevector(x, x, 2, 3, 0, 1));    \
  x = OP(x, __builtin_shufflevector(x, x, 1, 0, 3, 2));
#endif
#endif
FASTFT_FI vf vadd(vf a, vf b) { return a + b; }

FASTFT_FI float hmax(vf a) {
#ifdef FASTFT_BFLY
  FASTFT_BFLY(a, vmax)
  return a[0];
#else
  float m = a[0];
  for (int t = 1; t < VW; ++t) m = a[t] > m ? a[t] : m;
  return m;
#endif
}

FASTFT_FI float hsum(vf a) {
#ifdef FASTFT_BFLY
  FASTFT_BFLY(a, vadd)
  return a[0];
#else
  float s = 0.f;
  for (int t = 0; t < VW; ++t) s += a[t];
  return s;
#endif
}
#undef FASTFT_BFLY

// exp(x) for x <= 0 (Cephes expf polynomial, ~1 ulp); -inf and anything below the
// smallest normal result give exactly 0, so masked keys contribute nothing.
FASTFT_FI vf vexp(vf x) {
  const vf lo = vset1(-87.3365478515625f);
  const vf hi = vset1(88.0f);
  const vi under = x < lo;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const vf z = x * 1.44269504088896341f + magic;
  const vf n = z - magic;
  vf r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vf p = vset1(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const vi e = ((vi)z - 0x4B400000 + 127) << 23;  // vector casts reinterpret bits
  const vf res = p * (vf)e;
  return under ? vf{} : res;
}

// Pack K of one (batch, head) as panels of KW keys: kt[p][d][t] = K[p*KW + t][d] (0 past Sk).
static void pack_k(const float* k, int64_t Sk, int64_t Skp, int64_t D, float* kt) {
  for (int64_t p = 0; p < Skp / KW; ++p) {
    float* dst = kt + p * D * KW;
    for (int t = 0; t < KW; ++t) {
      const int64_t j = p * KW + t;
      if (j < Sk) {
        const float* src = k + j * D;
        for (int64_t d = 0; d < D; ++d) dst[d * KW + t] = src[d];
      } else {
        for (int64_t d = 0; d < D; ++d) dst[d * KW + t] = 0.f;
      }
    }
  }
}

// S[r][0:KW] = (q_r . K_panel) * scale + kb, with causal (-inf where key > query) if asked,
// and zeros for rows r >= nrows (padding rows of the last query block).
FASTFT_FI void qk_tile(const float* q, int64_t D, int nrows, const float* kpanel,
                       const float* kb, float scale, bool causal, int64_t qi0, int64_t kj0,
                       float* s, int lds) {
  const float* qr[MR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) qr[r] = q + (r < nrows ? r : 0) * D;
  vf acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int n = 0; n < NV; ++n) acc[r][n] = vf{};
  for (int64_t d = 0; d < D; ++d) {
    vf kv[NV];
#pragma GCC unroll 4
    for (int n = 0; n < NV; ++n) kv[n] = vload(kpanel + d * KW + n * VW);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const float qv = qr[r][d];
#pragma GCC unroll 4
      for (int n = 0; n < NV; ++n) acc[r][n] += qv * kv[n];
    }
  }
  vf kbv[NV];
#pragma GCC unroll 4
  for (int n = 0; n < NV; ++n) kbv[n] = vload(kb + n * VW);
  vi iota;
  for (int t = 0; t < VW; ++t) iota[t] = t;
  const vf ninf = vset1(-__builtin_inff());
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int n = 0; n < NV; ++n) {
      vf x = acc[r][n] * scale + kbv[n];
      if (causal) {
        const vi kj = iota + static_cast<int>(kj0 + n * VW);
        x = kj > static_cast<int>(qi0 + r) ? ninf : x;
      }
      if (r >= nrows) x = vf{};
      vstore(s + r * lds + n * VW, x);
    }
  }
}

// O[r][0:nvd*VW] = O[r][...] * alpha[r] + sum_j P[r][j] V[j][...], j < jn.
FASTFT_FI void pv_tile(const float* p, int ldp, const float* v, int64_t ldv, int jn,
                       float* o, int ldo, const float* alpha, const int nvd) {
  vf acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int n = 0; n < nvd; ++n) acc[r][n] = vload(o + r * ldo + n * VW) * alpha[r];
  for (int j = 0; j < jn; ++j) {
    vf vv[NV];
#pragma GCC unroll 4
    for (int n = 0; n < nvd; ++n) vv[n] = vload(v + j * ldv + n * VW);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const float pv = p[r * ldp + j];
#pragma GCC unroll 4
      for (int n = 0; n < nvd; ++n) acc[r][n] += pv * vv[n];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int n = 0; n < nvd; ++n) vstore(o + r * ldo + n * VW, acc[r][n]);
}

// Online-softmax step for one row of scores s[0:bw] (bw a multiple of VW): overwrite s with
// P = exp(s - m_new), update m and l, and return alpha = exp(m_old - m_new).
FASTFT_FI float softmax_row(float* s, int bw, float& m, float& l) {
  vf mv = vset1(-__builtin_inff());
  for (int t = 0; t < bw; t += VW) mv = vmax(mv, vload(s + t));
  const float mb = hmax(mv);
  const float m_new = mb > m ? mb : m;
  if (m_new == -__builtin_inff()) {  // every key so far masked for this row
    for (int t = 0; t < bw; t += VW) vstore(s + t, vf{});
    return 1.f;
  }
  const float alpha = (m == -__builtin_inff()) ? 0.f : expf(m - m_new);
  vf sum = vf{};
  for (int t = 0; t < bw; t += VW) {
    const vf pe = vexp(vload(s + t) - m_new);
    vstore(s + t, pe);
    sum += pe;
  }
  l = l * alpha + hsum(sum);
  m = m_new;
  return alpha;
}

// One work item: query block qb of (batch, head) bh.
static void attn_item(const AttnParams& P, Workspace& ws, int64_t item) {
  const int64_t bh = item / P.nqb, qb = item % P.nqb;
  const int64_t b = bh / P.H;
  const int64_t D = P.D, Sk = P.Sk, Skp = P.Skp;
  const float* kbase = P.k + bh * Sk * D;
  const float* vbase = P.v + bh * Sk * D;
  const bool pack_v = (D % VW) != 0;
  const int64_t Dp = (D + VW - 1) / VW * VW;
  if (ws.cached_bh != bh) {
    pack_k(kbase, Sk, Skp, D, ws.kt);
    if (pack_v) {
      for (int64_t j = 0; j < Sk; ++j) {
        for (int64_t d = 0; d < D; ++d) ws.vp[j * Dp + d] = vbase[j * D + d];
        for (int64_t d = D; d < Dp; ++d) ws.vp[j * Dp + d] = 0.f;
      }
    }
    ws.cached_bh = bh;
  }
  const float* vsrc = pack_v ? ws.vp : vbase;
  const int64_t ldv = pack_v ? Dp : D;

  const int64_t i0 = qb * BQ;
  const int nrows = static_cast<int>(P.Sq - i0 < BQ ? P.Sq - i0 : BQ);
  const int nrows_pad = (nrows + MR - 1) / MR * MR;
  const float* qbase = P.q + (bh * P.Sq + i0) * D;
  const float* kb = P.kb + b * Skp;
  const uint8_t* blk_any = P.blk_any + b * P.nkb;
  float* S = ws.s;
  float* O = ws.o;
  const int ldo = static_cast<int>(Dp);
  for (int r = 0; r < nrows_pad; ++r) {
    ws.m[r] = -__builtin_inff();
    ws.l[r] = 0.f;
    for (int64_t d = 0; d < Dp; ++d) O[r * ldo + d] = 0.f;
  }
  int64_t kend = P.nkb;
  if (P.causal) {
    const int64_t last = (i0 + nrows - 1) / BK + 1;  // blocks holding keys <= last query
    if (last < kend) kend = last;
  }
  const int nvd_full = static_cast<int>(Dp / VW) / NV;
  const bool nvd_tail = (Dp / VW) % NV != 0;
  for (int64_t kbk = 0; kbk < kend; ++kbk) {
    if (!blk_any[kbk]) continue;
    const int64_t j0 = kbk * BK;
    const int bw = static_cast<int>(Skp - j0 < BK ? Skp - j0 : BK);
    const int jn = static_cast<int>(Sk - j0 < bw ? Sk - j0 : bw);
    // S = Q K^T * scale + bias (+ causal)
    for (int r0 = 0; r0 < nrows_pad; r0 += MR) {
      const int64_t qi = i0 + r0;
      for (int t0 = 0; t0 < bw; t0 += KW) {
        const int64_t kj = j0 + t0;
        const bool causal_here = P.causal && (kj + KW - 1 > qi);
        qk_tile(qbase + r0 * D, D, nrows - r0, ws.kt + (kj / KW) * D * KW, kb + kj, P.scale,
                causal_here, qi, kj, S + r0 * BK + t0, BK);
      }
    }
    // online softmax
    for (int r = 0; r < nrows; ++r) ws.alpha[r] = softmax_row(S + r * BK, bw, ws.m[r], ws.l[r]);
    for (int r = nrows; r < nrows_pad; ++r) ws.alpha[r] = 1.f;
    // O = O * alpha + P V
    for (int r0 = 0; r0 < nrows_pad; r0 += MR) {
      int64_t d0 = 0;
      for (int c = 0; c < nvd_full; ++c, d0 += NV * VW)
        pv_tile(S + r0 * BK, BK, vsrc + j0 * ldv + d0, ldv, jn, O + r0 * ldo + d0, ldo,
                ws.alpha + r0, NV);
      if (nvd_tail)
        pv_tile(S + r0 * BK, BK, vsrc + j0 * ldv + d0, ldv, jn, O + r0 * ldo + d0, ldo,
                ws.alpha + r0, 1);
    }
  }
  float* out = P.out + (bh * P.Sq + i0) * D;
  for (int r = 0; r < nrows; ++r) {
    const float l = ws.l[r];
    const float inv = l > 0.f ? 1.f / l : 0.f;
    for (int64_t d = 0; d < D; ++d) out[r * D + d] = O[r * ldo + d] * inv;
  }
}

#undef FASTFT_FI

}  // namespace FASTFT_NS
