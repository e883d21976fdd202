"""fastft.ops.fused_attention (CPU: C++ kernel or reference) against the float64 reference.

The grid is curated, not the cartesian product: every value of every axis (batch, heads,
seq, seq_q != seq_k, head_dim, mask kind, causal, dtype, SIMD path) appears at least once,
large shapes only a few times. ``-m gpu`` runs the CUDA (Triton) check.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastft._native as native
from fastft.ops import attention_ref, cpu_backend, fused_attention, fused_attention_varlen
from fastft.ops.attention import _fused_attention_op

FP32_TOL = (1e-5, 1e-5)  # (atol, rtol) against the float64 reference


def assert_close(out, ref, atol, rtol, what=""):
    """allclose that says where and by how much it differs."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    out64, ref64 = out.double(), ref.double()
    assert not torch.isnan(out64).any(), f"{what}: NaN at {torch.isnan(out64).nonzero()[:5].tolist()}"
    err = (out64 - ref64).abs()
    bad = err > atol + rtol * ref64.abs()
    if bad.any():
        i = tuple(int(x) for x in torch.nonzero(err == err.max())[0])
        pytest.fail(
            f"{what}: {int(bad.sum())}/{bad.numel()} elements outside atol={atol} rtol={rtol}; "
            f"max abs diff {err.max().item():.3e} at index {i}: got {out64[i].item():.8g}, "
            f"expected {ref64[i].item():.8g}"
        )


def make_mask(kind, batch, seq_k, gen):
    """bool (batch, seq_k) True = attend, or an additive float mask, or None."""
    if kind == "none":
        return None
    if kind in ("prefix", "prefix_empty"):
        lengths = torch.randint(1, seq_k + 1, (batch,), generator=gen)
        if kind == "prefix_empty":
            lengths[-1] = 0  # the last batch row attends to nothing -> zeros
        return torch.arange(seq_k)[None, :] < lengths[:, None]
    if kind == "arbitrary":  # non-prefix holes, at least one key kept per row
        m = torch.rand(batch, seq_k, generator=gen) > 0.4
        m[:, torch.randint(0, seq_k, (1,), generator=gen)] = True
        return m
    if kind == "additive":  # finite bias plus -inf holes, shape (batch, 1, 1, seq_k)
        bias = torch.randn(batch, 1, 1, seq_k, generator=gen)
        holes = torch.rand(batch, 1, 1, seq_k, generator=gen) > 0.7
        holes[..., 0] = False
        return bias.masked_fill(holes, float("-inf"))
    if kind == "additive_min":  # HF style 0 / finfo.min (finite!), one row fully "masked"
        keep = torch.rand(batch, seq_k, generator=gen) > 0.3
        keep[0] = False
        return torch.zeros(batch, seq_k).masked_fill(~keep, torch.finfo(torch.float32).min)
    raise AssertionError(kind)


def make_qkv(b, h, sq, sk, d, dtype, gen):
    q = torch.randn(b, h, sq, d, generator=gen).to(dtype)
    k = torch.randn(b, h, sk, d, generator=gen).to(dtype)
    v = torch.randn(b, h, sk, d, generator=gen).to(dtype)
    return q, k, v


def check_against_ref(b, h, sq, sk, d, mask_kind, causal, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = make_qkv(b, h, sq, sk, d, dtype, gen)
    mask = make_mask(mask_kind, b, sk, gen)
    out = fused_attention(q, k, v, key_padding_mask=mask, causal=causal)
    assert out.dtype == dtype and out.shape == q.shape and out.is_contiguous()
    what = f"{cpu_backend()} b={b} h={h} sq={sq} sk={sk} d={d} mask={mask_kind} causal={causal} {dtype}"
    ref64 = attention_ref(q.double(), k.double(), v.double(), mask, causal)
    if dtype in (torch.float32, torch.float64):
        assert_close(out, ref64, *FP32_TOL, what=what)
    else:  # flash-attention's rule: at most 2x PyTorch's own error against the fp64 reference
        ref_lp = attention_ref(q, k, v, mask, causal, upcast=False)
        pt_err = (ref_lp.double() - ref64).abs().max().item()
        err = (out.double() - ref64).abs().max().item()
        assert err <= 2 * pt_err + 1e-5, f"{what}: max err {err:.3e} > 2 x PyTorch's {pt_err:.3e}"
    if mask_kind == "prefix_empty":
        assert (out[-1] == 0).all(), f"{what}: fully masked batch row is not zeros"
    return out


# (batch, heads, seq_q, seq_k, head_dim, mask, causal, dtype)
GRID = [
    (1, 1, 1, 1, 32, "none", False, torch.float32),
    (3, 12, 7, 7, 48, "prefix", True, torch.float32),
    (1, 12, 64, 64, 64, "arbitrary", False, torch.float32),
    (3, 1, 129, 129, 128, "prefix_empty", True, torch.float32),
    (1, 12, 512, 512, 32, "prefix", False, torch.float32),
    (1, 12, 512, 512, 64, "prefix_empty", True, torch.float32),
    (3, 12, 129, 64, 48, "additive", False, torch.float32),
    (1, 12, 7, 129, 64, "additive", True, torch.float32),
    (3, 1, 64, 512, 32, "arbitrary", True, torch.float32),
    (1, 1, 512, 7, 128, "none", True, torch.float32),
    (3, 12, 1, 129, 128, "additive_min", False, torch.float32),
    (1, 1, 129, 1, 48, "prefix", True, torch.float32),
    (3, 12, 64, 129, 64, "prefix_empty", False, torch.float16),
    (1, 12, 129, 64, 32, "arbitrary", True, torch.bfloat16),
    (3, 1, 7, 64, 48, "prefix_empty", False, torch.float64),
    (1, 1, 129, 7, 128, "additive", True, torch.float16),
    (3, 12, 512, 129, 64, "additive_min", False, torch.bfloat16),
]


@pytest.mark.parametrize("b,h,sq,sk,d,mask_kind,causal,dtype", GRID)
def test_matches_reference(b, h, sq, sk, d, mask_kind, causal, dtype):
    check_against_ref(b, h, sq, sk, d, mask_kind, causal, dtype)


@pytest.mark.parametrize("d", [1, 5, 17, 96, 200, 256])
def test_odd_head_dims(d):
    check_against_ref(2, 3, 33, 70, d, "arbitrary", True, torch.float32, seed=d)


def _isas():
    c = native._C
    return list(c.attention_isas()) if c is not None and hasattr(c, "attention_isas") else []


def _use_isa(isa: str, monkeypatch) -> None:
    """Run the C++ kernel's ``isa`` copy for this test (FASTFT_ATTN_ISA), or skip where there is none."""
    if isa not in _isas():
        pytest.skip(f"{isa} not available here (C++ extension missing or CPU lacks it)")
    monkeypatch.setenv("FASTFT_ATTN_ISA", isa)


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_every_simd_path(isa, monkeypatch):
    _use_isa(isa, monkeypatch)
    assert cpu_backend() == f"cpp:{isa}"
    for case in [
        (3, 2, 129, 200, 48, "prefix_empty", True),
        (1, 3, 70, 64, 5, "additive", False),
        (2, 2, 64, 129, 128, "arbitrary", False),
        (1, 1, 7, 7, 64, "none", True),
        (2, 3, 100, 77, 32, "additive", False),  # head_dim 32 and 64: compile-time copies
        (1, 2, 53, 140, 64, "arbitrary", True),
    ]:
        check_against_ref(*case, torch.float32)


# lengths around the C++ kernel's query blocks (48 rows a work item)
ROW_BLOCK_EDGES = (1, 2, 3, 47, 48, 49, 50, 51, 95, 96, 97, 98, 99)


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_causal_lengths_around_query_blocks(isa, monkeypatch):
    """Causal attention at every length 1..100 (square), and at every pair of lengths around the
    48-row query blocks with seq_q != seq_k, against the reference: a key block that reaches past a
    row block's first query is masked key by key; only one that does not is taken whole. A bound
    off by one there lets that first row see the next key, which shows only where the keys end
    one past it (length 48 n + 2); the grid's shapes do not have it."""
    _use_isa(isa, monkeypatch)
    gen = torch.Generator().manual_seed(48)
    shapes = [(s, s) for s in range(1, 101)]
    shapes += [(sq, sk) for sq in ROW_BLOCK_EDGES for sk in ROW_BLOCK_EDGES if sq != sk]
    for sq, sk in shapes:
        q, k, v = make_qkv(1, 2, sq, sk, 8, torch.float32, gen)
        out = fused_attention(q, k, v, causal=True)
        ref = attention_ref(q.double(), k.double(), v.double(), None, True)
        assert_close(out, ref, *FP32_TOL, what=f"{cpu_backend()} causal sq={sq} sk={sk}")


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_large_and_rising_scores(isa, monkeypatch):
    """Scores far from 0 and running maxima that rise block after block: the kernel shifts by
    the running max rounded to an integer, and by the max itself where that exceeds 2^20 (log2
    units) in any lane of a vector (rows 3 and 17 here: one-hot rows next to ordinary ones)."""
    _use_isa(isa, monkeypatch)
    gen = torch.Generator().manual_seed(7)
    q, k, v = make_qkv(2, 3, 40, 300, 32, torch.float32, gen)
    k = k * torch.linspace(0.5, 8.0, 300)[:, None]  # maxima rise along the keys
    k[..., 0] = k[..., 0].abs() + 1.0
    q[:, :, 3] *= 1e10  # |scores| ~ 1e10 nats, far beyond 2^20 in log2 units
    q[:, :, 17] = 0.0
    q[:, :, 17, 0] = -2e10  # every score of the row hugely negative
    for causal in (False, True):
        out = fused_attention(q, k, v, causal=causal)
        ref = attention_ref(q.double(), k.double(), v.double(), None, causal)
        assert_close(out, ref, *FP32_TOL, what=f"{cpu_backend()} large scores causal={causal}")


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_masked_values_never_reach_the_output(isa, monkeypatch):
    """A masked key, a key after its query under causal, and a key under a finfo.min bias get
    weight exactly 0, as in the reference: values of 1e30 there (uninitialised padding, say)
    leave the output unchanged. The kernel once floored such weights at 2^-100 (error ~2.7)."""
    _use_isa(isa, monkeypatch)
    gen = torch.Generator().manual_seed(11)
    q, k, v = make_qkv(2, 3, 150, 150, 32, torch.float32, gen)
    keep = torch.ones(2, 150, dtype=torch.bool)
    keep[0, 130:] = False
    keep[1, 5:] = False
    huge = v.clone()
    huge.masked_fill_(~keep[:, None, :, None], 1e30)
    bias = torch.zeros(2, 150).masked_fill(~keep, torch.finfo(torch.float32).min)
    for mask in (keep, bias):
        out = fused_attention(q, k, huge, key_padding_mask=mask)
        ref = attention_ref(q.double(), k.double(), v.double(), keep, False)
        assert_close(out, ref, *FP32_TOL, what=f"{cpu_backend()} huge masked values, {mask.dtype} mask")
    future = v.clone()
    future[:, :, 100:] = -1e30  # queries 0..99 must not see them under causal
    out = fused_attention(q, k, future, causal=True)[:, :, :100]
    ref = attention_ref(q.double(), k.double(), v.double(), None, True)[:, :, :100]
    assert_close(out, ref, *FP32_TOL, what=f"{cpu_backend()} huge future values, causal")
    packed = lambda t: t[0].transpose(0, 1).contiguous()  # (seq, heads, head_dim)  # noqa: E731
    cu = torch.tensor([0, 150], dtype=torch.int32)
    out = fused_attention_varlen(packed(q), packed(k), packed(future), cu, cu, 150, 150, causal=True)[:100]
    assert_close(out, packed(ref), *FP32_TOL, what=f"{cpu_backend()} varlen, huge future values, causal")


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_scores_past_float32s_range_match_the_reference(isa, monkeypatch):
    """Finite inputs whose q k^T * scale overflows float32: every score -inf gave a row of zeros
    (read as fully masked), one +inf score a NaN row, where the float64 reference is finite.
    The kernel computes those rows again in double and says so; it does that only for such rows
    (not fully masked ones, causal left padding, or ordinary inputs)."""
    _use_isa(isa, monkeypatch)
    gen = torch.Generator().manual_seed(5)
    q, k, v = make_qkv(2, 2, 40, 70, 64, torch.float32, gen)
    keep = torch.rand(2, 70, generator=gen) < 0.7
    for what, qq, kk, scale in (
        ("every score -inf", torch.full_like(q, 1e20), torch.full_like(k, -1e20), None),
        (
            "one +inf score",
            torch.full_like(q, 1e20),
            torch.cat([torch.full_like(k[:, :, :1], 1e20), k[:, :, 1:]], 2),
            None,
        ),
        ("scale 1e37", q, k, 1e37),
    ):
        for mask, causal in ((None, False), (keep, True)):
            out = fused_attention(qq, kk, v, key_padding_mask=mask, causal=causal, scale=scale)
            ref = attention_ref(qq.double(), kk.double(), v.double(), mask, causal, scale)
            assert torch.isfinite(ref).all()
            assert_close(out, ref, *FP32_TOL, what=f"{cpu_backend()} {what}, causal={causal}")
        packed = lambda t: t[1].transpose(0, 1).contiguous()  # noqa: E731
        cu_q, cu_k = torch.tensor([0, 40], dtype=torch.int32), torch.tensor([0, 70], dtype=torch.int32)
        out = fused_attention_varlen(packed(qq), packed(kk), packed(v), cu_q, cu_k, 40, 70, scale=scale)
        ref = attention_ref(qq.double(), kk.double(), v.double(), None, False, scale)
        assert_close(out, packed(ref), *FP32_TOL, what=f"{cpu_backend()} varlen, {what}")

    def flagged(q, k, mask, causal):
        out = torch.empty_like(q)
        b, h, sq, d = q.shape
        args = (q.data_ptr(), k.data_ptr(), k.data_ptr(), mask.data_ptr() if mask is not None else 0, 0)
        return native._C.attention_fwd_f32(*args, out.data_ptr(), b, h, sq, k.shape[2], d, causal, 0.125, 1, isa)

    left = torch.ones(2, 70, dtype=torch.bool)
    left[:, :30] = False  # left padding under causal: query rows 0..29 have no key, legitimately
    none = torch.zeros(2, 70, dtype=torch.bool)
    none[0, 3] = True  # sequence 1: every key masked
    kq = k[:, :, :40].contiguous()
    assert not flagged(q, k, None, False) and not flagged(q, k, keep, True)
    assert not flagged(q, kq, left[:, :40].contiguous(), True) and not flagged(q, k, none, False)
    assert flagged(torch.full_like(q, 1e20), torch.full_like(k, -1e20), None, False)

    # the kernel's own rows (the op once recomputed the whole call in Python, so the op's test above
    # passed without them): overflowing rows against the reference, a bool mask and an additive one
    qq, kk = torch.full_like(q, 1e20), torch.cat([torch.full_like(k[:, :, :1], 1e20), k[:, :, 1:]], 2)
    bias = torch.where(keep, 0.0, -1e4).to(torch.float32).contiguous()
    for mask, bias_t, causal in ((keep.contiguous(), None, True), (None, bias, False), (None, None, False)):
        out = torch.empty_like(q)
        b, h, sq, d = q.shape
        ptrs = (mask.data_ptr() if mask is not None else 0, bias_t.data_ptr() if bias_t is not None else 0)
        args = (qq.data_ptr(), kk.data_ptr(), v.data_ptr(), *ptrs, out.data_ptr(), b, h, sq, kk.shape[2], d)
        assert native._C.attention_fwd_f32(*args, causal, 0.125, 2, isa)
        ref = attention_ref(qq.double(), kk.double(), v.double(), bias_t if mask is None else mask, causal, 0.125)
        assert_close(out, ref, *FP32_TOL, what=f"{isa} kernel rows, mask={mask is not None} bias={bias_t is not None}")


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_rows_computed_again_in_double_cover_every_head_dim_chunk(isa, monkeypatch):
    """The double path (exact_row) walks head_dim in chunks of 64 values: head_dim 100 and 200
    (not multiples of 16 or 64), with rows sent there by scores past float32's range (q = 1e20,
    k = -1e20: every score -inf in float32) and by an attended inf value (its column is inf, the
    others finite), must give every chunk's columns as the reference does: a chunk reading the
    values or writing the output at the first chunk's columns went unseen at head_dim <= 64."""
    _use_isa(isa, monkeypatch)
    gen = torch.Generator().manual_seed(23)
    for d in (100, 200):
        q, k, v = make_qkv(1, 2, 9, 20, d, torch.float32, gen)
        out, again = _cpp_attention(torch.full_like(q, 1e20), torch.full_like(k, -1e20), v)
        ref = attention_ref(torch.full_like(q, 1e20).double(), torch.full_like(k, -1e20).double(), v.double())
        assert again and torch.isfinite(ref).all()
        assert_close(out, ref, *FP32_TOL, what=f"{isa} head_dim {d}, every score -inf in float32")
        v[0, 0, 3, d - 30] = float("inf")  # head 0's rows attend key 3: that column is inf, the rest finite
        for causal in (False, True):
            out, again = _cpp_attention(q, k, v, causal=causal)
            ref = attention_ref(q.double(), k.double(), v.double(), None, causal)
            what = f"{isa} head_dim {d}, an attended inf value, causal={causal}"
            assert again and torch.equal(out.isinf(), ref.isinf()) and int(ref.isinf().sum()) > 0, what
            assert_close(out.nan_to_num(posinf=0.0), ref.nan_to_num(posinf=0.0), *FP32_TOL, what=what)


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_inf_and_nan_values_of_keys_that_weigh_nothing_stay_out(isa, monkeypatch):
    """Padding left uninitialised can hold inf or NaN (fp16 1e30 is inf): a masked key's value, or a
    future key's under causal, turned every row sharing its key block NaN (0 * inf in P V), and the
    reference's own matmul did the same. Both now leave such keys out; an attended inf still makes
    its rows inf or NaN, as IEEE math says."""
    _use_isa(isa, monkeypatch)
    gen = torch.Generator().manual_seed(9)
    q, k, v = make_qkv(2, 3, 40, 70, 32, torch.float32, gen)
    keep = torch.ones(2, 70, dtype=torch.bool)
    keep[:, 50:] = False
    padded = v.clone()
    padded[:, :, 55], padded[:, :, 60] = float("inf"), float("nan")
    lowest = torch.finfo(torch.float32).min  # HF's eager mask: a finite bias, weight 0 all the same
    for mask in (keep, *(torch.where(keep, 0.0, x) for x in (float("-inf"), lowest, -1e30))):
        out, ref = fused_attention(q, k, padded, mask), attention_ref(q, k, padded, mask)
        assert torch.isfinite(ref).all() and torch.isfinite(out).all()
        assert_close(out, attention_ref(q, k, v, keep), *FP32_TOL, what=f"{isa} masked inf / NaN values")
    future = v.clone()
    future[:, :, 30] = float("inf")  # rows 0..29 do not attend key 30 under causal
    out, ref = fused_attention(q, k, future, None, True), attention_ref(q, k, future, None, True)
    assert torch.isfinite(ref[:, :, :30]).all() and torch.isfinite(out[:, :, :30]).all()
    assert_close(out[:, :, :30], attention_ref(q, k, v, None, True)[:, :, :30], *FP32_TOL, what=f"{isa} causal")
    assert torch.equal(out[:, :, 30:].isfinite(), ref[:, :, 30:].isfinite())  # attended: not finite, in both
    assert not out[:, :, 30:].isfinite().all()


def test_attended_inf_and_minus_inf_values_in_one_column_give_nan():
    """IEEE math: a row attending one key whose value is +inf and another whose value is -inf in
    the same column sums inf + -inf there: NaN (the reference's _weighted_values marks such
    columns; one of them alone gives that inf). The reference (float64 and in the input dtype) and
    the C++ kernel (each copy) give the same pattern, with and without causal, where rows before a
    key do not see it."""
    gen = torch.Generator().manual_seed(27)
    q, k, v = make_qkv(1, 2, 10, 10, 20, torch.float32, gen)
    v[0, 0, 2, 5], v[0, 0, 7, 5], v[0, 0, 4, 9] = float("inf"), float("-inf"), float("-inf")
    for causal in (False, True):
        want_nan = torch.zeros(1, 2, 10, 20, dtype=torch.bool)
        want_pos, want_neg = want_nan.clone(), want_nan.clone()

        def sees(j, causal=causal):  # the query rows that attend key j
            return torch.arange(10) >= j if causal else torch.ones(10, dtype=torch.bool)

        want_nan[0, 0, :, 5] = sees(2) & sees(7)
        want_pos[0, 0, :, 5] = sees(2) & ~sees(7)
        want_neg[0, 0, :, 9] = sees(4)
        outs = {
            "reference": attention_ref(q.double(), k.double(), v.double(), None, causal),
            "reference fp32": attention_ref(q, k, v, None, causal, upcast=False),
        }
        for isa in _isas():
            outs[f"{isa} kernel"], _ = _cpp_attention(q, k, v, causal=causal, isa=isa)
        for name, out in outs.items():
            what = f"{name} causal={causal}"
            assert torch.equal(out.isnan(), want_nan), f"{what}: NaN pattern"
            assert torch.equal(out == float("inf"), want_pos), f"{what}: +inf pattern"
            assert torch.equal(out == float("-inf"), want_neg), f"{what}: -inf pattern"


@pytest.mark.parametrize("block_k", [8, 64, 256])
def test_cpp_key_block_sizes(block_k):
    """The C++ kernel's key block (block_k: the unit of online-softmax steps and of masked-block
    skipping) changes rounding only: odd shapes, masks and causal against the reference."""
    c = native._C
    if c is None:
        pytest.skip("C++ extension not built")
    gen = torch.Generator().manual_seed(block_k)
    for b, h, sq, sk, d, kind, causal in [
        (2, 3, 129, 113, 64, "prefix_empty", True),
        (1, 2, 7, 300, 5, "arbitrary", False),
    ]:
        q, k, v = make_qkv(b, h, sq, sk, d, torch.float32, gen)
        mask = make_mask(kind, b, sk, gen)
        out = torch.empty_like(q)
        c.attention_fwd_f32(
            q.data_ptr(),
            k.data_ptr(),
            v.data_ptr(),
            mask.data_ptr(),
            0,
            out.data_ptr(),
            b,
            h,
            sq,
            sk,
            d,
            causal,
            d**-0.5,
            2,
            "auto",
            block_k,
        )
        ref = attention_ref(q.double(), k.double(), v.double(), mask, causal)
        assert_close(out, ref, *FP32_TOL, what=f"block_k={block_k} sq={sq} sk={sk} d={d} {kind} causal={causal}")
    with pytest.raises(ValueError, match="block_k"):
        c.attention_fwd_f32(
            q.data_ptr(), k.data_ptr(), v.data_ptr(), 0, 0, out.data_ptr(), b, h, sq, sk, d, False, 1.0, 1, "auto", 12
        )


def _cpp_attention(q, k, v, mask=None, bias=None, causal=False, isa="auto", block_k=0):
    """fastft._C.attention_fwd_f32 called directly (float32 contiguous q, k, v; a bool mask or a
    float32 bias, contiguous (batch, seq_k)): its own ``isa`` copy and key block ``block_k``. Returns
    the output and whether rows were computed again in double."""
    out = torch.empty_like(q)
    b, h, sq, d = q.shape
    ptrs = (mask.data_ptr() if mask is not None else 0, bias.data_ptr() if bias is not None else 0)
    args = (q.data_ptr(), k.data_ptr(), v.data_ptr(), *ptrs, out.data_ptr(), b, h, sq, k.shape[2], d)
    return out, native._C.attention_fwd_f32(*args, causal, d**-0.5, 2, isa, block_k)


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_lone_attended_keys_at_key_block_edges(isa, monkeypatch):
    """The kernel skips a key block where the mask attends no key (per batch row, from the bool mask
    or the -inf of an additive one). Lone attended keys on the edges of blocks (keys bk - 1, bk,
    2 bk - 1, and one far past them), whole blocks empty around them, for several key block sizes
    bk, bool and additive masks, causal or not: every attended key counts, as in the reference,
    and a batch row attending nothing is zeros."""
    _use_isa(isa, monkeypatch)
    gen = torch.Generator().manual_seed(13)
    for bk in (8, 64, 256):
        sk = 3 * bk + 5
        lone = [[bk - 1], [bk], [2 * bk - 1], [bk - 1, 3 * bk + 2], [bk, 2 * bk - 1, 3 * bk + 4], []]
        keep = torch.zeros(len(lone), sk, dtype=torch.bool)
        for row, keys in enumerate(lone):
            keep[row, keys] = True
        bias = torch.where(keep, torch.randn(keep.shape, generator=gen), float("-inf")).contiguous()
        q, k, v = make_qkv(len(lone), 1, sk, sk, 8, torch.float32, gen)
        for mask, add in ((keep, None), (None, bias)):
            for causal in (False, True):
                out, _ = _cpp_attention(q, k, v, mask, add, causal, isa, bk)
                ref = attention_ref(q.double(), k.double(), v.double(), keep if add is None else add, causal)
                what = f"{isa} block_k={bk} {'bool' if add is None else 'additive'} causal={causal}"
                assert_close(out, ref, *FP32_TOL, what=what)
                assert (out[-1] == 0).all(), f"{what}: a batch row attending no key is not zeros"


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_ordinary_rows_stay_off_the_double_path(isa, monkeypatch):
    """The kernel computes a row again in double (slow) only where float32 may have got it wrong,
    and it says so; rows a float32 pass gets wrong through a kernel bug are computed again too, so
    the output alone cannot tell a bug hidden that way. Ordinary inputs here, each beside one of the
    kernel's special cases, must come back unflagged and as the reference gives them:
    a masked last key of a key block with a huge score (the rows of the block's last key tile past
    its keys repeat that key, unmasked: they must not reach the running max); a row with no key yet
    (causal, key 0 masked) in a vector whose other rows score beyond 2^20 log2 units (the plain
    shift, where that row's -inf max must shift by 0, not give -inf - -inf = NaN); and attended keys
    on the last slot of a key block (the block must be marked as having one: a skipped block left
    such rows with no key)."""
    _use_isa(isa, monkeypatch)
    gen = torch.Generator().manual_seed(17)
    # a masked last key (13 keys: the last tile of every copy's key block is short) scoring huge
    q, k, v = make_qkv(2, 2, 20, 13, 24, torch.float32, gen)
    q[..., 0] = q[..., 0].abs() + 1.0
    k[:, :, 12] = 0.0
    k[:, :, 12, 0] = 1e4  # every row scores >= 2000 nats on it: far above the attended keys
    keep = torch.ones(2, 13, dtype=torch.bool)
    keep[:, 12] = False
    bias = torch.where(keep, torch.randn(2, 13, generator=gen), float("-inf")).contiguous()
    for mask, add in ((keep, None), (None, bias)):
        out, again = _cpp_attention(q, k, v, mask, add, False, isa)
        what = f"{isa} masked huge last key, {'bool' if add is None else 'additive'}"
        assert not again, f"{what}: rows went to the double path"
        assert_close(
            out, attention_ref(q.double(), k.double(), v.double(), keep if add is None else add), *FP32_TOL, what=what
        )
    # causal, key 0 masked: row 0 has no key; rows 1..5 score ~1e10 nats
    q, k, v = make_qkv(1, 2, 30, 30, 16, torch.float32, gen)
    q[:, :, 1:6] *= 1e10
    keep = torch.ones(1, 30, dtype=torch.bool)
    keep[0, 0] = False
    out, again = _cpp_attention(q, k, v, keep, None, True, isa)
    assert not again, f"{isa} huge scores beside a row with no key: rows went to the double path"
    assert (out[0, :, 0] == 0).all()
    assert_close(out, attention_ref(q.double(), k.double(), v.double(), keep, True), *FP32_TOL, what=f"{isa} causal")
    # attended keys on the last slot of a block, alone in it, beside keys of later blocks
    for bk in (8, 64):
        sk = 3 * bk
        keep = torch.zeros(3, sk, dtype=torch.bool)
        keep[0, bk - 1] = True
        keep[1, [bk - 1, 2 * bk + 3]] = True
        keep[2, [2 * bk - 1, sk - 1]] = True
        q, k, v = make_qkv(3, 1, 9, sk, 8, torch.float32, gen)
        out, again = _cpp_attention(q, k, v, keep, None, False, isa, bk)
        assert not again, f"{isa} block_k={bk}: a lone key on a block's last slot went to the double path"
        ref = attention_ref(q.double(), k.double(), v.double(), keep)
        assert_close(out, ref, *FP32_TOL, what=f"{isa} block_k={bk} keys on a block's last slot")


_GUARDED_CHILD = r"""
import ctypes, mmap, sys
import numpy as np, torch
import fastft._native as native
from fastft.ops import attention_ref

libc = ctypes.CDLL(None)
libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
keep_alive = []

def guarded(t):
    # a copy of t ending on the last byte before an inaccessible page
    n = t.numel() * 4
    size = (n + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
    buf = mmap.mmap(-1, size + mmap.PAGESIZE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    assert libc.mprotect(base + size, mmap.PAGESIZE, 0) == 0  # PROT_NONE
    keep_alive.append(buf)
    arr = np.frombuffer(buf, dtype=np.float32, count=t.numel(), offset=size - n)
    out = torch.from_numpy(arr).view(t.shape)
    out.copy_(t)
    return out

gen = torch.Generator().manual_seed(19)
for isa in native._C.attention_isas():
    for sq, sk, d in ((9, 13, 24), (50, 70, 5), (3, 1, 64)):
        q, k, v = (torch.randn(1, 2, s, d, generator=gen) for s in (sq, sk, sk))
        keep = torch.rand(1, sk, generator=gen) > 0.3
        for causal in (False, True):
            for mask in (None, keep):
                gq, gk, gv = guarded(q), guarded(k), guarded(v)
                out = torch.empty_like(q)
                native._C.attention_fwd_f32(gq.data_ptr(), gk.data_ptr(), gv.data_ptr(),
                    mask.data_ptr() if mask is not None else 0, 0, out.data_ptr(),
                    1, 2, sq, sk, d, causal, d ** -0.5, 1, isa, 0)
                ref = attention_ref(q.double(), k.double(), v.double(), mask, causal)
                assert torch.allclose(out.double(), ref, atol=1e-5, rtol=1e-5), (isa, sq, sk, d, causal)
print("ok")
"""


def test_kernel_reads_nothing_past_q_k_and_v(tmp_path):
    """q, k and v each end right before an inaccessible page (a child process, so a fault fails the
    test instead of ending the run): the kernel reads no row past the last key or query, e.g. for
    the short last key tile of a block (key counts not a multiple of any copy's tile height), where
    the tile's unused rows repeat the last key rather than read the rows after it."""
    import subprocess
    import sys

    if native._C is None:
        pytest.skip("C++ extension not built")
    if not sys.platform.startswith("linux"):
        pytest.skip("mprotect through ctypes.CDLL(None): Linux only")
    # run outside the source tree: from it, `import fastft` finds ./fastft, which has no built _C
    # where fastft was installed with `pip install .` (CI)
    proc = subprocess.run(
        [sys.executable, "-c", _GUARDED_CHILD], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (
        f"child exited {proc.returncode} (a negative status is the signal: -11 a read past the end): "
        f"{proc.stderr[-2000:]}"
    )


def test_thread_count_does_not_change_result():
    gen = torch.Generator().manual_seed(3)
    q, k, v = make_qkv(2, 5, 200, 150, 64, torch.float32, gen)
    mask = make_mask("arbitrary", 2, 150, gen)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fused_attention(q, k, v, mask, causal=True)
        torch.set_num_threads(2)
        two = fused_attention(q, k, v, mask, causal=True)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two)


def test_concurrent_callers_and_fork():
    """The C++ kernel's thread pool: Python threads calling at once, and a forked child."""
    import os
    import threading

    gen = torch.Generator().manual_seed(13)
    q, k, v = make_qkv(1, 4, 256, 256, 64, torch.float32, gen)
    want = fused_attention(q, k, v)
    got = [None] * 3

    def call(i):
        got[i] = fused_attention(q, k, v)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(g is not None and torch.equal(g, want) for g in got)
    if not hasattr(os, "fork"):
        return
    import hashlib

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must not hang on the parent's pool. Only fastft and numpy here:
        try:  # torch's own OpenMP ops can hang in a child forked after they ran.
            digest = hashlib.sha256(fused_attention(q, k, v).numpy().tobytes()).digest()
            os.write(w, digest)
        finally:
            os._exit(0)
    os.close(w)
    got_digest = os.read(r, 64)
    os.waitpid(pid, 0)
    assert got_digest == hashlib.sha256(want.numpy().tobytes()).digest()


def test_reference_matches_sdpa():
    """The reference itself, against torch SDPA (float64), including seq_q != seq_k causal."""
    gen = torch.Generator().manual_seed(1)
    for sq, sk, causal, kind in [
        (7, 7, False, "prefix"),
        (33, 70, True, "arbitrary"),
        (70, 33, True, "none"),
        (64, 129, False, "additive"),
    ]:
        q, k, v = make_qkv(2, 3, sq, sk, 48, torch.float64, gen)
        mask = make_mask(kind, 2, sk, gen)
        attn = None
        if mask is not None:
            attn = mask[:, None, None, :] if mask.dtype == torch.bool else mask.double()
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=attn, is_causal=causal)
        got = attention_ref(q, k, v, mask, causal)
        assert_close(got, want, 1e-10, 1e-10, what=f"ref vs sdpa sq={sq} sk={sk} causal={causal} {kind}")


def test_reference_computes_in_float64_unless_told_not_to():
    """attention_ref's default (upcast=True: what the op's backward, the float64 path and devices
    without a kernel run) computes in float64 and rounds once to the input dtype, bitwise the
    float64 inputs' result cast; upcast=False computes in the input dtype, which differs. Every
    comparison elsewhere passes float64 inputs itself, so a reference that ignored upcast went
    unseen."""
    gen = torch.Generator().manual_seed(37)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        q, k, v = make_qkv(2, 2, 9, 13, 20, dtype, gen)
        mask = make_mask("additive", 2, 13, gen)
        for causal in (False, True):
            want = attention_ref(q.double(), k.double(), v.double(), mask, causal).to(dtype)
            got = attention_ref(q, k, v, mask, causal)
            assert got.dtype == dtype and torch.equal(got, want), f"{dtype} causal={causal}: not float64's result"
            assert not torch.equal(attention_ref(q, k, v, mask, causal, upcast=False), want), f"{dtype}: upcast=False"


def test_fully_masked_rows_are_zero():
    gen = torch.Generator().manual_seed(2)
    q, k, v = make_qkv(2, 2, 9, 9, 32, torch.float32, gen)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, :3] = False  # with causal, queries 0..2 of batch 0 see no key
    mask[1] = False
    for out in (fused_attention(q, k, v, mask, causal=True), attention_ref(q, k, v, mask, True)):
        assert not torch.isnan(out).any()
        assert (out[0, :, :3] == 0).all() and (out[1] == 0).all()
        assert (out[0, :, 3:] != 0).any()
    bias = torch.full((2, 1, 1, 9), float("-inf"))
    assert (fused_attention(q, k, v, bias) == 0).all()


def test_nan_in_q_contract():
    """One NaN in q: output row i is NaN (IEEE propagation, the reference's semantics) on the
    C++ kernel (every SIMD path here), the reference and the varlen form; every other row is
    finite and as without the NaN; a row whose every key is masked stays zeros. (torch SDPA's CPU flash
    kernel returns zeros for that row without a mask and NaN with one: no contract to copy.)"""
    from fastft.ops import attention_varlen_ref, fused_attention_varlen

    gen = torch.Generator().manual_seed(21)
    q, k, v = make_qkv(2, 3, 70, 70, 32, torch.float32, gen)
    clean = q.clone()
    q[0, 1, 5, 7] = float("nan")
    q[1, 2, 69, 0] = float("nan")
    mask = torch.ones(2, 70, dtype=torch.bool)
    mask[0, 60:] = False
    nan_rows = torch.zeros(2, 3, 70, dtype=torch.bool)
    nan_rows[0, 1, 5] = nan_rows[1, 2, 69] = True
    for isa in [None] + _isas():
        import os

        old = os.environ.pop("FASTFT_ATTN_ISA", None)
        if isa:
            os.environ["FASTFT_ATTN_ISA"] = isa
        try:
            for m, causal in ((None, False), (mask, True)):
                what = f"{cpu_backend()} mask={m is not None} causal={causal}"
                got, ref = fused_attention(q, k, v, m, causal), attention_ref(q, k, v, m, causal)
                for out in (got, ref):
                    assert torch.equal(out.isnan().all(-1), nan_rows), f"{what}: NaN rows differ"
                    assert int(out.isnan().sum()) == 2 * 32, f"{what}: NaN leaked into other rows"
                # (the kernel computes a NaN row again in double: other rows are its own, as
                # they are without the NaN)
                want = attention_ref(clean, k, v, m, causal)
                assert torch.equal(ref[~nan_rows], want[~nan_rows]), f"{what}: other rows changed"
                assert_close(got[~nan_rows], want[~nan_rows], *FP32_TOL, what=f"{what}: other rows")
            dead = mask.clone()
            dead[0] = False  # batch row 0 attends nothing: zeros, NaN in q or not
            for out in (fused_attention(q, k, v, dead), attention_ref(q, k, v, dead)):
                assert (out[0] == 0).all() and out[1, 2, 69].isnan().all()
            cu = torch.tensor([0, 70, 140], dtype=torch.int32)
            flat = [t.transpose(1, 2).reshape(140, 3, 32) for t in (q, k, v)]
            for out in (fused_attention_varlen(*flat, cu, cu, 70, 70), attention_varlen_ref(*flat, cu, cu, 70, 70)):
                assert torch.equal(out.isnan().all(-1), nan_rows.transpose(1, 2).reshape(140, 3))
        finally:
            os.environ.pop("FASTFT_ATTN_ISA", None)
            if old is not None:
                os.environ["FASTFT_ATTN_ISA"] = old


@pytest.mark.parametrize("isa", [None, "avx512", "avx2", "generic"])
def test_additive_ninf_masks_a_key_whose_score_is_nan(isa, monkeypatch):
    """An additive -inf masks its key even where the key's score is NaN or inf (NaN or inf in k
    there, padding left uninitialised: NaN + -inf and inf + -inf are NaN), as a bool mask does: the
    reference (float64 and in the input dtype) and the C++ op (each SIMD copy; None: the reference
    alone) give what they give with clean keys there, finite. The kernel masks such keys in its
    float32 pass already: no row is computed again in double for them."""
    if isa is not None:
        _use_isa(isa, monkeypatch)
    gen = torch.Generator().manual_seed(31)
    q, k, v = make_qkv(2, 3, 20, 70, 16, torch.float32, gen)
    keep = torch.ones(2, 70, dtype=torch.bool)
    keep[0, [3, 5, 50]] = False
    keep[1, 60:] = False
    dirty = k.clone()
    dirty[0, :, 3] = float("nan")
    dirty[0, :, 5] = float("inf")
    dirty[0, 1, 50, 7] = float("-inf")
    dirty[1, :, 60:] = float("nan")
    finite = torch.randn(2, 70, generator=gen)
    for bias in (torch.where(keep, 0.0, float("-inf")), torch.where(keep, finite, float("-inf"))[:, None, None, :]):
        for causal in (False, True):
            want = attention_ref(q.double(), k.double(), v.double(), bias, causal)
            outs = {
                "reference": attention_ref(q.double(), dirty.double(), v.double(), bias, causal),
                "reference fp32": attention_ref(q, dirty, v, bias, causal, upcast=False),
            }
            if isa is not None:
                outs[cpu_backend()] = fused_attention(q, dirty, v, bias, causal)
                flat = bias.reshape(2, 70).contiguous()
                outs[f"{isa} kernel"], again = _cpp_attention(q, dirty, v, None, flat, causal, isa)
                assert not again, f"{isa}: a masked key's NaN / inf score sent rows to the double path"
            for name, out in outs.items():
                what = f"{name} bias {tuple(bias.shape)} causal={causal}"
                assert torch.isfinite(out).all(), f"{what}: a masked key's NaN / inf score reached the output"
                assert_close(out, want, *FP32_TOL, what=what)


def test_empty_sequences():
    q, k, v = make_qkv(1, 2, 0, 5, 16, torch.float32, None)
    assert fused_attention(q, k, v).shape == (1, 2, 0, 16)
    q, k, v = make_qkv(1, 2, 4, 0, 16, torch.float32, None)
    assert (fused_attention(q, k, v) == 0).all()


def test_mask_shapes_are_equivalent():
    gen = torch.Generator().manual_seed(4)
    q, k, v = make_qkv(2, 3, 10, 12, 32, torch.float32, gen)
    keep = make_mask("arbitrary", 2, 12, gen)
    bias = torch.zeros(2, 12).masked_fill(~keep, float("-inf"))
    want = fused_attention(q, k, v, keep)
    for m in (keep[:, None, None, :], bias, bias[:, None, None, :]):
        assert_close(fused_attention(q, k, v, m), want, 0, 0, what=f"mask shape {tuple(m.shape)}")
    row = torch.randn(12, generator=gen)  # broadcast over batch
    assert_close(fused_attention(q, k, v, row), fused_attention(q, k, v, row.expand(2, 12)), 0, 0, "1-D bias")


def test_batch_one_masks_broadcast_over_the_batch():
    """A key padding mask of batch 1 (bool (1, seq_k); float (seq_k,), (1, seq_k), (1, 1, 1, seq_k))
    applies to every batch row, and a (batch, seq_k) one row by row: the reference and the op
    give what they give for the mask expanded to (batch, seq_k), and each batch row is the
    batch-1 call on that row alone; the reference's bool masks are torch SDPA's broadcast too."""
    gen = torch.Generator().manual_seed(14)
    b, sk = 3, 12
    q, k, v = make_qkv(b, 2, 10, sk, 16, torch.float64, gen)
    keep = torch.ones(1, sk, dtype=torch.bool)
    keep[0, [1, 4, 5, 11]] = False
    rows = torch.ones(b, sk, dtype=torch.bool)  # a different mask per batch row
    rows[0, 6:], rows[1, :3], rows[2, ::2] = False, False, False
    for m in (keep, rows):
        sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=m[:, None, None, :])
        assert_close(attention_ref(q, k, v, m), sdpa, 1e-10, 1e-10, what=f"ref vs sdpa, bool {tuple(m.shape)}")
    bias = torch.randn(1, sk, generator=gen, dtype=torch.float64).masked_fill(~keep, float("-inf"))
    bias_rows = torch.randn(b, sk, generator=gen, dtype=torch.float64).masked_fill(~rows, float("-inf"))
    for mask, full in (
        (keep, keep.expand(b, sk)),
        *((m, bias.expand(b, sk)) for m in (bias, bias[0], bias[:, None, None, :])),
        (rows, rows),
        (bias_rows[:, None, None, :], bias_rows),
    ):
        for dtype in (torch.float64, torch.float32):  # the op: reference (fp64), C++ kernel (fp32)
            qq, kk, vv = (t.to(dtype) for t in (q, k, v))
            m = mask if mask.dtype == torch.bool else mask.to(dtype)
            f = full if full.dtype == torch.bool else full.to(dtype)
            for fn in (attention_ref, fused_attention):
                what = f"{fn.__name__} {dtype} mask {mask.dtype} {tuple(mask.shape)}, batch {b}"
                for causal in (False, True):
                    out = fn(qq, kk, vv, m, causal)
                    assert_close(out, fn(qq, kk, vv, f.contiguous(), causal), 0, 0, what=f"{what}: expanded")
                    for i in range(b):
                        one = fn(qq[i : i + 1], kk[i : i + 1], vv[i : i + 1], f[i : i + 1], causal)
                        assert_close(out[i : i + 1], one, *FP32_TOL, what=f"{what}: batch row {i} alone")


def test_non_contiguous_inputs():
    gen = torch.Generator().manual_seed(5)
    # (batch, seq, heads, head_dim) projections viewed as (batch, heads, seq, head_dim)
    q, k, v = (torch.randn(2, n, 4, 32, generator=gen).transpose(1, 2) for n in (33, 40, 40))
    mask = make_mask("prefix", 2, 40, gen)
    assert not q.is_contiguous()
    assert_close(
        fused_attention(q, k, v, mask, True),
        attention_ref(q.double(), k.double(), v.double(), mask, True),
        *FP32_TOL,
        "non-contiguous",
    )


def test_scale_argument():
    gen = torch.Generator().manual_seed(6)
    q, k, v = make_qkv(1, 2, 20, 30, 64, torch.float32, gen)
    assert_close(
        fused_attention(q, k, v, scale=0.3),
        attention_ref(q.double(), k.double(), v.double(), scale=0.3),
        *FP32_TOL,
        "scale=0.3",
    )


def test_fallback_without_cpp(monkeypatch):
    gen = torch.Generator().manual_seed(7)
    q, k, v = make_qkv(2, 3, 33, 47, 48, torch.float32, gen)
    mask = make_mask("prefix_empty", 2, 47, gen)
    monkeypatch.setattr(native, "_C", None)
    assert cpu_backend() == "reference"
    out = fused_attention(q, k, v, mask, causal=True)
    assert torch.equal(out, attention_ref(q, k, v, mask, True))


def _good():
    return make_qkv(2, 3, 5, 6, 16, torch.float32, torch.Generator().manual_seed(8))


@pytest.mark.parametrize(
    "case,name",
    [
        (lambda q, k, v: (q[0], k, v, {}), "q"),
        (lambda q, k, v: ("q", k, v, {}), "q"),
        (lambda q, k, v: (q, k[:, :2], v, {}), "k"),
        (lambda q, k, v: (q, k[..., :8], v, {}), "k"),
        (lambda q, k, v: (q, k, v[:, :, :5], {}), "v"),
        (lambda q, k, v: (q, k.double(), v, {}), "k"),
        (lambda q, k, v: (q, k, v.half(), {}), "v"),
        (lambda q, k, v: (q.int(), k.int(), v.int(), {}), "q"),
        (
            lambda q, k, v: (q.new_zeros(2, 3, 5, 300), k.new_zeros(2, 3, 6, 300), v.new_zeros(2, 3, 6, 300), {}),
            "head_dim",
        ),
        (lambda q, k, v: (q, k, v, {"key_padding_mask": torch.ones(2, 5, dtype=torch.bool)}), "key_padding_mask"),
        (lambda q, k, v: (q, k, v, {"key_padding_mask": torch.ones(3, 6, dtype=torch.bool)}), "key_padding_mask"),
        (lambda q, k, v: (q, k, v, {"key_padding_mask": torch.ones(2, 6, dtype=torch.int64)}), "key_padding_mask"),
        (lambda q, k, v: (q, k, v, {"key_padding_mask": torch.zeros(2, 3, 1, 6)}), "key_padding_mask"),
        (lambda q, k, v: (q, k, v, {"key_padding_mask": [1, 1]}), "key_padding_mask"),
        (lambda q, k, v: (q, k, v, {"causal": "yes"}), "causal"),
        (lambda q, k, v: (q, k, v, {"scale": float("nan")}), "scale"),
    ],
)
def test_bad_inputs_raise_value_error_naming_argument(case, name):
    args = case(*_good())
    with pytest.raises(ValueError, match=name):
        fused_attention(*args[:3], **args[3])


def test_opcheck():
    gen = torch.Generator().manual_seed(9)
    q, k, v = make_qkv(2, 2, 9, 11, 16, torch.float32, gen)
    samples = [
        (q, k, v, None, False, 0.25),
        (q, k, v, make_mask("prefix_empty", 2, 11, gen), True, 0.25),
        (q, k, v, torch.randn(2, 11, generator=gen), False, 0.5),
        (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), make_mask("prefix", 2, 11, gen), True, 0.25),
    ]
    # every check (schema, autograd registration, fake tensor, AOT dispatch) on the richest
    # sample; the cheap ones on the rest (test_aot_dispatch_dynamic costs seconds per sample)
    torch.library.opcheck(_fused_attention_op, samples[-1])
    for args in samples[:-1]:
        torch.library.opcheck(_fused_attention_op, args, test_utils=("test_schema", "test_faketensor"))


def test_eager_cpu_calls_skip_only_unobserved_dispatch():
    """Plain eager CPU calls run the kernel without the op's dispatch, bit for bit the op's
    result; a dispatch mode, autograd, functorch and tracing still see (and use) the op."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from fastft.ops import fused_attention_varlen
    from fastft.ops.attention import eager_cpu

    class Seen(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    gen = torch.Generator().manual_seed(12)
    q, k, v = make_qkv(2, 3, 33, 40, 32, torch.float32, gen)
    mask = make_mask("prefix", 2, 40, gen)
    assert eager_cpu(q, k, v, mask)
    for m, causal in ((None, False), (mask, True)):
        assert torch.equal(fused_attention(q, k, v, m, causal), _fused_attention_op(q, k, v, m, causal, 32**-0.5))
    with Seen() as seen:
        fused_attention(q, k, v, mask)
    assert "fastft.fused_attention.default" in seen.ops
    flat = [t[0].transpose(0, 1) for t in (q, k, v)]
    cu = torch.tensor([0, 33], dtype=torch.int32)
    with Seen() as seen:
        fused_attention_varlen(flat[0], flat[1][:33], flat[2][:33], cu, cu, 33, 33)
    assert "fastft.fused_attention_varlen.default" in seen.ops
    qg = q.clone().requires_grad_()
    assert not eager_cpu(qg, k, v) and eager_cpu(qg.detach(), k, v)
    with torch.no_grad():
        assert eager_cpu(qg, k, v)
    inside = []
    torch.vmap(lambda x: inside.append(eager_cpu(x)) or x)(q)
    assert inside == [False]


def test_a_torch_without_the_probed_switches_keeps_the_registered_op(monkeypatch):
    from fastft.ops.attention import eager_cpu

    q = torch.zeros(1, 1, 2, 4)
    assert eager_cpu(q)
    monkeypatch.delattr(torch._C, "_len_torch_dispatch_stack")
    assert not eager_cpu(q)
    torch.testing.assert_close(fused_attention(q, q, q), attention_ref(q, q, q))


def test_backward_via_reference():
    gen = torch.Generator().manual_seed(10)
    q, k, v = make_qkv(1, 2, 6, 7, 8, torch.float64, gen)
    mask = make_mask("arbitrary", 1, 7, gen)
    grads = []
    for fn in (fused_attention, attention_ref):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        fn(qq, kk, vv, mask, True).square().sum().backward()
        grads.append((qq.grad, kk.grad, vv.grad))
    for a, b in zip(*grads):
        assert_close(a, b, 1e-12, 1e-10, "grad")


def test_torch_compile_and_export():
    gen = torch.Generator().manual_seed(11)
    q, k, v = make_qkv(1, 2, 8, 8, 16, torch.float32, gen)
    mask = make_mask("prefix", 1, 8, gen)
    want = fused_attention(q, k, v, mask, True)

    compiled = torch.compile(
        lambda a, b, c, m: fused_attention(a, b, c, m, causal=True), backend="aot_eager", fullgraph=True
    )
    assert_close(compiled(q, k, v, mask), want, 0, 0, "torch.compile")

    class Attn(torch.nn.Module):
        def forward(self, a, b, c, m):
            return fused_attention(a, b, c, m, causal=True)

    ep = torch.export.export(Attn(), (q, k, v, mask))
    assert "fastft.fused_attention" in str(ep.graph)
    assert_close(ep.module()(q, k, v, mask), want, 0, 0, "torch.export")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize(
    "b,h,sq,sk,d,mask_kind,causal",
    [
        (2, 4, 129, 129, 64, "prefix_empty", False),
        (1, 12, 512, 512, 128, "arbitrary", True),
        (3, 2, 7, 300, 48, "additive", True),
        (2, 3, 300, 64, 32, "additive_min", False),
    ],
)
def test_cuda_matches_reference(b, h, sq, sk, d, mask_kind, causal, dtype):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    gen = torch.Generator().manual_seed(12)
    q, k, v = (t.cuda() for t in make_qkv(b, h, sq, sk, d, torch.float32, gen))
    mask = make_mask(mask_kind, b, sk, gen)
    mask = mask.cuda() if mask is not None else None
    ref = attention_ref(q, k, v, mask, causal)  # fp32 inputs, computed in float64
    ql, kl, vl = q.to(dtype), k.to(dtype), v.to(dtype)
    out = fused_attention(ql, kl, vl, mask, causal)
    pt = attention_ref(ql, kl, vl, mask, causal, upcast=False)  # PyTorch in dtype
    err = (out.double() - ref.double()).abs().max().item()
    pt_err = (pt.double() - ref.double()).abs().max().item()
    assert not torch.isnan(out).any()
    atol = 1e-5 if dtype == torch.float32 else 1e-4
    assert err <= 2 * pt_err + atol, f"{dtype}: max err {err:.3e} > 2 x PyTorch's {pt_err:.3e} + {atol}"
    if mask_kind == "prefix_empty":
        assert (out[-1] == 0).all()


def test_reference_checks_its_arguments_and_scales_that_overflow_float32_are_refused():
    """attention_ref broadcast mismatched k/v and took causal='no' as True; a scale past what the
    kernels' float32 arithmetic holds made every row NaN; a float mask that requires grad got none."""
    from fastft.ops import attention_ref

    q = torch.randn(2, 3, 5, 16)
    for args, kwargs, match in (
        ((q, q[:, :1], q[:, :1]), {}, "k has shape"),
        ((q, q, q[..., :5]), {}, "v has shape"),
        ((q, q, q), {"causal": "no"}, "causal must be a bool"),
        ((q, q, q), {"scale": float("nan")}, "scale must be a finite number"),
    ):
        with pytest.raises(ValueError, match=match):
            attention_ref(*args, **kwargs)
    for fn in (attention_ref, fused_attention):
        with pytest.raises(ValueError, match="scale must be at most"):
            fn(q, q, q, scale=1e39)
    bias = torch.zeros(2, 5, requires_grad=True)
    with pytest.raises(ValueError, match="key_padding_mask requires grad"):
        fused_attention(q, q, q, bias)
    with torch.no_grad():
        fused_attention(q, q, q, bias)  # no gradient asked for: fine


def test_scale_bound_is_on_its_magnitude():
    """A scale past MAX_SCALE is refused whatever its sign (a huge negative scale overflows too)."""
    from fastft.ops.attention import MAX_SCALE

    q = torch.randn(1, 1, 2, 4)
    for bad in (2 * MAX_SCALE, -2 * MAX_SCALE):
        with pytest.raises(ValueError, match="scale must be at most"):
            fused_attention(q, q, q, scale=bad)


def test_op_checks_refuse_a_non_contiguous_mask():
    """The checks the C++ kernel's raw pointers rely on refuse a mask that is not contiguous."""
    from fastft.ops.attention import _check_op_args

    q = torch.randn(2, 1, 3, 4)
    mask = torch.ones(3, 2, dtype=torch.bool).t()  # (batch, seq_k), not contiguous
    assert not mask.is_contiguous()
    with pytest.raises(ValueError, match="contiguous"):
        _check_op_args(q, q, q, mask)
    _check_op_args(q, q, q, mask.contiguous())
