"""Triton fused-attention forward (kernels/attention.py) against the float64 reference.

Runs on CPU through the Triton interpreter. Interpreter mode is chosen when a function is
decorated with ``triton.jit``, and triton's own library functions (``tl.zeros``,
``tl.max``, ``tl.sum``...) are decorated when triton is imported. The ``kernel``
fixture therefore sets ``TRITON_INTERPRET=1``, swaps those library functions for
interpreted twins if triton was imported in compile mode (torch.compile or CUDA tests
in this process), and (re)imports the kernel module; on teardown it puts everything
back and drops the interpreted kernel module, so the rest of the process is untouched.
If that swap is impossible (another triton layout), the suite re-runs itself once in a
fresh subprocess with ``TRITON_INTERPRET=1``.

Shapes are tiny and the parametrisation curated: every value of every axis, not the
cartesian product. ``-m gpu`` runs the full grid on CUDA; ``-m slow`` compiles the kernel
for sm_90 on this CPU (needs triton's bundled ptxas).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("triton") is None and not sys.platform.startswith("linux"):
    pytest.skip("triton is not installed (a dependency on Linux only)", allow_module_level=True)

_MOD = "fastft.kernels.attention"
_ROOT = Path(__file__).resolve().parents[1]


def _interpreted_stdlib() -> bool:
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.standard.zeros, InterpretedFunction)


def _swap_in_interpreted_stdlib() -> list:
    """Replace every jit function of triton.language (and .standard, .math) by an
    interpreted twin, one twin per function so identity checks still hold. Returns
    (module, name, original) triples for the undo."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    twins, undo = {}, []
    for mod in (tl, tl.standard, tl.math):
        for name, obj in list(vars(mod).items()):
            if isinstance(obj, JITFunction):
                twin = twins.get(id(obj))
                if twin is None:
                    twin = twins[id(obj)] = InterpretedFunction(obj.fn)
                undo.append((mod, name, obj))
                setattr(mod, name, twin)
    return undo


def _drop_kernel_module():
    sys.modules.pop(_MOD, None)
    pkg = sys.modules.get("fastft.kernels")
    if pkg is not None and "attention" in vars(pkg):
        delattr(pkg, "attention")


def _load_kernel(interpret: bool):
    """Import (or reload) the kernel module with TRITON_INTERPRET set accordingly.
    The variable stays set: triton also reads it while running (lazy imports)."""
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    mod = sys.modules.get(_MOD)
    if mod is None:
        mod = importlib.import_module(_MOD)
    elif mod.INTERPRET != interpret:
        mod = importlib.reload(mod)
    assert mod.INTERPRET == interpret
    return mod


_CHILD = "FASTFT_TRITON_SUITE_CHILD"  # set in the subprocess: it never starts another


def _run_suite_in_subprocess(why: str):
    if os.environ.get(_CHILD):
        pytest.fail(f"the Triton kernel cannot be loaded in interpreter mode in a fresh process either ({why})")
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider", "-m", "not slow and not gpu"]
    proc = subprocess.run(
        cmd,
        env={**os.environ, "TRITON_INTERPRET": "1", _CHILD: "1"},
        cwd=_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"interpreter suite failed in a subprocess ({' '.join(cmd)}):\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
        )
    pytest.skip(
        "triton could not be switched to interpreter mode in this process; the "
        "interpreter suite ran in a fresh subprocess and passed"
    )


@pytest.fixture(scope="module")
def kernel():
    old_env = os.environ.get("TRITON_INTERPRET")
    undo = []
    try:
        import triton.language  # noqa: F401 - in whatever mode this process uses

        if not _interpreted_stdlib():
            undo = _swap_in_interpreted_stdlib()
        mod = _load_kernel(interpret=True)
    except (ImportError, AttributeError, TypeError) as exc:
        mod, why = None, f"{type(exc).__name__}: {exc}"
    try:
        if mod is None:
            _run_suite_in_subprocess(why)
        yield mod
    finally:
        for module, name, original in undo:
            setattr(module, name, original)
        if old_env is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old_env
        if (old_env or "0").strip().lower() not in ("1", "true", "on", "yes"):
            _drop_kernel_module()  # the next import builds it for the process's real mode


# ---------------------------------------------------------------- references


def _ref64(q, k, v, mask, causal, scale=None):
    """The library's reference on float64 inputs (so nothing is rounded to q.dtype)."""
    from fastft.ops import attention_ref

    return attention_ref(
        q.double(), k.double(), v.double(), key_padding_mask=mask, causal=causal, scale=scale, upcast=True
    )


def _torch_lowp(q, k, v, mask, causal):
    """The same reference computed by PyTorch in q's own dtype (its low-precision error)."""
    from fastft.ops import attention_ref

    return attention_ref(q, k, v, key_padding_mask=mask, causal=causal, upcast=False)


def _assert_close(out, ref, atol, rtol, what=""):
    """allclose that says where it differs (Liger's assert_verbose_allclose)."""
    out, ref = out.double(), ref.double()
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert not torch.isnan(out).any(), f"{what}: output has NaN at {torch.isnan(out).nonzero()[:5].tolist()}"
    err = (out - ref).abs()
    bad = err > atol + rtol * ref.abs()
    if bad.any():
        idx = bad.nonzero()[:5].tolist()
        vals = [(i, out[tuple(i)].item(), ref[tuple(i)].item()) for i in idx]
        pytest.fail(
            f"{what}: {int(bad.sum())}/{bad.numel()} elements differ (max abs err "
            f"{err.max().item():.3g}, atol {atol}, rtol {rtol}); first (index, out, ref): {vals}"
        )


def _assert_lowp(out, q, k, v, mask, causal, what=""):
    """flash-attention's rule: error vs the fp64 reference at most 2x that of PyTorch
    computing the same thing in the low-precision dtype, plus the dtype's rounding at
    the output's magnitude."""
    ref = _ref64(q, k, v, mask, causal)
    pt = _torch_lowp(q, k, v, mask, causal).double()
    rounding = (ref.to(q.dtype) + 0.3 - 0.3 - ref.to(q.dtype)).abs().max().item()
    err = (out.double() - ref).abs().max().item()
    pt_err = (pt - ref).abs().max().item()
    assert not torch.isnan(out).any(), f"{what}: NaN in output"
    assert err <= 2 * pt_err + 2 * rounding + 1e-5, (
        f"{what}: max abs err {err:.3g} > 2 x torch {q.dtype} err {pt_err:.3g} + 2 x rounding {rounding:.3g}"
    )


# ---------------------------------------------------------------- inputs

_ATOL = {torch.float32: 1e-5}
_RTOL = {torch.float32: 1e-5}


def _inputs(batch, heads, seq_q, seq_k, head_dim, dtype=torch.float32, mask=None, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, seq_q, head_dim, generator=g).to(device, dtype)
    k = torch.randn(batch, heads, seq_k, head_dim, generator=g).to(device, dtype)
    v = torch.randn(batch, heads, seq_k, head_dim, generator=g).to(device, dtype)
    if mask is None:
        key_padding_mask = None
    elif mask == "lengths":  # right padding; batch row 0 attends nothing (when batch > 1)
        lengths = torch.randint(1, seq_k + 1, (batch,), generator=g)
        if batch > 1:
            lengths[0] = 0
        key_padding_mask = torch.arange(seq_k)[None, :] < lengths[:, None]
    elif mask == "left":  # left padding
        lengths = torch.randint(1, seq_k + 1, (batch,), generator=g)
        key_padding_mask = torch.arange(seq_k)[None, :] >= (seq_k - lengths)[:, None]
    elif mask == "random":  # holes anywhere, keep >= 1 key per row
        key_padding_mask = torch.rand(batch, seq_k, generator=g) < 0.6
        key_padding_mask[:, torch.randint(0, seq_k, (1,), generator=g)] = True
    elif mask == "none_attended":
        key_padding_mask = torch.zeros(batch, seq_k, dtype=torch.bool)
    else:
        raise ValueError(mask)
    if key_padding_mask is not None:
        key_padding_mask = key_padding_mask.to(device)
    return q, k, v, key_padding_mask


def _check(kernel, batch, heads, seq_q, seq_k, head_dim, mask=None, causal=False, dtype=torch.float32, **kw):
    q, k, v, m = _inputs(batch, heads, seq_q, seq_k, head_dim, dtype, mask)
    out = kernel.attention_fwd(q, k, v, m, causal=causal, **kw)
    what = f"B{batch} H{heads} Sq{seq_q} Sk{seq_k} D{head_dim} mask={mask} causal={causal} {dtype}"
    assert out.dtype == dtype and out.shape == q.shape, what
    if dtype == torch.float32:
        _assert_close(out, _ref64(q, k, v, m, causal), _ATOL[dtype], _RTOL[dtype], what)
    else:
        _assert_lowp(out, q, k, v, m, causal, what)
    return out, m


# ---------------------------------------------------------------- interpreter tests


# (batch, heads, seq_q, seq_k, mask, causal) per head_dim: every head_dim, varied rest
@pytest.mark.parametrize(
    "head_dim,batch,heads,seq_q,seq_k,mask,causal",
    [
        (16, 1, 1, 7, 7, None, False),
        (32, 3, 1, 64, 64, "lengths", True),
        (48, 1, 3, 33, 40, "random", False),
        (64, 3, 3, 7, 129, "lengths", False),
        (80, 1, 3, 129, 7, None, True),
        (96, 3, 1, 1, 64, "left", True),
        (128, 1, 1, 40, 33, "lengths", True),
    ],
)
def test_head_dims(kernel, head_dim, batch, heads, seq_q, seq_k, mask, causal):
    _check(kernel, batch, heads, seq_q, seq_k, head_dim, mask, causal)


@pytest.mark.parametrize(
    "seq_q,seq_k", [(1, 1), (7, 7), (64, 64), (129, 129), (1, 129), (129, 1), (7, 64), (64, 7), (129, 33)]
)
@pytest.mark.parametrize("causal", [False, True])
def test_seq_lengths(kernel, seq_q, seq_k, causal):
    _check(kernel, 1, 1, seq_q, seq_k, 32, None, causal)


@pytest.mark.parametrize("mask", ["lengths", "left", "random", "none_attended"])
@pytest.mark.parametrize("causal", [False, True])
def test_key_padding_mask(kernel, mask, causal):
    out, m = _check(kernel, 3, 3, 37, 70, 32, mask, causal)
    dead = ~m.any(dim=-1)  # batch rows with no attended key -> exactly zero output
    if dead.any():
        assert (out[dead] == 0).all()
    if mask in ("lengths", "none_attended"):
        assert dead[0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "batch,heads,seq_q,seq_k,head_dim,mask,causal",
    [
        (3, 1, 129, 129, 64, "lengths", True),
        (1, 3, 7, 64, 80, None, False),
        (3, 3, 64, 33, 128, "random", True),
        (1, 1, 1, 7, 16, "left", False),
    ],
)
def test_low_precision(kernel, dtype, batch, heads, seq_q, seq_k, head_dim, mask, causal):
    _check(kernel, batch, heads, seq_q, seq_k, head_dim, mask, causal, dtype=dtype)


@pytest.mark.parametrize("block_m,block_n", [(16, 16), (16, 64), (64, 16), (32, 128)])
@pytest.mark.parametrize("causal", [False, True])
def test_tile_sizes(kernel, block_m, block_n, causal):
    # the causal diagonal split and the leading-padding skip with tiles of any shape
    _check(kernel, 2, 1, 70, 45, 48, "left", causal, block_m=block_m, block_n=block_n)
    _check(kernel, 1, 1, 45, 70, 48, None, causal, block_m=block_m, block_n=block_n)


def test_strided_inputs(kernel):
    batch, seq, heads, head_dim = 2, 29, 2, 48
    g = torch.Generator().manual_seed(1)
    # a packed (batch, seq, 3 * hidden) projection viewed as (batch, heads, seq, head_dim)
    qkv = torch.randn(batch, seq, 3, heads, head_dim + 8, generator=g)[..., :head_dim]
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous() and not k.is_contiguous()
    mask = (torch.rand(batch, 2 * seq, generator=g) < 0.7)[:, ::2]  # strided bool mask
    mask[:, 0] = True
    for causal in (False, True):
        out = kernel.attention_fwd(q, k, v, mask, causal=causal)
        _assert_close(out, _ref64(q, k, v, mask, causal), 1e-5, 1e-5, f"strided causal={causal}")
        contig = kernel.attention_fwd(q.contiguous(), k.contiguous(), v.contiguous(), mask.contiguous(), causal)
        torch.testing.assert_close(out, contig, atol=1e-6, rtol=1e-6)


def test_scale(kernel):
    q, k, v, m = _inputs(3, 1, 20, 30, 64, mask="lengths")
    for scale in (0.05, 1.0, 0.3):
        out = kernel.attention_fwd(q, k, v, m, causal=True, scale=scale)
        _assert_close(out, _ref64(q, k, v, m, True, scale=scale), 1e-5, 1e-5, f"scale={scale}")


def test_large_logits_no_overflow(kernel):
    # online softmax must subtract the running max: logits ~ +-1e3 would overflow exp
    q, k, v, m = _inputs(1, 3, 40, 70, 32, mask="random")
    out = kernel.attention_fwd(q * 30, k * 30, v, m)
    _assert_close(out, _ref64(q * 30, k * 30, v, m, False), 1e-4, 1e-4, "large logits")


def test_empty_sequences(kernel):
    q, k, v, _ = _inputs(2, 3, 5, 0, 32)
    out = kernel.attention_fwd(q, k, v, torch.zeros(2, 0, dtype=torch.bool))
    assert out.shape == (2, 3, 5, 32) and (out == 0).all()
    q, k, v, _ = _inputs(2, 3, 0, 5, 32)
    assert kernel.attention_fwd(q, k, v).shape == (2, 3, 0, 32)


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(q=torch.zeros(2, 3, 4)), "q must be a 4-D"),
        (dict(k=torch.zeros(2, 3, 5, 16)), "head_dim"),
        (dict(v=torch.zeros(2, 3, 6, 32)), "k seq"),
        (dict(k=torch.zeros(1, 3, 5, 32)), "batch and heads"),
        (dict(v=torch.zeros(2, 3, 5, 32, dtype=torch.float16)), "share a dtype"),
        (dict(q=torch.zeros(2, 3, 4, 32, dtype=torch.float64)), "q has dtype"),
        (dict(key_padding_mask=torch.ones(2, 5)), "must be bool"),
        (dict(key_padding_mask=torch.ones(2, 4, dtype=torch.bool)), r"\(batch, seq_k\)"),
        (dict(q=torch.zeros(2, 3, 4, 512), k=torch.zeros(2, 3, 5, 512), v=torch.zeros(2, 3, 5, 512)), "head_dim"),
        (dict(num_warps=4), "give block_m or block_n"),  # launch settings need a fixed tile
    ],
)
def test_argument_checks(kernel, bad, match):
    args = dict(
        q=torch.zeros(2, 3, 4, 32), k=torch.zeros(2, 3, 5, 32), v=torch.zeros(2, 3, 5, 32), key_padding_mask=None
    )
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        kernel.attention_fwd(**args)


def test_import_without_triton(monkeypatch):
    """``import fastft`` never needs Triton; the kernel module says clearly what is missing."""
    monkeypatch.setitem(sys.modules, "triton", None)  # import triton -> ImportError
    monkeypatch.delitem(sys.modules, _MOD, raising=False)
    import fastft
    import fastft.kernels  # noqa: F401

    assert fastft.__version__
    with pytest.raises(ImportError, match="needs Triton"):
        importlib.import_module(_MOD)
    monkeypatch.delitem(sys.modules, _MOD, raising=False)


# ---------------------------------------------------------------- GPU (-m gpu)

_GPU_SEQS = [1, 7, 64, 129, 512]


@pytest.fixture(scope="module")
def gpu_kernel():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    import triton.language  # noqa: F401

    if _interpreted_stdlib():
        pytest.skip("triton was imported in interpreter mode (TRITON_INTERPRET=1) in this process")
    old_env = os.environ.get("TRITON_INTERPRET")
    mod = _load_kernel(interpret=False)
    yield mod
    if old_env is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = old_env


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("head_dim", [32, 48, 64, 128])
@pytest.mark.parametrize("batch,heads", [(1, 1), (1, 12), (3, 1), (3, 12)])
def test_gpu_grid(gpu_kernel, dtype, head_dim, batch, heads):
    """Full grid on CUDA with a fixed tile (one compile per specialisation): seq {1..512}
    (also seq_q != seq_k), masks, causal."""
    for seq_q in _GPU_SEQS:
        for seq_k in sorted({seq_q, 129}):
            for mask in (None, "lengths", "random"):
                for causal in (False, True):
                    q, k, v, m = _inputs(batch, heads, seq_q, seq_k, head_dim, dtype, mask, device="cuda")
                    out = gpu_kernel.attention_fwd(q, k, v, m, causal=causal, block_m=64, block_n=32)
                    what = f"B{batch} H{heads} Sq{seq_q} Sk{seq_k} D{head_dim} mask={mask} causal={causal} {dtype}"
                    if dtype == torch.float32:
                        _assert_close(out, _ref64(q, k, v, m, causal), 1e-5, 1e-5, what)
                    else:
                        _assert_lowp(out, q, k, v, m, causal, what)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "head_dim,seq_q,seq_k,mask,causal",
    [
        (64, 512, 512, None, False),
        (64, 129, 512, "lengths", True),
        (128, 512, 129, "random", False),
        (128, 1000, 1000, "lengths", True),
        (48, 300, 300, None, True),
    ],
)
def test_gpu_autotuned(gpu_kernel, dtype, head_dim, seq_q, seq_k, mask, causal):
    """The default (autotuned) path."""
    q, k, v, m = _inputs(3, 12, seq_q, seq_k, head_dim, dtype, mask, device="cuda")
    out = gpu_kernel.attention_fwd(q, k, v, m, causal=causal)
    _assert_lowp(out, q, k, v, m, causal, f"autotuned D{head_dim} Sq{seq_q} Sk{seq_k} {mask} {causal} {dtype}")


@pytest.mark.gpu
def test_gpu_tf32_flag(gpu_kernel):
    q, k, v, m = _inputs(2, 4, 257, 257, 64, torch.float32, "lengths", device="cuda")
    ref = _ref64(q, k, v, m, False)
    exact = gpu_kernel.attention_fwd(q, k, v, m)
    _assert_close(exact, ref, 1e-5, 1e-5, "fp32 ieee")
    tf32 = gpu_kernel.attention_fwd(q, k, v, m, allow_tf32=True)
    _assert_close(tf32, ref, 5e-3, 5e-3, "fp32 tf32")


# ---------------------------------------------------------------- varlen and the NaN contract


def _cu(lengths):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)


@pytest.mark.parametrize(
    "lens_q,lens_k,head_dim,causal,dtype,used",
    [
        ([1, 7, 40, 0, 33], [1, 7, 40, 0, 33], 32, False, torch.float32, False),
        ([1, 7, 40, 0, 33], [1, 7, 40, 0, 33], 32, True, torch.float32, False),
        ([33, 7], [7, 0], 20, True, torch.float32, False),  # a sequence without keys -> zeros
        ([40, 7], [40, 7], 64, False, torch.float16, True),  # seqused (padded layout)
        ([17, 40], [40, 17], 48, True, torch.bfloat16, False),
        ([17, 40], [40, 17], 20, False, torch.float32, True),  # seqused_q != seqused_k: each read for its side
    ],
)
def test_varlen(kernel, lens_q, lens_k, head_dim, causal, dtype, used):
    from fastft.ops import attention_varlen_ref

    g = torch.Generator().manual_seed(7)
    cq, ck = _cu(lens_q), _cu(lens_k)
    q = torch.randn(int(cq[-1]), 2, head_dim, generator=g).to(dtype)
    k = torch.randn(int(ck[-1]), 2, head_dim, generator=g).to(dtype)
    v = torch.randn(int(ck[-1]), 2, head_dim, generator=g).to(dtype)
    uq = uk = None
    if used:
        uq = torch.tensor([n // 2 + 1 for n in lens_q], dtype=torch.int32)
        uk = torch.tensor([n // 2 + 1 for n in lens_k], dtype=torch.int32)
    args = (cq, ck, max(lens_q), max(lens_k), causal, None, uq, uk)
    out = kernel.attention_varlen_fwd(q, k, v, *args)
    ref = attention_varlen_ref(q.double(), k.double(), v.double(), *args)
    what = f"varlen {lens_q} {lens_k} D{head_dim} causal={causal} {dtype} used={used}"
    if dtype == torch.float32:
        _assert_close(out, ref, 1e-5, 1e-5, what)
    else:
        pt = attention_varlen_ref(q, k, v, *args, upcast=False).double()
        err, pt_err = (out.double() - ref).abs().max().item(), (pt - ref).abs().max().item()
        assert err <= 2 * pt_err + 1e-3, f"{what}: err {err:.3g} > 2 x torch {pt_err:.3g}"
    for b, n in enumerate(lens_k):
        if n == 0:
            assert (out[int(cq[b]) : int(cq[b + 1])] == 0).all(), f"{what}: sequence {b} without keys not 0"


def test_nan_in_q_contract_triton(kernel):
    """The op's NaN contract on the Triton kernel: a NaN in q row i makes output row i NaN
    (IEEE, as the reference); other rows stay finite; a fully masked row stays zeros."""
    q, k, v, _ = _inputs(2, 2, 40, 40, 32)
    q[0, 1, 3, 5] = float("nan")
    q[1, 0, 7, 0] = float("nan")
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1] = False  # batch row 1 attends nothing: zeros even with NaN in q
    for m in (None, mask):
        out = kernel.attention_fwd(q, k, v, m)
        assert out[0, 1, 3].isnan().all()
        assert int(out.isnan().sum()) == (32 if m is not None else 64)
        if m is not None:
            assert (out[1] == 0).all()
    cu = _cu([40, 40])
    flat = [t.transpose(1, 2).reshape(80, 2, 32) for t in (q, k, v)]
    out = kernel.attention_varlen_fwd(*flat, cu, cu, 40, 40).view(2, 40, 2, 32)
    assert out[0, 3, 1].isnan().all() and out[1, 7, 0].isnan().all() and int(out.isnan().sum()) == 64


@pytest.mark.parametrize("pad", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("head_dim", [32, 20])
def test_masked_nonfinite_values_triton(kernel, pad, head_dim):
    """A masked key's value never reaches the output on Triton either: inf / NaN padding under
    a key padding mask (uninitialised memory, fp16 overflow) leaves every row the reference's,
    finite, in the key tile it shares with attended keys too; an attended one still reaches."""
    from fastft.ops import attention_ref

    q, k, v, _ = _inputs(2, 2, 40, 40, head_dim)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[0, 35:] = False  # padding inside the last key tile of batch row 0
    mask[1, ::3] = False  # holes in every tile of batch row 1
    v = v.clone()
    v[0, :, 35:] = pad
    v[1, :, ::3] = pad
    out = kernel.attention_fwd(q, k, v, mask)
    ref = attention_ref(q.double(), k.double(), v.double(), mask)
    assert torch.isfinite(ref).all()
    _assert_close(out, ref, 1e-5, 1e-5, f"masked values {pad} D{head_dim}")
    mask[0, 36] = True  # now attended: it reaches its rows, as in the reference
    out = kernel.attention_fwd(q, k, v, mask)
    assert not torch.isfinite(out[0]).all() and torch.isfinite(out[1]).all()


# ---------------------------------------------------------------- no GPU needed, other checks


def test_bench_without_cuda_exits_cleanly(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    out = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, str(_ROOT / "bench" / "bench_attention_gpu.py"), "--out-dir", str(out)],
        env=env,
        cwd=_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("no CUDA device: "), lines
    assert not out.exists()


_AOT_SCRIPT = r"""
import os, sys
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import fastft.kernels.attention as A

jit = A._attn_fwd_fixed.fn
names = jit.arg_names
def compile_case(dt, head_dim, causal, has_mask, bm, bn, prec, even_n, warps, stages, varlen=False):
    sig, const = {}, {}
    for n in names:
        if n in ("Q", "K", "V", "O"): sig[n] = "*" + dt
        elif n == "Mask": sig[n] = "*u8" if has_mask else "*" + dt
        elif n in ("KvStart", "KvEnd"): sig[n] = "*i32" if has_mask else "*" + dt
        elif n in ("CuQ", "CuK", "UsedQ", "UsedK"): sig[n] = "*i32" if varlen else "*" + dt
        elif n == "qk_scale": sig[n] = "fp32"
        elif n in ("stride_qd", "stride_kd", "stride_vd", "stride_od", "stride_mn"):
            sig[n], const[n] = "constexpr", 1  # what the JIT specialises for contiguous rows
        elif n[0].isupper(): sig[n] = "constexpr"
        else: sig[n] = "i32"
    bd = max(16, triton.next_power_of_2(head_dim))
    const.update(IS_CAUSAL=causal, HAS_MASK=has_mask, INPUT_PRECISION=prec, BLOCK_M=bm, BLOCK_N=bn,
                 BLOCK_D=bd, EVEN_N=even_n, EVEN_D=bd == head_dim, UPCAST_DOT=False,
                 VARLEN=varlen, USED_Q=varlen, USED_K=False)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names
             if sig[n].startswith("*") or (n.startswith("stride") and sig[n] == "i32")}
    k = triton.compile(ASTSource(jit, sig, const, attrs), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": warps, "num_stages": stages})
    ttgir = k.asm["ttgir"]
    assert "warp_group_dot" in ttgir or prec == "ieee", "fp16/bf16 dots should use wgmma on sm_90"
    assert k.metadata.shared <= 232448, f"shared memory {k.metadata.shared} over the sm_90 limit"
    print(dt, head_dim, causal, has_mask, "ok", k.metadata.shared, flush=True)

compile_case("fp16", 64, False, True, 128, 64, None, True, 8, 3)
compile_case("bf16", 80, True, False, 128, 128, None, False, 8, 2)
compile_case("fp16", 128, True, True, 64, 64, None, True, 4, 4)
compile_case("fp32", 48, True, True, 64, 32, "ieee", False, 4, 3)
compile_case("fp16", 64, True, False, 128, 64, None, False, 8, 3, varlen=True)
"""


@pytest.mark.slow
def test_compiles_for_sm90():
    """Lower the kernel to a cubin for H100 (sm_90) on this CPU: catches code-generation
    errors the interpreter cannot (needs triton's NVIDIA backend and bundled ptxas)."""
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except ImportError:
        pytest.skip("triton has no NVIDIA backend here")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run(
        [sys.executable, "-c", _AOT_SCRIPT], env=env, cwd=_ROOT, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert proc.stdout.count(" ok ") == 5, proc.stdout


def test_the_cuda_ops_check_what_the_kernel_trusts(kernel):
    """The kernel trusts cu_seqlens, seqused and max_seqlen (its grid and its pointers) and
    addresses a sequence's rows with 32-bit offsets: the varlen op on CUDA ran unchecked when called
    past the public wrapper (torch.compile, torch.export: a segfault in the interpreter, an illegal
    address on a GPU), and long sequences wrapped their offsets. The op as CUDA runs it is called
    here on CPU tensors in interpreter mode."""
    from fastft.ops.attention_varlen import _varlen_cuda

    q = k = v = torch.randn(8, 2, 16)
    cu = _cu([8])
    for cu_k, max_k, used_k, message in (
        (torch.tensor([0, 4_000_000], dtype=torch.int32), 4_000_000, None, "cu_seqlens_k must start at >= 0"),
        (cu, 8, torch.tensor([100_000], dtype=torch.int32), "seqused_k must be within"),
        (cu, 3, None, "max_seqlen_k must be an int >= the longest sequence"),
    ):
        with pytest.raises(ValueError, match=message):
            _varlen_cuda(q, k, v, cu, cu_k, 8, max_k, False, 0.25, None, used_k)
    big = torch.empty(1, device="meta").as_strided((1, 1, 40, 64), (0, 0, 2**26, 1))  # row 39 at 2.6e9
    with pytest.raises(ValueError, match="past the kernel's 32-bit offsets"):
        kernel._check_offsets("attention_fwd", 40, 40, (("q", big, 2),), 64)
    kernel._check_offsets("attention_fwd", 30, 30, (("q", big, 2),), 64)  # row 29 at 1.9e9: fine
    many = _cu([1] * 65_536)
    one = torch.randn(65_536, 1, 16)
    with pytest.raises(ValueError, match="65536 sequences in one call; at most 65535"):
        kernel.attention_varlen_fwd(one, one, one, many, many, 1, 1)
