"""``fastft bench``: latency, throughput and memory of every serving backend, interleaved."""

from __future__ import annotations

import argparse
import sys

_DOC = """measure latency, throughput and memory of every serving backend in one interleaved run

examples:
  fastft bench                                   # built-in model (the teacher if trained), seq 512, batch 1
  fastft bench --seq 128,512 --threads 2 --json bench.json
  fastft bench --seq 128,256,384,512 --plot latency.png --backends hf-eager,fastft-fp32,fastft-int8

backends:
{backends}

Each repetition runs every backend once on the same batch x seq tokens (new random order, each
after --gap-ms idle); ORT sessions use --threads intra-op threads, spinning off, sequential
execution; torch uses torch.set_num_threads(--threads) with OMP_WAIT_POLICY=PASSIVE unless set
(torch's spinning OpenMP barriers collapse when another process holds a core). Exports are
cached under the fastft cache directory.

Each INT8 backend also labels up to --agreement-texts held-out texts (at the model's own
length) beside its own fp32 (the peer's INT8 against the peer's fp32, fastft's against
fastft's): read an INT8 speed-up beside what it gives up; a target row of its own says whether
fastft's agreement is at least the peer's."""


def register(sub) -> None:
    from fastft.bench.backends import BACKENDS
    from fastft.cli import add_command

    doc = _DOC.format(backends="\n".join(f"  {k:<13} {v}" for k, v in BACKENDS.items()))
    p = add_command(sub, "bench", "benchmark serving backends (HF eager, ONNX Runtime, peer INT8, fastft)", doc)
    # --json FILE replaces the shared --json flag (which still works alone: JSON on stdout)
    for holder in (p, getattr(p, "_optionals", None)):
        if holder is not None:
            holder.conflict_handler = "resolve"
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="FILE",
        help="write the result JSON to FILE; with no FILE, print it on stdout instead of the table",
    )
    p.add_argument(
        "--model",
        default=None,
        help="model directory [the fine-tuned teacher if one exists, else minilm-l6 with a fresh head]",
    )
    p.add_argument(
        "--seq",
        type=_int_list,
        default=None,
        help="sequence length(s), comma-separated [512, or the model's maximum if shorter]",
    )
    p.add_argument("--batch", type=int, default=1, help="sequences per run [1]")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads for torch and ORT [physical cores]")
    p.add_argument(
        "--backends", type=_str_list, default=None, help=f"comma-separated subset of: {','.join(BACKENDS)} [all]"
    )
    p.add_argument("--repeats", type=int, default=100, help="timed runs per backend and length [100]")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs per backend and length first [5]")
    p.add_argument(
        "--gap-ms",
        type=float,
        default=5.0,
        help="idle time before each timed run, so one backend's threads settle before the next runs; "
        "on a VM an idle core may also wake slower, and the shortest runs pay most for it [5]",
    )
    p.add_argument("--plot", default=None, metavar="FILE", help="write a PNG of p50 latency against sequence length")
    p.add_argument("--no-memory", action="store_true", help="skip the per-backend memory probe (subprocesses)")
    p.add_argument("--workdir", default=None, help="where exports are cached [FASTFT_CACHE/bench]")
    p.add_argument(
        "--served",
        default=None,
        metavar="DIR",
        help="fastft-fp32/-int8 serve this directory's model.onnx/model_int8.onnx (e.g. a fastft compress "
        "output) while the baselines use --model [export --model]",
    )
    p.add_argument(
        "--agreement-texts",
        type=int,
        default=1000,
        metavar="N",
        help="validation texts on which each INT8 backend's labels are compared with its own fp32's "
        "(sequence classification; 0: skip) [1000]",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _int_list(s: str) -> list[int]:
    try:
        vals = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one value")
    return vals


def _str_list(s: str) -> list[str]:
    vals = [x.strip() for x in s.split(",")]
    if not s.strip() or any(not v for v in vals):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {s!r}")
    return vals


def check_paths(args) -> None:
    """--json FILE, --plot FILE and --workdir DIR must be writable before minutes of measuring."""
    from pathlib import Path

    from fastft.core.errors import FastftError
    from fastft.core.io import check_writable

    inputs = [Path(x).expanduser().resolve() for x in (args.model, args.served) if x and Path(x).expanduser().is_dir()]
    outputs = {}
    for opt, value in (("--json", args.json if args.json != "-" else None), ("--plot", args.plot)):
        if value is None:
            continue
        if not value.strip():
            raise FastftError(f"{opt} is empty: give a file name")
        path = Path(value).expanduser()
        try:
            where = path.resolve()
        except RuntimeError as exc:  # a symbolic link loop
            raise FastftError(f"{opt} {value} cannot be used ({exc})") from None
        if where in outputs.values():  # the JSON was written, then the plot over it
            raise FastftError(f"--json and --plot name one file ({value}): give each its own")
        if any(d == where or d in where.parents for d in inputs):  # --json DIR/config.json broke the model
            raise FastftError(f"{opt} {value} is inside a model directory this run reads: write it elsewhere")
        outputs[opt] = where
        if path.is_dir() or value.endswith(("/", "\\")):
            raise FastftError(
                f"{opt} {value} is a directory; give a file name, e.g. {Path(value) / 'bench.json'}"
                if opt == "--json"
                else f"{opt} {value} is a directory; give a .png file name"
            )
        if path.exists() and not path.is_file():
            raise FastftError(f"{opt} {value} exists and is not a regular file")
        check_writable(where.parent, flag=opt)  # where a symbolic link leads: the file written there
    # the shell leaves "~" alone after "=" (--json=~/r.json): expanded here, for the writes too
    for opt in ("json", "plot", "workdir"):
        value = getattr(args, opt, None)
        if value and value != "-":
            setattr(args, opt, str(Path(value).expanduser()))
    if args.workdir:
        wd = Path(args.workdir)  # expanded above
        if wd.exists() and not wd.is_dir():
            raise FastftError(f"--workdir {args.workdir} exists and is not a directory")
        if not wd.exists():  # an existing cache is only written when an export is missing (checked then)
            check_writable(wd, flag="--workdir")


def _run(args) -> int:
    import os

    # Before torch loads OpenMP: passive waiting. With the default policy, torch's threads spin on
    # barriers, and a 2-thread forward collapses (~30x slower) as soon as another process holds a
    # core, which would make the HF baseline look absurdly slow on a shared machine.
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from fastft.bench import write_result
    from fastft.bench.harness import BACKENDS, BenchConfig, format_table, run_bench
    from fastft.core.errors import FastftError
    from fastft.core.io import dumps

    if args.plot and not args.plot.lower().endswith(".png"):
        raise FastftError(f"--plot writes a PNG; give a .png file name (got {args.plot!r})")
    check_paths(args)
    cfg = BenchConfig(
        model=args.model,
        seqs=args.seq,
        batch=args.batch,
        threads=args.threads,
        backends=args.backends or list(BACKENDS),
        repeats=args.repeats,
        warmup=args.warmup,
        gap_ms=args.gap_ms,
        memory=not args.no_memory,
        workdir=args.workdir,
        served=args.served,
        progress=not args.no_progress,
        agreement=args.agreement_texts,
    )
    payload = run_bench(cfg)
    if args.json == "-":
        from fastft.bench import command_line, machine_info, versions

        print(dumps({"command": command_line(), "machine": machine_info(), "versions": versions(), **payload}))
    else:  # first: the measurement is on screen whatever happens to the files (a full disk)
        print(format_table(payload), flush=True)
    if args.plot:  # before the JSON: a result file that is there says its plot is too (an interrupt between)
        from fastft.bench.plot import plot_latency

        print(f"fastft bench: wrote {plot_latency(payload, args.plot)}", file=sys.stderr)
    if args.json and args.json != "-":
        path = write_result(args.json, payload)
        print(f"fastft bench: wrote {path}", file=sys.stderr)
    return 0
