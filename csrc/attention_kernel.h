// attention_kernel.h -- the fp32 fused-attention CPU kernel body, written once with GCC/Clang
// vector extensions and compiled several times by attention.cpp: once for the baseline
// instruction set and once per SIMD extension inside a `#pragma GCC target(...)` region,
// each copy in its own namespace. attention.cpp picks a copy at run time from what the CPU
// supports, so the build never emits instructions the running CPU lacks.
//
// No include guard on purpose. The includer defines:
//   FASTFT_NS  namespace of this copy        FASTFT_VW  floats per SIMD vector
//   FASTFT_KR  keys per QK micro-tile        FASTFT_NQ  query vectors per QK micro-tile
//   FASTFT_MR  query rows per PV micro-tile  FASTFT_ND  head_dim vectors per PV micro-tile
// optionally FASTFT_MAXPS (the builtin of that width's max instruction, a > b ? a : b),
// and must have included attention_common.h (AttnParams, Workspace, BQ, BK_MAX) first.
//
// Algorithm (FlashAttention-2 forward, one block of BQ query rows of one (sequence, head) per
// work item), with the scores kept key-major (S^T: one row per key, BQ query lanes):
//   Qt = (Q_blk * scale * log2 e)^T                   packed once per work item
//   for each key block (of bk keys) that is not fully masked / above the causal diagonal:
//     S^T = K_blk Qt (+ key bias, causal)             KR x (NQ*VW) micro-kernel, K read in
//                                                     place (broadcasts), no K packing
//     m_new = round(max(m, colmax S^T))                 vertical SIMD: no horizontal reductions
//     P = 2^(S^T - m_new)                               (<= 2^0.5)
//     l = l * 2^(m - m_new) + colsum P
//     O = O * 2^(m - m_new) + P V_blk                  MR x (ND*VW) micro-kernel, V read in place
//   out = O / l   (m == -inf, every key of the row masked -> zeros)
// NaN: a NaN score among a row's attended keys makes the row NaN (IEEE, as the reference):
// NaN is never mistaken for a masked key, because only m == -inf shifts by 0 and
// 2^(NaN - x) is NaN.
// Extra memory per thread: Qt (D x BQ), S^T ((BK_MAX + KR_MAX) x BQ), O (BQ x Dp), and a
// padded V block if head_dim is not a multiple of VW.

namespace FASTFT_NS {

typedef float vf __attribute__((vector_size(FASTFT_VW * 4)));
typedef float vf_u __attribute__((vector_size(FASTFT_VW * 4), aligned(4)));
typedef int vi __attribute__((vector_size(FASTFT_VW * 4)));
typedef unsigned vu __attribute__((vector_size(FASTFT_VW * 4)));

constexpr int VW = FASTFT_VW;
constexpr int KR = FASTFT_KR;
constexpr int NQ = FASTFT_NQ;
constexpr int MR = FASTFT_MR;
constexpr int ND = FASTFT_ND;  // head_dim vectors per PV micro-tile
static_assert(ND >= 1 && ND <= 4, "PV tile width: 1..4 vectors (the tail code below)");
constexpr int QW = NQ * VW;  // queries per QK micro-tile
static_assert(BQ % QW == 0, "query block must be a multiple of the QK tile width");
static_assert(BQ % MR == 0, "query block must be a multiple of the PV tile height");
static_assert(BQ % VW == 0, "query block must be a multiple of the vector width");
static_assert(KR <= KR_MAX, "key tile taller than the scratch allows");

#define FASTFT_FI static inline __attribute__((always_inline))

FASTFT_FI vf vload(const float* p) { return *reinterpret_cast<const vf_u*>(p); }
FASTFT_FI void vstore(float* p, vf x) { *reinterpret_cast<vf_u*>(p) = x; }
// x - 0 == x for every x, so this folds to one vbroadcastss (from memory when x is loaded);
// `vf{} + x` would keep an add before each broadcast (0 + -0 = +0 is not -0).
FASTFT_FI vf vset1(float x) { return x - vf{}; }
#ifdef FASTFT_MAXPS  // the instruction (GCC does not always match the expression to it)
FASTFT_FI vf vmax(vf a, vf b) { return FASTFT_MAXPS(a, b); }
#else
FASTFT_FI vf vmax(vf a, vf b) { return a > b ? a : b; }
#endif

// 2^f * 2^n for f in [-0.5, 0.5] and n in z's low mantissa bits: degree-5 polynomial for 2^f
// (relative error 2.4e-7 in fp32).
FASTFT_FI vf vexp2_poly(vf f, vf z) {
  vf p = vset1(1.3277549296617508e-3f);
  p = p * f + 9.67555120587349e-3f;
  p = p * f + 5.5507101118564606e-2f;
  p = p * f + 2.4022118747234344e-1f;
  p = p * f + 6.931469440460205e-1f;
  p = p * f + 1.0000001192092896f;
  // z's low mantissa bits hold n (two's complement); n << 23 added to p's exponent = p * 2^n
  return (vf)((vu)p + ((vu)z << 23));  // vector casts reinterpret bits
}

// 2^x for x <= 0 (scores minus their running max), NaN stays NaN. Below -100 it returns
// exactly 0: a key scoring more than 100 (log2 units) below the row maximum gets no weight,
// as a masked key (-inf), a key after its query under causal, or one under a finfo.min bias
// does, so none of their values reaches the output however large (the reference's exp
// underflows to 0 only below 2^-149; the difference is under 2^-100 of the row's weight).
// Products stay normal numbers (no denormal slow-downs). A row whose every key is masked is
// recognised by m == -inf and written as zeros.
FASTFT_FI vf vexp2(vf x) {
  const vi under = x < vset1(-100.0f);
  x = vmax(vset1(-100.0f), x);      // (-100 > x ? -100 : x): NaN x stays x
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const vf z = x + magic;
  return (vf)((vi)vexp2_poly(x - (z - magic), z) & ~under);
}

// 2^(s - c) for an integer-valued c (|c| <= 2^20), given lo = c - 100 and k = 1.5 * 2^23 - c:
// vexp2(s - c) without the subtraction (0 for s < lo). z = s + k holds n = round(s - c) in
// its low bits, z - k = n + c exactly, and f = s - (n + c) is exact (Sterbenz: |f| <= 0.5).
FASTFT_FI vf vexp2_shift(vf s, vf lo, vf k) {
  const vi under = s < lo;
  s = vmax(lo, s);  // NaN s stays s
  const vf z = s + k;
  return (vf)((vi)vexp2_poly(s - (z - k), z) & ~under);
}

// S^T[r][0:QW] = K[r] . Qt[:, 0:QW]  (+ key bias: -inf masks the key even if the score is
// NaN; + causal: -inf where key index > query index), rows r < KR; ldS = BQ.
template <bool BIAS, bool CAUSAL>
FASTFT_FI void qk_tile(const float* const* krow, const float* qt, int64_t D, const float* kb,
                       int64_t kj0, int64_t qi0, int nkeys, float* s, float* mx) {
  vf acc[KR][NQ];
#pragma GCC unroll 16
  for (int r = 0; r < KR; ++r)
#pragma GCC unroll 4
    for (int n = 0; n < NQ; ++n) acc[r][n] = vf{};
  for (int64_t d = 0; d < D; ++d) {
    vf qv[NQ];
#pragma GCC unroll 4
    for (int n = 0; n < NQ; ++n) qv[n] = vload(qt + d * BQ + n * VW);
#pragma GCC unroll 16
    for (int r = 0; r < KR; ++r) {
      const vf kv = vset1(krow[r][d]);
#pragma GCC unroll 4
      for (int n = 0; n < NQ; ++n) acc[r][n] += kv * qv[n];
    }
  }
  const vf ninf = vset1(-__builtin_inff());
  vi iota;
  for (int t = 0; t < VW; ++t) iota[t] = t;
  vf cmax[NQ];
#pragma GCC unroll 4
  for (int n = 0; n < NQ; ++n) cmax[n] = vload(mx + n * VW);
#pragma GCC unroll 16
  for (int r = 0; r < KR; ++r) {
    float bias = 0.f;
    if (BIAS) bias = r < nkeys ? kb[r] : 0.f;
    if (BIAS && bias == -__builtin_inff()) {  // masked key: -inf even where the score is NaN
#pragma GCC unroll 4
      for (int n = 0; n < NQ; ++n) vstore(s + r * BQ + n * VW, ninf);
      continue;
    }
#pragma GCC unroll 4
    for (int n = 0; n < NQ; ++n) {
      vf x = acc[r][n];
      if (BIAS) x += bias;
      if (CAUSAL) {
        const vi qi = iota + static_cast<int>(qi0 + n * VW);
        x = static_cast<int>(kj0 + r) > qi ? ninf : x;
      }
      vstore(s + r * BQ + n * VW, x);
      if (r < nkeys) cmax[n] = vmax(cmax[n], x);  // column max over this block's keys
    }
  }
#pragma GCC unroll 4
  for (int n = 0; n < NQ; ++n) vstore(mx + n * VW, cmax[n]);
}

// O[r][0:ND*VW] = O[r][...] * alpha[r] + sum_{j < jn} P^T[j][r] V[j][...], r < MR.
template <int ND>
FASTFT_FI void pv_tile(const float* p, const float* v, int64_t ldv, int jn, float* o, int ldo,
                       const float* alpha) {
  vf acc[MR][ND];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    const vf a = vset1(alpha[r]);
#pragma GCC unroll 4
    for (int n = 0; n < ND; ++n) acc[r][n] = vload(o + r * ldo + n * VW) * a;
  }
  for (int j = 0; j < jn; ++j) {
    vf vv[ND];
#pragma GCC unroll 4
    for (int n = 0; n < ND; ++n) vv[n] = vload(v + j * ldv + n * VW);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const vf pr = vset1(p[j * BQ + r]);
#pragma GCC unroll 4
      for (int n = 0; n < ND; ++n) acc[r][n] += pr * vv[n];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int n = 0; n < ND; ++n) vstore(o + r * ldo + n * VW, acc[r][n]);
}

// Online-softmax step over key rows [0, jn) of S^T for query vectors [0, nqv), given the
// block's column max mx: overwrite S^T with P = 2^(S - m_new), update m and l, write
// alpha = 2^(m_old - m_new). m_new is max(m_old, mx) rounded to an integer where that is
// small (P <= 2^0.5; one subtraction less per score, see vexp2_shift).
static void softmax_block(float* S, int jn, int nqv, const float* mx, float* m, float* l,
                          float* alpha) {
  const vf ninf = vset1(-__builtin_inff());
  const float magic = 12582912.0f;  // 1.5 * 2^23
  for (int n = 0; n < nqv; ++n) {
    float* col = S + n * VW;
    const vf m_old = vload(m + n * VW);
    const vf m_mx = vmax(m_old, vload(mx + n * VW));
    // The shift c is the running max rounded to an integer (P <= 2^0.5): then s - c needs no
    // subtraction of its own (z = s + (magic - c) rounds it, f = s - (z - (magic - c)) is
    // exact) and alpha is a power of two. Rows that have seen only masked keys keep
    // m = -inf and shift by 0; NaN and +inf give NaN rows as before. A finite max beyond
    // 2^20 (log2 units) in any lane: the plain s - max form for the whole vector.
    const vf big = vset1(1048576.0f);
    const vi ok = ~(((m_mx > big) & (m_mx != -ninf)) | ((m_mx < -big) & (m_mx != ninf)));
    bool all_ok = true;
    for (int t = 0; t < VW; ++t) all_ok = all_ok && ok[t];
    vf s0 = vf{}, s1 = vf{};
    vf m_new, a;
    if (all_ok) {
      const vf c = m_mx == ninf ? vf{} : (m_mx + magic) - magic;  // round to nearest
      m_new = m_mx == ninf ? ninf : c;
      a = vexp2(m_old - c);
      const vf k = magic - c, lo = c - 100.0f;
      int j = 0;
      for (; j + 1 < jn; j += 2) {
        const vf p0 = vexp2_shift(vload(col + j * BQ), lo, k);
        const vf p1 = vexp2_shift(vload(col + (j + 1) * BQ), lo, k);
        vstore(col + j * BQ, p0);
        vstore(col + (j + 1) * BQ, p1);
        s0 += p0;
        s1 += p1;
      }
      if (j < jn) {
        const vf p0 = vexp2_shift(vload(col + j * BQ), lo, k);
        vstore(col + j * BQ, p0);
        s0 += p0;
      }
    } else {
      m_new = m_mx;
      const vf shift = m_new == ninf ? vf{} : m_new;
      a = vexp2(m_old - shift);
      for (int j = 0; j < jn; ++j) {
        const vf p0 = vexp2(vload(col + j * BQ) - shift);
        vstore(col + j * BQ, p0);
        s0 += p0;
      }
    }
    vstore(l + n * VW, vload(l + n * VW) * a + (s0 + s1));
    vstore(m + n * VW, m_new);
    vstore(alpha + n * VW, a);
  }
}

template <bool BIAS, bool CAUSAL, int FD>
FASTFT_FI void qk_block(const AttnParams& P, const float* kbase, const float* qt, const float* kb,
                        int64_t j0, int jn, int64_t i0, int nqt, float* S, float* mx) {
  const int64_t D = FD ? FD : P.D;
  for (int jt = 0; jt < jn; jt += KR) {
    const float* kr[KR];
#pragma GCC unroll 16
    for (int r = 0; r < KR; ++r) {
      const int64_t j = j0 + (jt + r < jn ? jt + r : jn - 1);  // rows past jn: computed, unused
      kr[r] = kbase + j * P.k_tok;
    }
    const float* kbt = BIAS ? kb + j0 + jt : nullptr;
    const int nkeys = jn - jt < KR ? jn - jt : KR;
    for (int t = 0; t < nqt; ++t) {
      const int64_t qi = i0 + t * QW;
      if (CAUSAL && j0 + jt + KR - 1 > qi)
        qk_tile<BIAS, true>(kr, qt + t * QW, D, kbt, j0 + jt, qi, nkeys, S + jt * BQ + t * QW,
                            mx + t * QW);
      else
        qk_tile<BIAS, false>(kr, qt + t * QW, D, kbt, j0 + jt, qi, nkeys, S + jt * BQ + t * QW,
                             mx + t * QW);
    }
  }
}

// One work item: query block qb of head h of sequence b. FD: head_dim known at compile time
// (the common 32 and 64: fixed trip counts, ~1% at S512 on AVX2), or 0.
template <int FD>
static void attn_item_d(const AttnParams& P, Workspace& ws, int64_t item) {
  int64_t b = 0;
  {  // the sequence holding this item: item_off is nondecreasing
    int64_t lo = 0, hi = P.B;
    while (hi - lo > 1) {
      const int64_t mid = (lo + hi) / 2;
      if (P.item_off[mid] <= item) lo = mid; else hi = mid;
    }
    b = lo;
  }
  const int64_t Sq = P.q_len[b], Sk = P.k_len[b];
  const int64_t nqb = (Sq + BQ - 1) / BQ;
  const int64_t local = item - P.item_off[b];
  const int64_t h = local / nqb, qb = local % nqb;
  const int64_t D = FD ? FD : P.D;
  const int64_t i0 = qb * BQ;
  const int nrows = static_cast<int>(Sq - i0 < BQ ? Sq - i0 : BQ);
  const float* qbase = P.q + (P.q_start[b] + i0) * P.q_tok + h * P.q_head;
  float* obase = P.out + (P.q_start[b] + i0) * P.o_tok + h * P.o_head;
  if (Sk == 0) {
    for (int r = 0; r < nrows; ++r)
      for (int64_t d = 0; d < D; ++d) obase[r * P.o_tok + d] = 0.f;
    return;
  }
  const int nrows_pad = (nrows + MR - 1) / MR * MR;
  const int nqt = (nrows_pad + QW - 1) / QW;  // QK tiles across the block
  const int nqv = nqt * (QW / VW);            // query vectors with scores (>= nrows_pad)
  const int64_t Dp = (D + VW - 1) / VW * VW;
  const int ldo = static_cast<int>(Dp);

  // Qt[d][r] = q[r][d] * qscale, zero for padding rows
  float* qt = ws.qt;
  const int qcols = nqt * QW;
  if (P.q_bias) {
    const float* qbias = P.q_bias + h * D;
    for (int r = 0; r < nrows; ++r) {
      const float* src = qbase + r * P.q_tok;
      for (int64_t d = 0; d < D; ++d) qt[d * BQ + r] = (src[d] + qbias[d]) * P.qscale;
    }
  } else {
    for (int r = 0; r < nrows; ++r) {
      const float* src = qbase + r * P.q_tok;
      for (int64_t d = 0; d < D; ++d) qt[d * BQ + r] = src[d] * P.qscale;
    }
  }
  for (int r = nrows; r < qcols; ++r)
    for (int64_t d = 0; d < D; ++d) qt[d * BQ + r] = 0.f;
  for (int r = 0; r < nqv * VW; ++r) {
    ws.m[r] = -__builtin_inff();
    ws.l[r] = 0.f;
  }
  float* O = ws.o;
  for (int64_t x = 0; x < int64_t(nrows_pad) * Dp; ++x) O[x] = 0.f;

  const float* kbase = P.k + P.k_start[b] * P.k_tok + h * P.k_head;
  const float* vbase = P.v + P.k_start[b] * P.v_tok + h * P.v_head;
  const float* kb = P.kb ? P.kb + b * P.kb_stride : nullptr;
  const uint8_t* blk_any = P.blk_any ? P.blk_any + b * P.blk_stride : nullptr;
  int64_t kend = Sk;
  if (P.causal && i0 + nrows < kend) kend = i0 + nrows;  // keys <= the last query row
  const bool pack_v = (D % VW) != 0;
  const int nd_full = static_cast<int>(Dp / VW) / ND;
  const int nd_tail = static_cast<int>(Dp / VW) % ND;
  const int bk = P.bk;
  float* S = ws.s;

  for (int64_t j0 = 0; j0 < kend; j0 += bk) {
    if (blk_any && !blk_any[j0 / bk]) continue;
    const int jn = static_cast<int>(kend - j0 < bk ? kend - j0 : bk);
    const bool causal_blk = P.causal && (j0 + jn - 1 > i0);
    float* mx = ws.mx;
    for (int r = 0; r < nqv * VW; ++r) mx[r] = -__builtin_inff();
    if (kb) {
      if (causal_blk) qk_block<true, true, FD>(P, kbase, qt, kb, j0, jn, i0, nqt, S, mx);
      else qk_block<true, false, FD>(P, kbase, qt, kb, j0, jn, i0, nqt, S, mx);
    } else {
      if (causal_blk) qk_block<false, true, FD>(P, kbase, qt, kb, j0, jn, i0, nqt, S, mx);
      else qk_block<false, false, FD>(P, kbase, qt, kb, j0, jn, i0, nqt, S, mx);
    }
    softmax_block(S, jn, nqv, mx, ws.m, ws.l, ws.alpha);
    const float* vsrc = vbase + j0 * P.v_tok;
    int64_t ldv = P.v_tok;
    if (pack_v) {
      for (int j = 0; j < jn; ++j) {
        for (int64_t d = 0; d < D; ++d) ws.vp[j * Dp + d] = vsrc[j * P.v_tok + d];
        for (int64_t d = D; d < Dp; ++d) ws.vp[j * Dp + d] = 0.f;
      }
      vsrc = ws.vp;
      ldv = Dp;
    }
    for (int r0 = 0; r0 < nrows_pad; r0 += MR) {
      int64_t d0 = 0;
      for (int c = 0; c < nd_full; ++c, d0 += ND * VW)
        pv_tile<ND>(S + r0, vsrc + d0, ldv, jn, O + r0 * ldo + d0, ldo, ws.alpha + r0);
      if (ND > 3 && nd_tail >= 3) {
        pv_tile<3>(S + r0, vsrc + d0, ldv, jn, O + r0 * ldo + d0, ldo, ws.alpha + r0);
      } else if (ND > 2 && nd_tail == 2) {
        pv_tile<2>(S + r0, vsrc + d0, ldv, jn, O + r0 * ldo + d0, ldo, ws.alpha + r0);
      } else if (nd_tail == 1) {
        pv_tile<1>(S + r0, vsrc + d0, ldv, jn, O + r0 * ldo + d0, ldo, ws.alpha + r0);
      }
    }
  }
  int64_t first_key = -1;  // the sequence's first attended key, looked for when a row has none
  bool suspect = false;
  for (int r = 0; r < nrows; ++r) {
    const float l = ws.l[r], m = ws.m[r];
    // m == -inf: every key of the row masked -> zeros (unless a NaN score made l NaN)
    const bool none = m == -__builtin_inff() && l == l;
    // rows float32 may have got wrong where the float64 reference does not: a score of +inf or
    // a NaN row (q k^T * scale overflowed, or the inputs hold inf / NaN), or no key left although
    // one is attended (every score overflowed to -inf): computed again in double
    bool wrong = !(m < __builtin_inff()) || l != l;
    if (!wrong && none) {
      if (first_key < 0) {
        first_key = 0;
        if (kb)
          while (first_key < Sk && kb[first_key] == -__builtin_inff()) ++first_key;
      }
      const int64_t last = P.causal && i0 + r + 1 < Sk ? i0 + r + 1 : Sk;  // keys j < last
      wrong = first_key < last;
    }
    float* dst = obase + r * P.o_tok;
    if (wrong) {
      exact_row(P, b, h, i0 + r, dst);
      suspect = true;
      continue;
    }
    const float inv = none ? 0.f : 1.f / l;
    float zero = 0.f;  // stays 0 unless the row took an inf or NaN value (x - x is NaN for both)
    for (int64_t d = 0; d < D; ++d) {
      dst[d] = O[r * ldo + d] * inv;
      zero += dst[d] - dst[d];
    }
    if (zero != zero) {  // maybe a value of a key of weight 0 (0 * inf in P V), which adds nothing in double
      exact_row(P, b, h, i0 + r, dst);
      suspect = true;
      continue;
    }
    if (P.v_bias && !none) {  // the probabilities sum to 1: P (V + 1 b^T) = P V + b
      const float* vb = P.v_bias + h * D;
      for (int64_t d = 0; d < D; ++d) dst[d] += vb[d];
    }
  }
  if (suspect && P.suspect) __atomic_store_n(P.suspect, 1, __ATOMIC_RELAXED);
}

static void attn_item(const AttnParams& P, Workspace& ws, int64_t item) {
  switch (P.D) {
    case 32: attn_item_d<32>(P, ws, item); break;
    case 64: attn_item_d<64>(P, ws, item); break;
    default: attn_item_d<0>(P, ws, item); break;
  }
}

#undef FASTFT_FI

}  // namespace FASTFT_NS
