"""The C++ attention kernel of two or more builds of fastft's extension, timed in one process.

    python bench/bench_kernel_builds.py --build before=/tmp/a/_C.so --build after=/tmp/b/_C.so \
        --json bench/results/kernel_builds.json

A change to ``csrc/`` that should cost nothing (or should pay) is checked here: each ``--build``
is a compiled ``fastft._C`` file (copy it out of the venv before rebuilding), loaded under its own
name, and every build's ``attention_fwd_f32`` runs the same inputs, interleaved (rotating order),
on the same threads. Shapes: batch 1, ``--heads`` heads, each ``--seqs`` x ``--head-dims``, without
a mask, with a key padding mask (75% of keys valid, a prefix) and causal; once per ``--isa``
(``auto`` and ``avx2`` by default, where the CPU has them). Each row: p10/p50/p90 ms per build and
each build's p50 over the first build's. The builds' outputs are compared too (largest
difference against the first build's), so a change meant to keep results shows that it did.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from fastft.bench.runner import interleave, quantiles, script_main, write_result  # noqa: E402
from fastft.core.errors import FastftError  # noqa: E402

CASES = (("none", False), ("pad75", False), ("none", True))


def load_build(label: str, path: Path):
    """The compiled extension at ``path`` as a module of its own (the file's init is PyInit__C)."""
    if not path.is_file():
        raise FastftError(f"--build {label}={path}: no such file")
    spec = importlib.util.spec_from_file_location("_C", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as e:
        raise FastftError(f"--build {label}={path}: not a loadable fastft extension ({e})") from None
    if not hasattr(module, "attention_fwd_f32"):
        raise FastftError(f"--build {label}={path}: has no attention_fwd_f32")
    return module


def parse_builds(items: list[str]) -> dict[str, Path]:
    builds: dict[str, Path] = {}
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise FastftError(f"--build wants LABEL=PATH, got {item!r}")
        if label in builds:
            raise FastftError(f"--build label {label!r} given twice")
        builds[label] = Path(path).expanduser()
    if len(builds) < 2:
        raise FastftError("give at least two --build LABEL=PATH to compare")
    return builds


def time_shape(builds: dict, isa: str, seq: int, d: int, mask_kind: str, causal: bool, args, gen) -> dict:
    """One shape, every build interleaved: a result row (quantiles, ratios, output differences)."""
    heads, threads = args.heads, args.threads
    q, k, v = (torch.randn(1, heads, seq, d, generator=gen) for _ in range(3))
    mask_ptr = 0
    if mask_kind == "pad75":
        mask = torch.zeros(1, seq, dtype=torch.bool)
        mask[:, : seq * 3 // 4] = True
        mask_ptr = mask.data_ptr()
    outs = {label: torch.empty_like(q) for label in builds}
    ptrs = (q.data_ptr(), k.data_ptr(), v.data_ptr(), mask_ptr, 0)
    isa_arg = "" if isa == "auto" else isa

    def call(label):
        out = outs[label].data_ptr()
        builds[label].attention_fwd_f32(*ptrs, out, 1, heads, seq, seq, d, causal, d**-0.5, threads, isa_arg)

    t = interleave({label: (lambda label=label: call(label)) for label in builds}, args.rounds, warmup=5)
    first = next(iter(builds))
    qs = {label: quantiles(t.wall[label]) for label in builds}
    row = {"isa": isa, "seq": seq, "head_dim": d, "mask": mask_kind, "causal": causal}
    for label in builds:
        row.update({f"{label}_{key}": round(qs[label][key], 4) for key in ("p10_ms", "p50_ms", "p90_ms")})
        row[f"{label}_vs_{first}"] = round(qs[label]["p50_ms"] / qs[first]["p50_ms"], 4)
        row[f"{label}_max_diff"] = float((outs[label] - outs[first]).abs().max())
    cells = [f"{label} {qs[label]['p50_ms']:.3f} ms ({row[f'{label}_vs_{first}']:.3f}x)" for label in builds]
    print(f"{isa:>6} S{seq:<5} D{d:<4} {mask_kind:>5} causal={causal!s:<5} " + "  ".join(cells), flush=True)
    return row


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--build", action="append", default=[], metavar="LABEL=PATH", help="a compiled fastft._C (2+)")
    p.add_argument("--seqs", type=int, nargs="+", default=[128, 512])
    p.add_argument("--head-dims", type=int, nargs="+", default=[32, 64])
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--isa", nargs="+", default=["auto", "avx2"], help="SIMD copies to time [auto avx2]")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=150)
    p.add_argument("--json", type=Path, default=None, help="result file (and a .csv beside it)")
    args = p.parse_args()
    paths = parse_builds(args.build)
    builds = {label: load_build(label, path) for label, path in paths.items()}
    have = set(next(iter(builds.values())).attention_isas())
    isas = [i for i in args.isa if i == "auto" or i in have]
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    rows = [
        time_shape(builds, isa, seq, d, mask_kind, causal, args, gen)
        for isa in isas
        for seq in args.seqs
        for d in args.head_dims
        for mask_kind, causal in CASES
    ]
    if args.json:
        payload = {
            "benchmark": "C++ attention kernel, builds compared interleaved in one process",
            "builds": {label: str(path) for label, path in paths.items()},
            "threads": args.threads,
            "rounds": args.rounds,
            "rows": rows,
        }
        print(f"wrote {write_result(args.json, payload, csv_rows=rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(script_main(main))
