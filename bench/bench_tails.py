"""Where the p99 of the ORT serving path comes from: one exported model, session variants, interleaved.

    python bench/bench_tails.py --model runs/bench-teacher-onnx --seq 512 --calls 300
    python bench/bench_tails.py --model DIR --file model_int8.onnx --result bench/results/tails_int8.json

Each variant is one ``onnxruntime.InferenceSession`` on the same file (batch 1, the same
threads), called the way ``fastft.load(dir).predict`` calls it, in blocks that rotate between
variants so load from other processes hits them alike. Variants isolate one suspect each:

- ``default``: fastft's serving options (spinning off, arena on, memory pattern on) on the file
  as it is, ORT's basic graph optimisations.
- ``served``: the session ``fastft.load`` serves: all graph optimisations, and the file's
  attention, residual LayerNorm and GELU nodes on fastft's kernels inside ONNX Runtime
  (``fastft.runtime.ort.served_session`` with ``ort_attention="fastft"``: an error where this
  install cannot; the result's ``fastft_ops`` counts the nodes per variant).
- ``served-ort``: the same with ``ort_attention="onnxruntime"`` (ORT's own kernels throughout).
- ``served-own-pool``: ``served`` with fastft's kernels on fastft's own thread pool
  (``FASTFT_OP_POOL=fastft``) instead of the session's intra-op threads.
- ``served-dyn-block``: ``served`` with ``session.dynamic_block_base=4`` (below).
- ``served-spin``: ``served`` with intra-op spinning on (``fastft.load(..., spinning=True)``).
- ``dyn-block``: ``session.dynamic_block_base=4``: parallel loops hand out shrinking blocks
  on demand instead of one fixed share per thread, so a thread on a slower core takes less.
- ``spin``: intra-op spinning on (thread wake-ups between parallel sections).
- ``no-arena``: the CPU memory arena off (every call allocates from the system).
- ``no-pattern``: memory-pattern planning off.
- ``gc-frozen``: Python's garbage collector frozen and disabled around the timed calls.
- ``bound``: inputs and output pre-allocated once and bound with IOBinding (no per-call
  allocation of feeds or the result array).
- ``pinned``: the intra-op worker threads pinned to cores (``session.intra_op_thread_affinities``).
- ``threads-1``: one intra-op thread (no worker wake-ups or barriers at all; slower median).
- ``gemm-floor``: not ORT: one fixed fp32 matrix product on one thread (torch), the machine's
  own noise floor. If its p99/p50 matches the sessions', the tail is the machine's (other
  tenants, frequency), not something a session setting can remove.
- ``gemm-floor-threads``: not ORT: a fixed chain of six (seq, 768) x (768, 768) fp32 products on
  ``--threads`` threads (torch, OpenMP passive), each product a parallel section that ends when
  its slowest thread does, as each of a session's nodes does: the floor of parallel work here.
  A thread preempted by anything else on the machine holds its partner at the section's end.

The result holds p50/p90/p99/max and p99/p50 for each variant, and the share of the calls
slower than 1.2x the variant's median.

Each call also records what else the machine did meanwhile, so a slow call can be told apart
from a slow session: the process's own CPU time (all its threads), the machine's steal time
(``/proc/stat``: time the hypervisor gave this VM's vCPUs to someone else), the machine's busy
time spent outside this process, and this process's involuntary context switches. A call is
"undisturbed" when no steal and no outside work was counted during it; the result gives the
quantiles over those calls too, and how many of the calls slower than 1.2x the median were
disturbed. Tick counters have the kernel's USER_HZ resolution (10 ms).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see fastft bench)

import numpy as np  # noqa: E402

from fastft.bench.runner import own_op_pool, quantiles, random_feeds, write_result

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = (
    "default",
    "served",
    "served-ort",
    "served-own-pool",
    "served-dyn-block",
    "served-spin",
    "dyn-block",
    "spin",
    "no-arena",
    "no-pattern",
    "gc-frozen",
    "bound",
    "pinned",
    "threads-1",
    "threads-3",
    "threads-4",
    "gemm-floor",
    "gemm-floor-threads",
)


SWAPS: dict[str, dict] = {}  # served variants: their nodes on fastft's kernels, per op


def make_session(path: Path, variant: str, threads: int):
    import onnxruntime as ort

    from fastft.runtime.session import session_options

    if variant.startswith("threads-"):
        threads = int(variant.split("-")[1])
    if variant.startswith("served"):
        from fastft.runtime.ort import served_session

        # fastft's ops or an error (auto would fall back to ORT's own kernels with a warning)
        mode = "onnxruntime" if variant == "served-ort" else "fastft"
        opts = session_options(threads=threads, spinning=variant == "served-spin", level="all")
        if variant == "served-dyn-block":
            opts.add_session_config_entry("session.dynamic_block_base", "4")
        with own_op_pool() if variant == "served-own-pool" else contextlib.nullcontext():
            sess, swaps = served_session(path, opts, ort_attention=mode)
        SWAPS[variant] = swaps._asdict()
        return sess
    opts = session_options(threads=threads, spinning=(variant == "spin"), level="basic")
    if variant == "no-arena":
        opts.enable_cpu_mem_arena = False
    if variant == "no-pattern":
        opts.enable_mem_pattern = False
    if variant == "dyn-block":
        opts.add_session_config_entry("session.dynamic_block_base", "4")
    if variant == "pinned" and threads > 1:
        # the caller thread is worker 0; pin workers 1..n-1 to cores 1..n-1 (1-based ids)
        opts.add_session_config_entry(
            "session.intra_op_thread_affinities", ";".join(str(i + 1) for i in range(1, threads))
        )
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _ticks() -> tuple[int, int]:
    """(steal, busy) jiffies of the whole machine from /proc/stat (0, 0 where it is unreadable)."""
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()
    except OSError:
        return 0, 0
    vals = [int(x) for x in parts[1:]]
    # user nice system idle iowait irq softirq steal ...
    busy = vals[0] + vals[1] + vals[2] + vals[5] + vals[6]
    steal = vals[7] if len(vals) > 7 else 0
    return steal, busy


def _own_ticks() -> int:
    """This process's user + system jiffies (all threads)."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def speed_probe():
    """Fixed work that tracks the machine's speed just before a call: a ~2 ms single-thread
    matrix product pinned to each core in turn, then on both cores at once (two threads; when
    the host runs the two vCPUs on one physical core, or slows them when both are busy, the
    pair takes longer than either alone), and a 32 MiB copy (memory bandwidth shared with other
    tenants). Returns ms for each: ``core<i>_mm_ms``..., ``both_mm_ms`` (the slower of the
    pair), ``copy_32mib_ms``."""
    import threading

    import torch

    torch.set_num_threads(1)
    mats = [(torch.randn(256, 256), torch.randn(256, 256)) for _ in range(2)]
    src = np.ones(8 << 20, dtype=np.float32)
    dst = np.empty_like(src)
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pair = len(cores) > 1

    def mm(i: int = 0) -> float:
        a, b = mats[i]
        t0 = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        return (time.perf_counter() - t0) * 1e3

    if pair:
        barrier = threading.Barrier(2)
        partner = [0.0]

        def helper():  # pinned to the second core; runs its product when the probe asks
            os.sched_setaffinity(0, {cores[1]})
            # OpenMP's thread count is per thread: without this, the helper's first torch.mm runs
            # on a team of nproc OpenMP threads, all pinned to its one core (63 ms instead of 1.3 ms
            # for the pair, measured), and the team's spinning steals the core from the calls
            torch.set_num_threads(1)
            while True:
                barrier.wait()
                partner[0] = mm(1)
                barrier.wait()

        threading.Thread(target=helper, daemon=True).start()

    def probe() -> tuple[float, ...]:
        out = []
        if pair:
            mask = set(cores)
            for c in cores[:2]:
                os.sched_setaffinity(0, {c})  # this thread only
                out.append(mm())
            os.sched_setaffinity(0, {cores[0]})
            barrier.wait()  # both cores at once
            mine = mm()
            barrier.wait()
            out.append(max(mine, partner[0]))
            os.sched_setaffinity(0, mask)
        else:
            out.append(mm())
        t0 = time.perf_counter()
        np.copyto(dst, src)
        out.append((time.perf_counter() - t0) * 1e3)
        return tuple(out)

    for _ in range(30):
        probe()
    cols = [f"core{c}_mm_ms" for c in cores[:2]] + ["both_mm_ms"] if pair else ["mm_ms"]
    return probe, cols


def gemm_call(chain: bool, threads: int, seq: int = 512):
    """Not chain: a fixed single-thread fp32 matrix product (~50-100 ms on one AVX2 core). Chain: six
    (seq, 768) x (768, 768) products on ``threads`` threads (a parallel section each). Each call
    sets torch's thread count for itself and puts the caller's back (the speed probe runs on this
    thread between calls, on one thread)."""
    import torch

    if chain:
        x0 = torch.randn(seq, 768)
        ws = [torch.randn(768, 768) / 768**0.5 for _ in range(2)]
    else:
        a = torch.randn(1024, 2048)
        b = torch.randn(2048, 1024)

    def call():
        before = torch.get_num_threads()
        torch.set_num_threads(threads if chain else 1)
        try:
            if not chain:
                return torch.mm(a, b)
            x = x0
            for i in range(6):
                x = torch.mm(x, ws[i % 2])
            return x
        finally:
            torch.set_num_threads(before)

    return call


def make_call(sess, variant: str, seq: int, batch: int, rng):
    import onnxruntime as ort

    names = [i.name for i in sess.get_inputs()]
    feeds = random_feeds(names, batch, seq, rng)
    out = sess.get_outputs()[0].name
    if variant == "bound":
        binding = sess.io_binding()
        for k, v in feeds.items():
            binding.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(v))
        binding.bind_output(out, "cpu")

        def call():
            sess.run_with_iobinding(binding)

        return call

    def call():
        # as the predictor does: fresh feeds per call (tokenised text), logits copied out
        f = {k: v.copy() for k, v in feeds.items()}
        return sess.run([out], f)[0].astype(np.float32, copy=False)

    return call


SLOW_CORE = 1.15  # a core whose probe ran this much slower than its median counts as slowed
# a block of calls (run back to back) whose median probe on a core ran this much slower than that
# core's usual block (10th percentile of the variant's blocks) ran in a slow phase of the host
# (seconds long: one probe is too noisy to tell a few percent, a block's median is not)
SLOW_PHASE = 1.06
PAIR_CONTENDED = 1.3  # the pair took this much longer than either core alone: the two cores contend


def _tail(t: np.ndarray, name: str) -> dict:
    """``{name}_p50_ms``, ``{name}_p99_ms`` and ``{name}_p99_over_p50`` of a subset of calls (None
    for each when it holds fewer than 20)."""
    q = quantiles(t / 1e3) if len(t) >= 20 else None
    return {
        f"{name}_p50_ms": q["p50_ms"] if q else None,
        f"{name}_p99_ms": q["p99_ms"] if q else None,
        f"{name}_p99_over_p50": round(q["p99_ms"] / q["p50_ms"], 3) if q else None,
    }


def _block_medians(speeds: list, block: int, n_cores: int) -> np.ndarray:
    """(blocks, n_cores) median probe time of each core over each block of ``block`` calls."""
    sp = np.asarray(speeds, dtype=float)[:, :n_cores]
    n = len(sp) // block
    return np.median(sp[: n * block].reshape(n, block, n_cores), axis=1) if n else np.empty((0, n_cores))


def _phases(variants, speeds, cols, block: int | None) -> dict:
    """Per variant, a status per call: True where made in a block whose median probe on every
    core was within SLOW_PHASE of that core's usual block (the 10th percentile of the variant's
    block medians: the probe follows the variant's previous call on the same core, so variants are
    not compared with each other), False in a slower block, None past the last whole block; {}
    without probes or blocks."""
    cores = [i for i, c in enumerate(cols or []) if c.startswith("core") or c == "mm_ms"]
    if not block or not cores:
        return {}
    out = {}
    for v in variants:
        if not speeds.get(v):
            continue
        meds = _block_medians(speeds[v], block, max(cores) + 1)[:, cores]
        if len(meds) < 2:
            continue
        full = (meds <= SLOW_PHASE * np.percentile(meds, 10, axis=0)).all(axis=1)
        calls = np.full(len(speeds[v]), None, dtype=object)
        calls[: len(full) * block] = np.repeat(full, block)
        out[v] = calls
    return out


def summarize(
    variants, times, probes, speeds, seq: int, cols: list[str] | None = None, block: int | None = None
) -> list[dict]:
    """Quantiles per variant, what the machine did during the slow calls, and (with probes) the
    tail of the calls made while both cores ran at their usual speed: call by call (a probe
    SLOW_CORE over the core's median) and block by block (a host phase: a block's median probe
    SLOW_PHASE over the core's usual block, the 10th percentile of the variant's blocks)."""
    rows = []
    phases = _phases(variants, speeds, cols, block)
    for v in variants:
        t = np.asarray(times[v])
        q = quantiles(t / 1e3)
        med = float(np.median(t))
        pr = np.asarray(probes[v], dtype=float)
        disturbed = (pr[:, 1] > 0) | (pr[:, 2] > 0)
        slow = t > 1.2 * med
        extra = {}
        if speeds.get(v):
            sp = np.asarray(speeds[v])
            rel = sp / np.median(sp, axis=0)
            slowed = (rel[:, :-1] > SLOW_CORE).any(axis=1)  # the last column is the memory copy
            normal = t[~slowed]
            extra = {
                "probe_p99_over_p50": [
                    round(float(np.percentile(sp[:, i], 99) / np.median(sp[:, i])), 3) for i in range(sp.shape[1])
                ],
                "corr_call_probe": [round(float(np.corrcoef(t, sp[:, i])[0, 1]), 3) for i in range(sp.shape[1])],
                "calls_after_a_slowed_core": int(slowed.sum()),
                "slow_calls_after_a_slowed_core": int((slow & slowed).sum()),
                "normal_cores_calls": int(len(normal)),
                **_tail(normal, "normal_cores"),
            }
            if v in phases:
                full = np.array([c is True for c in phases[v]])  # None (past the last whole block): neither
                slow_phase = np.array([c is False for c in phases[v]])
                extra.update(
                    {
                        "full_speed_blocks": int(full.sum() // block),
                        "slow_phase_blocks": int(slow_phase.sum() // block),
                        "slow_phase_p50_ms": round(float(np.median(t[slow_phase])), 3)
                        if slow_phase.sum() >= 20
                        else None,
                        **_tail(t[full], "full_speed"),
                    }
                )
            if cols and "both_mm_ms" in cols and sp.shape[1] == len(cols):
                both = sp[:, cols.index("both_mm_ms")]
                alone = sp[:, [i for i, c in enumerate(cols) if c.startswith("core")]].max(axis=1)
                ratio = both / alone
                contended = ratio > PAIR_CONTENDED
                calm = ~contended & ~slowed
                extra.update(
                    {
                        "pair_ratio_p50": round(float(np.median(ratio)), 3),
                        "pair_ratio_p90": round(float(np.percentile(ratio, 90)), 3),
                        "corr_call_pair_ratio": round(float(np.corrcoef(t, ratio)[0, 1]), 3),
                        "calls_after_a_contended_pair": int(contended.sum()),
                        "slow_calls_after_a_contended_pair": int((slow & contended).sum()),
                        "slow_share_after_a_contended_pair": round(float(slow[contended].mean()), 3)
                        if contended.any()
                        else None,
                        "slow_share_otherwise": round(float(slow[~contended].mean()), 3)
                        if (~contended).any()
                        else None,
                        "p50_ms_after_a_contended_pair": round(float(np.median(t[contended])), 2)
                        if contended.any()
                        else None,
                        "p50_ms_otherwise": round(float(np.median(t[~contended])), 2) if (~contended).any() else None,
                        "slow_calls_after_contention_or_a_slowed_core": int((slow & ~calm).sum()),
                        "calm_calls": int(calm.sum()),
                        **_tail(t[calm], "calm"),
                    }
                )
        rows.append(
            {
                "variant": v,
                "seq": seq,
                **q,
                "max_ms": round(float(t.max()), 3),
                "p99_over_p50": round(q["p99_ms"] / q["p50_ms"], 3),
                "share_over_1.2x_median": round(float(slow.mean()), 4),
                "cpu_over_wall_p50": round(float(np.median(pr[:, 0] / t)), 3),
                "cpu_over_wall_slow": round(float(np.median(pr[slow, 0] / t[slow])), 3) if slow.any() else None,
                "steal_ticks": int(pr[:, 1].sum()),
                "outside_busy_ticks": int(pr[:, 2].sum()),
                "involuntary_switches": int(pr[:, 3].sum()),
                "disturbed_calls": int(disturbed.sum()),
                "slow_calls_disturbed": int((slow & disturbed).sum()),
                "slow_calls": int(slow.sum()),
                **_tail(t[~disturbed], "undisturbed"),
                **extra,
            }
        )
    return rows


def print_rows(rows: list[dict]) -> None:
    print(
        f"{'variant':<12}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}{'p99/p50':>9}{'>1.2x':>8}"
        f"{'cpu/wall':>9}{'slow c/w':>9}{'steal':>7}{'outside':>8}{'slow dist.':>11}{'undist. p99/p50':>16}"
    )
    for r in rows:
        cws = _or_dash(r["cpu_over_wall_slow"], ".2f")
        und = _or_dash(r["undisturbed_p99_over_p50"], ".3f")
        print(
            f"{r['variant']:<12}{r['p50_ms']:>9.2f}{r['p90_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['max_ms']:>9.2f}"
            f"{r['p99_over_p50']:>9.3f}{r['share_over_1.2x_median']:>8.3f}{r['cpu_over_wall_p50']:>9.2f}{cws:>9}"
            f"{r['steal_ticks']:>7}{r['outside_busy_ticks']:>8}{r['slow_calls_disturbed']:>5}/{r['slow_calls']:<5}{und:>16}"
        )
    _section(
        rows,
        "normal_cores_calls",
        f"{'variant':<12}{'calls after a slowed core':>26}{'of them slow':>14}"
        f"{'both cores normal: n':>22}{'p50':>9}{'p99':>9}{'p99/p50':>9}",
        lambda r: (
            f"{r['variant']:<12}{r['calls_after_a_slowed_core']:>26}{r['slow_calls_after_a_slowed_core']:>5}/{r['slow_calls']:<8}"
            f"{r['normal_cores_calls']:>22}{r['normal_cores_p50_ms']:>9.2f}{r['normal_cores_p99_ms']:>9.2f}"
            f"{r['normal_cores_p99_over_p50']:>9.3f}"
        ),
        keep=lambda r: r.get("normal_cores_p50_ms") is not None,
    )
    _section(
        rows,
        "full_speed_blocks",
        f"{'variant':<12}{'blocks: full speed / slow phase':>32}{'slow-phase p50':>16}"
        f"{'full speed: p50':>17}{'p99':>9}{'p99/p50':>9}",
        lambda r: (
            f"{r['variant']:<12}{r['full_speed_blocks']:>20} / {r['slow_phase_blocks']:<9}"
            f"{_or_dash(r['slow_phase_p50_ms'], '.2f'):>16}" + _tail_cells(r, "full_speed", 17)
        ),
    )
    _section(
        rows,
        "calm_calls",
        f"{'variant':<12}{'pair ratio p50/p90':>20}{'corr(call, ratio)':>19}{'after contention':>18}"
        f"{'slow after either':>19}{'calm: n':>9}{'p50':>9}{'p99':>9}{'p99/p50':>9}",
        lambda r: (
            f"{r['variant']:<12}{r['pair_ratio_p50']:>10.2f}/{r['pair_ratio_p90']:<9.2f}"
            f"{r['corr_call_pair_ratio']:>19.2f}{r['calls_after_a_contended_pair']:>18}"
            f"{r['slow_calls_after_contention_or_a_slowed_core']:>12}/{r['slow_calls']:<6}{r['calm_calls']:>9}"
            + _tail_cells(r, "calm", 9)
        ),
    )


def _or_dash(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _tail_cells(r: dict, prefix: str, first_width: int) -> str:
    """The p50 / p99 / p99-over-p50 cells of one subset of calls, or one dash where it has none."""
    if r[f"{prefix}_p50_ms"] is None:
        return f"{'-':>{first_width + 18}}"
    return f"{r[f'{prefix}_p50_ms']:>{first_width}.2f}{r[f'{prefix}_p99_ms']:>9.2f}{r[f'{prefix}_p99_over_p50']:>9.3f}"


def _section(rows: list[dict], key: str, header: str, line, keep=None) -> None:
    """A further table under the first: printed when a row has ``key``, a line per such row that ``keep``s."""
    if not any(key in r for r in rows):
        return
    print("\n" + header)
    for r in rows:
        if key in r and (keep is None or keep(r)):
            print(line(r))


def reanalyze(src: Path, dst: Path) -> int:
    """Recompute the rows of an earlier result from its raw per-call data (same file layout)."""
    import json

    try:
        old = json.loads(src.read_text())
        variants = list(old["raw_ms"])
        per_call = old.get("per_call") or {}
        probes = {v: [tuple(p) for p in per_call[v]] for v in variants}
        speeds = {v: [tuple(p) for p in (old.get("probe_ms") or {}).get(v, [])] for v in variants}
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"fastft: error: {src} is not a bench_tails result with per-call data ({e})", file=sys.stderr)
        return 2
    cols = (old.get("probe_ms") or {}).get("columns")
    rows = summarize(variants, old["raw_ms"], probes, speeds, old.get("seq"), cols, old.get("block"))
    print_rows(rows)
    from fastft.bench.runner import command_line

    old["rows"] = rows
    old["summarized_again"] = {"command": command_line(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_result(dst, old, csv_rows=rows)
    print(f"wrote {dst}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "runs" / "bench-teacher-onnx"), help="an exported model directory")
    ap.add_argument("--file", default="model.onnx", help="ONNX file inside --model [model.onnx]")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=300, help="timed calls per variant")
    ap.add_argument("--block", type=int, default=25, help="calls per variant before rotating")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument(
        "--speed-probe", action="store_true", help="time fixed work on each core and a memory copy before each call"
    )
    ap.add_argument("--result", default=str(ROOT / "bench" / "results" / "tails_ort.json"))
    ap.add_argument(
        "--from-result",
        metavar="FILE",
        help="measure nothing: summarize the raw calls of an earlier result again and write --result",
    )
    args = ap.parse_args()
    if args.from_result:
        return reanalyze(Path(args.from_result), Path(args.result))

    path = Path(args.model) / args.file
    if not path.is_file():
        print(f"fastft: error: {path} does not exist (export a model first: fastft export ...)", file=sys.stderr)
        return 2
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        print(f"fastft: error: unknown variant(s) {', '.join(bad)}; choose from {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    calls = {}
    for v in variants:
        if v.startswith("gemm-floor"):
            calls[v] = gemm_call(v == "gemm-floor-threads", args.threads, args.seq)
            for _ in range(10):
                calls[v]()
            continue
        sess = make_session(path, v, args.threads)
        calls[v] = make_call(sess, v, args.seq, args.batch, rng)
        for _ in range(10):  # warm-up: arena growth, first-run kernels
            calls[v]()
    probe, probe_cols = speed_probe() if args.speed_probe else (None, [])
    probe_cols = [*probe_cols, "copy_32mib_ms"]
    speeds: dict[str, list[tuple[float, ...]]] = {v: [] for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    probes: dict[str, list[tuple[float, int, int, int]]] = {v: [] for v in variants}
    blocks = -(-args.calls // args.block)
    t_start = time.time()
    for b in range(blocks):
        order = variants[b % len(variants) :] + variants[: b % len(variants)]
        for v in order:
            frozen = v == "gc-frozen"
            if frozen:
                gc.collect()
                gc.freeze()
                gc.disable()
            time.sleep(0.05)  # let the previous variant's threads go to sleep
            fn = calls[v]
            for _ in range(args.block):
                if probe:
                    speeds[v].append(probe())
                st0, busy0 = _ticks()
                own0 = _own_ticks()
                ivcsw0 = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw
                c0 = time.process_time()
                t0 = time.perf_counter()
                fn()
                t1 = time.perf_counter()
                c1 = time.process_time()
                ivcsw1 = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw
                own1 = _own_ticks()
                st1, busy1 = _ticks()
                times[v].append((t1 - t0) * 1e3)
                probes[v].append(
                    (
                        (c1 - c0) * 1e3,
                        st1 - st0,
                        max(0, (busy1 - busy0) - (own1 - own0)),
                        ivcsw1 - ivcsw0,
                    )
                )
            if frozen:
                gc.enable()
                gc.unfreeze()
        print(f"block {b + 1}/{blocks}", file=sys.stderr, flush=True)
    rows = summarize(variants, times, probes, speeds, args.seq, probe_cols, args.block)
    print_rows(rows)
    write_result(
        args.result,
        {
            "benchmark": "ORT tail latency by session variant",
            "model": str(path),
            "seq": args.seq,
            "batch": args.batch,
            "threads": args.threads,
            "calls_per_variant": args.calls,
            "block": args.block,
            "wall_s": round(time.time() - t_start, 1),
            "speed_probe": bool(probe),
            "env": {
                k: os.environ.get(k)
                for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "FASTFT_OP_POOL", "FASTFT_ATTN_ISA")
                if os.environ.get(k)
            },
            "fastft_ops": SWAPS,
            "rows": rows,
            "raw_ms": {v: [round(x, 3) for x in times[v]] for v in variants},
            "per_call": {
                "columns": ["cpu_ms", "steal_ticks", "outside_busy_ticks", "involuntary_switches"],
                **{v: [[round(p[0], 2), p[1], p[2], p[3]] for p in probes[v]] for v in variants},
            },
            "probe_ms": {"columns": probe_cols, **{v: [[round(x, 4) for x in p] for p in speeds[v]] for v in variants}}
            if probe
            else None,
        },
        csv_rows=rows,
    )
    print(f"wrote {args.result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
