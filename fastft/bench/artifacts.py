"""What the backends of ``fastft bench`` run: the model directory and its exported files.

:func:`prepare` exports into a work directory keyed by the model's fingerprint, so a second
run on an unchanged model reuses the files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from fastft.core.errors import FastftError
from fastft.core.io import check_writable, replace_file


def default_model() -> tuple[Path, str]:
    """The fine-tuned teacher if one exists, else minilm-l6 with a fresh 2-label head."""
    from fastft.models import cache_dir

    for cand in (cache_dir() / "teacher-minilm-l6-movie-snippets", Path("runs/teacher")):
        if (cand / "config.json").is_file() and (cand / "model.safetensors").is_file():
            return cand.resolve(), f"fine-tuned teacher {cand}"
    path = cache_dir() / "bench" / "minilm-l6-fresh-head"
    if not (path / "fastft.json").is_file():
        import torch

        from fastft.core.io import atomic_output_dir
        from fastft.models import load_classifier, load_tokenizer, write_meta
        from fastft.models.hf import quiet

        cache_dir(write=True)
        torch.manual_seed(0)
        net = load_classifier("minilm-l6", labels=["negative", "positive"])
        with atomic_output_dir(path, overwrite=True) as tmp:
            with quiet():  # transformers' "Writing model shards" bar
                net.save_pretrained(tmp, safe_serialization=True)
                load_tokenizer("minilm-l6").save_pretrained(tmp)
            write_meta(
                tmp,
                {
                    "format": 1,
                    "task": "sequence-classification",
                    "labels": ["negative", "positive"],
                    "base_model": "minilm-l6",
                    "max_length": 512,
                    "note": "fresh head, for benchmarks",
                },
            )
    return path, "minilm-l6 with a fresh classification head (latency does not depend on the head)"


def _fingerprint(model_dir: Path) -> str:
    import fastft

    h = hashlib.sha1(str(model_dir.resolve()).encode())
    for f in sorted(model_dir.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    from fastft.export.optimize import GRAPH_REVISION

    h.update(f"{fastft.__version__}:{GRAPH_REVISION}".encode())
    return h.hexdigest()[:12]


def work_dir(model_dir: Path, root: str | None = None) -> Path:
    from fastft.models import cache_dir

    base = Path(root) if root else cache_dir() / "bench"
    return base / f"{model_dir.name}-{_fingerprint(model_dir)}"


def is_export_dir(model_dir: Path) -> bool:
    from fastft.models import read_meta

    return (
        (model_dir / "model.onnx").is_file()
        and (model_dir / "model_int8.onnx").is_file()
        and isinstance(read_meta(model_dir).get("onnx"), dict)
    )


def prepare(model_dir: Path, backends: list[str], workdir: Path, log=print, served: Path | None = None) -> dict:
    """Export what the backends need into ``workdir`` (reused when already there): {what: path}."""
    art: dict[str, Path] = {"model_dir": model_dir}
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FastftError(
            f"cannot create the bench work directory {workdir} ({exc.strerror or type(exc).__name__}); "
            "set --workdir or FASTFT_CACHE to a place where files can be created"
        ) from None

    def building(what: str) -> None:  # a read-only work directory holding every file is used as it is
        check_writable(workdir, flag="--workdir (or FASTFT_CACHE)")
        log(what)

    if {"fastft-fp32", "fastft-int8"} & set(backends):
        out = workdir / "fastft"
        if served is not None:  # e.g. a `fastft compress` output: the product served against the baselines
            for b, f in (("fastft-fp32", "model.onnx"), ("fastft-int8", "model_int8.onnx")):
                if b in backends and not (served / f).is_file():
                    raise FastftError(f"--served {served} has no {f} (needed by {b})")
            out = served
        elif is_export_dir(model_dir):  # --model is already a `fastft export --int8` directory: serve its files
            out = model_dir
        elif not ((out / "model.onnx").is_file() and (out / "model_int8.onnx").is_file()):
            from fastft.export import export

            building(f"exporting {model_dir} with fastft export --int8 -> {out}")
            # parity is what `fastft export` checks; here the logits are compared with hf-eager instead
            export(model_dir, out, int8=True, overwrite=True, validate=False)
        art["fastft"] = out
    if {"peer-fp32", "peer-int8"} & set(backends):
        done = workdir / "peer" / "files.json"  # written last, whole: the pipeline's files are all there
        files = _peer_files(done)
        if files is None:
            from fastft.export.peer import peer_pipeline

            building(f"running the peer pipeline (ORT transformers optimizer + quantize_dynamic) -> {done.parent}")
            files = json.loads(json.dumps(peer_pipeline(model_dir, done.parent), default=str))
            # the files by their names in the directory: a cache run from elsewhere or moved still finds them
            kept = {k: (Path(v).name if k in _PEER_FILES and v else v) for k, v in files.items()}
            replace_file(done, lambda tmp: tmp.write_text(json.dumps(kept, indent=1)))
            files = _peer_files(done)
        art["peer-fp32"], art["peer-int8"] = files["fp32_optimized"], files["int8"]
        if files.get("plain") and files["plain"].is_file():
            art["peer-plain"] = files["plain"]
        art["peer-record"] = files.get("record")
    if "ort-plain" in backends:
        out = workdir / "plain" / "model.onnx"
        if "peer-plain" in art:  # the peer pipeline's first step is the same plain export
            out = art["peer-plain"]
        elif not out.is_file():
            from fastft.export.peer import plain_export

            building(f"plain ONNX export -> {out}")
            out.parent.mkdir(parents=True, exist_ok=True)
            replace_file(out, lambda tmp: plain_export(model_dir, tmp))
        art["ort-plain"] = out
    return art


_PEER_FILES = ("fp32_optimized", "int8", "plain")


def _peer_files(done: Path) -> dict | None:
    """The peer pipeline's record in ``done`` with its files as paths beside it (a record of
    absolute paths, as older runs wrote, is read as it is), or None to build it again: missing,
    unreadable, or naming a file that is not there (a record from a run started elsewhere, or a
    cache moved, once failed every rerun)."""
    try:
        files = json.loads(done.read_text()) if done.is_file() else None
    except (ValueError, OSError):
        return None
    if not isinstance(files, dict) or not all(isinstance(files.get(k), str) for k in _PEER_FILES[:2]):
        return None
    for k in _PEER_FILES:
        if files.get(k):
            files[k] = done.parent / files[k]  # (an absolute path stays itself)
    return files if files["fp32_optimized"].is_file() and files["int8"].is_file() else None
