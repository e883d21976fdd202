"""fastft.ops.fused_attention_varlen (CPU: C++ kernel or reference) against the float64 reference.

Sequence lengths cover the odd shapes (1, 7, 113, 129, 512) and empty sequences; query rows
with no key (a sequence whose keys are all unused) must be zeros; causal and not; every dtype;
every SIMD path; the padded (batch, seq, heads, head_dim) layout through seqused against the
padded op with a key padding mask.
"""

from __future__ import annotations

import pytest
import torch

import fastft._native as native
from fastft.ops import attention_varlen_ref, cpu_backend, fused_attention, fused_attention_varlen
from fastft.ops.attention_varlen import _varlen_op

FP32_TOL = (1e-5, 1e-5)


def assert_close(out, ref, atol, rtol, what=""):
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    out64, ref64 = out.double(), ref.double()
    assert torch.equal(torch.isnan(out64), torch.isnan(ref64)), f"{what}: NaN pattern differs"
    out64, ref64 = out64.nan_to_num(), ref64.nan_to_num()
    err = (out64 - ref64).abs()
    bad = err > atol + rtol * ref64.abs()
    if bad.any():
        i = tuple(int(x) for x in torch.nonzero(err == err.max())[0])
        pytest.fail(
            f"{what}: {int(bad.sum())}/{bad.numel()} elements outside atol={atol} rtol={rtol}; "
            f"max abs diff {err.max().item():.3e} at index {i}: got {out64[i].item():.8g}, "
            f"expected {ref64[i].item():.8g}"
        )


def cu(lengths):
    return torch.tensor([0] + torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist(), dtype=torch.int32)


def check(lens_q, lens_k, heads, d, causal, dtype, seed=0, **kw):
    gen = torch.Generator().manual_seed(seed)
    cq, ck = cu(lens_q), cu(lens_k)
    q = torch.randn(int(cq[-1]), heads, d, generator=gen).to(dtype)
    k = torch.randn(int(ck[-1]), heads, d, generator=gen).to(dtype)
    v = torch.randn(int(ck[-1]), heads, d, generator=gen).to(dtype)
    mq, mk = max(lens_q, default=0), max(lens_k, default=0)
    out = fused_attention_varlen(q, k, v, cq, ck, mq, mk, causal, **kw)
    assert out.dtype == dtype and out.shape == q.shape
    what = f"{cpu_backend()} lens_q={lens_q} lens_k={lens_k} h={heads} d={d} causal={causal} {dtype}"
    ref64 = attention_varlen_ref(q.double(), k.double(), v.double(), cq, ck, mq, mk, causal, **kw)
    if dtype in (torch.float32, torch.float64):
        assert_close(out, ref64, *FP32_TOL, what=what)
    else:  # at most 2x PyTorch's own error against the fp64 reference
        ref_lp = attention_varlen_ref(q, k, v, cq, ck, mq, mk, causal, upcast=False, **kw)
        pt_err = (ref_lp.double() - ref64).abs().max().item()
        err = (out.double() - ref64).abs().max().item()
        assert err <= 2 * pt_err + 1e-5, f"{what}: max err {err:.3e} > 2 x PyTorch's {pt_err:.3e}"
    for b, n in enumerate(lens_k):  # a sequence without keys: its query rows are zeros
        if n == 0:
            assert (out[int(cq[b]) : int(cq[b + 1])] == 0).all(), f"{what}: rows of sequence {b} (no keys) not 0"
    return out


# (lens_q, lens_k, heads, head_dim, causal, dtype)
GRID = [
    ([1], [1], 1, 32, False, torch.float32),
    ([7, 113, 129], [7, 113, 129], 3, 64, False, torch.float32),
    ([7, 113, 129], [7, 113, 129], 3, 64, True, torch.float32),
    ([512, 1, 0, 129], [512, 1, 0, 129], 2, 32, True, torch.float32),
    ([129, 7], [113, 512], 2, 48, False, torch.float32),  # seq_q != seq_k per sequence
    ([113, 5], [7, 0], 2, 128, True, torch.float32),  # a sequence with no keys -> zeros
    ([7, 129], [7, 129], 2, 5, False, torch.float32),  # head_dim not a vector multiple
    ([113, 7], [113, 7], 2, 64, True, torch.float16),
    ([129, 1], [129, 1], 2, 32, False, torch.bfloat16),
    ([7, 113], [7, 113], 2, 48, True, torch.float64),
]


@pytest.mark.parametrize("lens_q,lens_k,heads,d,causal,dtype", GRID)
def test_varlen_matches_reference(lens_q, lens_k, heads, d, causal, dtype):
    check(lens_q, lens_k, heads, d, causal, dtype)


def _isas():
    c = native._C
    return list(c.attention_isas()) if c is not None and hasattr(c, "attention_isas") else []


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_varlen_every_simd_path(isa, monkeypatch):
    if isa not in _isas():
        pytest.skip(f"{isa} not available here (C++ extension missing or CPU lacks it)")
    monkeypatch.setenv("FASTFT_ATTN_ISA", isa)
    assert cpu_backend() == f"cpp:{isa}"
    check([7, 129, 1], [7, 129, 1], 3, 64, True, torch.float32)
    check([113, 0], [50, 3], 2, 17, False, torch.float32)


def test_varlen_padded_layout_matches_the_padded_op():
    """(batch, seq, heads, head_dim) viewed as packed tokens + seqused: padded keys are never
    read, padded query rows are zeros; valid rows equal fused_attention with a key padding mask.
    A sequence of length 0 (every key masked) is zeros too."""
    gen = torch.Generator().manual_seed(1)
    batch, seq, heads, d = 4, 129, 3, 32
    q, k, v = (torch.randn(batch, seq, heads, d, generator=gen) for _ in range(3))
    lengths = torch.tensor([129, 7, 0, 113], dtype=torch.int32)
    slots = torch.arange(0, batch * seq + 1, seq, dtype=torch.int32)
    k[1, 7:] = float("nan")  # padding is never read, so even NaN there cannot leak
    v[1, 7:] = float("nan")
    flat = [t.view(batch * seq, heads, d) for t in (q, k, v)]
    out = fused_attention_varlen(*flat, slots, slots, seq, seq, seqused_q=lengths, seqused_k=lengths)
    keep = torch.arange(seq)[None, :] < lengths[:, None]
    k2, v2 = k.nan_to_num(), v.nan_to_num()
    dense = fused_attention(q.transpose(1, 2), k2.transpose(1, 2), v2.transpose(1, 2), keep).transpose(1, 2)
    out = out.view(batch, seq, heads, d)
    assert_close(out[keep], dense[keep], *FP32_TOL, what="valid rows")
    assert (out[~keep] == 0).all(), "padded query rows must be zeros"


def test_varlen_seqused_q_and_k_differ_and_rows_before_the_first_sequence_are_zeros():
    """seqused_q and seqused_k are read each for its own side (every other test passes the same
    lengths for both, so reading seqused_q for the keys went unseen), and query rows before
    cu_seqlens_q[0] are outside every sequence: zeros, also when cu_seqlens_q ends at the last
    token (the output was then allocated uninitialised, as if every row were written). The
    memory the output gets is filled with NaN first, so a row left unwritten shows."""
    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(20, 2, 16, generator=gen) for _ in range(3))
    slots = torch.tensor([0, 10, 20], dtype=torch.int32)
    for used_q, used_k, causal in (([4, 7], [9, 2], False), ([10, 3], [1, 8], True)):
        uq, uk = torch.tensor(used_q, dtype=torch.int32), torch.tensor(used_k, dtype=torch.int32)
        out = fused_attention_varlen(q, k, v, slots, slots, 10, 10, causal, seqused_q=uq, seqused_k=uk)
        ref = attention_varlen_ref(q.double(), k.double(), v.double(), slots, slots, 10, 10, causal, None, uq, uk)
        assert_close(out, ref, *FP32_TOL, what=f"seqused_q={used_q} seqused_k={used_k} causal={causal}")
    late = torch.tensor([3, 10, 20], dtype=torch.int32)  # rows 0..2 belong to no sequence
    ref = attention_varlen_ref(q.double(), k.double(), v.double(), late, late, 10, 10)
    for _ in range(5):
        torch.full(q.shape, float("nan"))  # freed at once: the output's allocation may reuse it
        out = fused_attention_varlen(q, k, v, late, late, 10, 10)
        assert (out[:3] == 0).all(), "query rows before cu_seqlens_q[0] are not zeros"
        assert_close(out, ref, *FP32_TOL, what="cu_seqlens starting at 3")


def test_varlen_strided_inputs():
    """Token and head strides are free: (batch, heads, seq, head_dim) memory viewed as tokens."""
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 4, 70, 32, generator=gen) for _ in range(3))
    views = [t[0].transpose(0, 1) for t in (q, k, v)]  # (70, 4, 32), token stride 32
    assert not views[0].is_contiguous()
    c = cu([70])
    out = fused_attention_varlen(*views, c, c, 70, 70, True)
    ref = attention_varlen_ref(*(t.double() for t in views), c, c, 70, 70, True)
    assert_close(out, ref, *FP32_TOL, "strided")


def test_varlen_thread_count_does_not_change_result():
    gen = torch.Generator().manual_seed(3)
    c = cu([200, 150, 33])
    q, k, v = (torch.randn(383, 5, 64, generator=gen) for _ in range(3))
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fused_attention_varlen(q, k, v, c, c, 200, 200, True)
        torch.set_num_threads(2)
        two = fused_attention_varlen(q, k, v, c, c, 200, 200, True)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two)


def test_varlen_fallback_without_cpp(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    c = cu([33, 0, 12])
    q, k, v = (torch.randn(45, 3, 16, generator=gen) for _ in range(3))
    monkeypatch.setattr(native, "_C", None)
    assert cpu_backend() == "reference"
    out = fused_attention_varlen(q, k, v, c, c, 33, 33, True)
    assert torch.equal(out, attention_varlen_ref(q, k, v, c, c, 33, 33, True))


def _good():
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(10, 2, 16, generator=gen) for _ in range(3))
    return q, k, v, cu([4, 6]), cu([4, 6])


@pytest.mark.parametrize(
    "change,name",
    [
        (dict(q=torch.zeros(10, 16)), "q"),
        (dict(k=torch.zeros(10, 3, 16)), "k"),
        (dict(v=torch.zeros(9, 2, 16)), "v"),
        (dict(k=torch.zeros(10, 2, 16, dtype=torch.float64)), "k"),
        (dict(cu_seqlens_q=torch.tensor([0, 4, 10])), "cu_seqlens_q"),  # int64
        (dict(cu_seqlens_q=torch.tensor([0, 6, 4], dtype=torch.int32)), "cu_seqlens_q"),  # decreasing
        (dict(cu_seqlens_k=torch.tensor([0, 4, 11], dtype=torch.int32)), "cu_seqlens_k"),  # past the end
        (dict(cu_seqlens_k=torch.tensor([0, 10], dtype=torch.int32)), "cu_seqlens_k"),  # batch differs
        (dict(max_seqlen_q=5), "max_seqlen_q"),
        (dict(max_seqlen_k=None), "max_seqlen_k"),
        (dict(seqused_q=torch.tensor([4, 7], dtype=torch.int32)), "seqused_q"),
        (dict(seqused_k=torch.tensor([1], dtype=torch.int32)), "seqused_k"),
        (dict(causal="yes"), "causal"),
        (dict(scale=float("inf")), "scale"),
    ],
)
def test_varlen_bad_inputs_raise_value_error_naming_argument(change, name):
    q, k, v, cq, ck = _good()
    args = dict(q=q, k=k, v=v, cu_seqlens_q=cq, cu_seqlens_k=ck, max_seqlen_q=6, max_seqlen_k=6)
    args.update(change)
    with pytest.raises(ValueError, match=name):
        fused_attention_varlen(**args)


def test_varlen_opcheck():
    q, k, v, cq, ck = _good()
    used = torch.tensor([3, 6], dtype=torch.int32)
    # the AOT-dispatch checks are left out: the backward recomputes the per-sequence reference,
    # which slices by the values of cu_seqlens (data-dependent, no fake-tensor backward)
    torch.library.opcheck(
        _varlen_op,
        (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), cq, ck, 6, 6, True, 0.25, None, None),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )
    torch.library.opcheck(
        _varlen_op,
        (q.detach(), k.detach(), v.detach(), cq, ck, 6, 6, False, 0.5, used, used),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_varlen_backward_via_reference():
    gen = torch.Generator().manual_seed(6)
    c = cu([3, 5])
    q, k, v = (torch.randn(8, 2, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    grads = []
    for fn in (fused_attention_varlen, attention_varlen_ref):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        fn(qq, kk, vv, c, c, 5, 5, True).square().sum().backward()
        grads.append((qq.grad, kk.grad, vv.grad))
    for a, b in zip(*grads):
        assert_close(a, b, 1e-12, 1e-10, "grad")


def test_varlen_torch_compile():
    q, k, v, cq, ck = _good()
    want = fused_attention_varlen(q, k, v, cq, ck, 6, 6, True)
    compiled = torch.compile(
        lambda a, b, c: fused_attention_varlen(a, b, c, cq, ck, 6, 6, True), backend="aot_eager", fullgraph=True
    )
    assert_close(compiled(q, k, v), want, 0, 0, "torch.compile")


def test_the_registered_ops_check_what_the_kernel_reads():
    """A compiled graph or an exported program calls the ops directly, past the public wrappers:
    shapes and cu_seqlens out of range reached the C++ kernel's raw pointers (a segfault, or a
    silent read past v). The ops' CPU kernels check them again."""
    if cpu_backend() == "reference":
        pytest.skip("the C++ kernel is not built")
    t = torch.randn(10, 2, 16)
    for bad in ([0, 5, 13], [0, 10, 50_000_000], [-40_000_000, 10]):
        c = torch.tensor(bad, dtype=torch.int32)
        with pytest.raises(ValueError, match="cu_seqlens_q must start at >= 0"):
            torch.ops.fastft.fused_attention_varlen(t, t, t, c, c, 50_000_000, 50_000_000, False, 0.25, None, None)
    q, k = torch.randn(40, 2, 8, 16), torch.randn(1, 2, 8, 16)
    with pytest.raises(ValueError, match="k has shape"):
        torch.ops.fastft.fused_attention(q, k, k, None, False, 0.25)
    with pytest.raises(ValueError, match="mask must be a contiguous bool or float"):
        torch.ops.fastft.fused_attention(q, q, q, torch.ones(1, 1, dtype=torch.bool), False, 0.25)


def test_empty_varlen_inputs_are_zeros_and_meta_tensors_pass():
    """No query tokens, no key tokens or no heads: zeros of q's shape (the C++ entry refused the
    empty tensors' null pointers), as the padded op does; meta tensors go through (shape only)."""
    c = lambda *x: torch.tensor(x, dtype=torch.int32)  # noqa: E731
    for q, k, cq, ck, mq, mk in (
        (torch.randn(5, 2, 16), torch.randn(0, 2, 16), c(0, 5), c(0, 0), 5, 0),
        (torch.randn(0, 2, 16), torch.randn(4, 2, 16), c(0, 0), c(0, 4), 0, 4),
        (torch.randn(4, 0, 16), torch.randn(4, 0, 16), c(0, 4), c(0, 4), 4, 4),
    ):
        out = fused_attention_varlen(q, k, k, cq, ck, mq, mk)
        assert out.shape == q.shape and not out.any()
    m = torch.empty(10, 2, 16, device="meta")
    cm = torch.tensor([0, 4, 10], dtype=torch.int32, device="meta")
    assert fused_attention_varlen(m, m, m, cm, cm, 6, 6).device.type == "meta"


def test_varlen_cu_seqlens_decreasing_by_one_is_refused():
    """cu_seqlens must be non-decreasing: a step down of one (0, 5, 4) is refused, naming it."""
    q, k, v, cq, ck = _good()
    with pytest.raises(ValueError, match="cu_seqlens_q"):
        fused_attention_varlen(q, k, v, torch.tensor([0, 5, 4], dtype=torch.int32), ck, 6, 6)
