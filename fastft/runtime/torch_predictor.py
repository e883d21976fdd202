"""The PyTorch backend of :func:`fastft.load`: eager / SDPA attention, or fastft's fused
attention swapped in (:func:`fastft.swap_attention`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastft.core.checks import check_threads
from fastft.core.errors import FastftError
from fastft.core.schema import SEQUENCE_CLASSIFICATION
from fastft.models import load_classifier
from fastft.runtime.base import Predictor
from fastft.runtime.session import DeviceError, parse_device

__all__ = ["TorchPredictor"]

_fork = {"guarded": False, "child": False}


def _one_thread_after_fork() -> None:
    """In a ``fork()``ed child, torch's intra-op threads (OpenMP's pool) do not exist, and the first
    parallel call waits for them for ever: the child runs torch on one thread (as torch's own
    DataLoader workers do), and a torch Predictor loaded there keeps to one. Registered once, when
    the first torch Predictor loads; it holds for every later fork of the process."""
    if not _fork["guarded"]:
        import os

        import torch

        def child() -> None:
            _fork["child"] = True
            torch.set_num_threads(1)

        os.register_at_fork(after_in_child=child)
        _fork["guarded"] = True


class TorchPredictor(Predictor):
    """PyTorch (eager, SDPA attention, or fastft's fused attention when swapped in)."""

    backend = "torch"

    def __init__(
        self,
        path: Path,
        tokenizer,
        labels,
        max_length,
        *,
        device="cpu",
        threads=None,
        fused_attention: bool | None = False,
        batch_size=32,
        truncation=True,
        warm_up=True,
        task=SEQUENCE_CLASSIFICATION,
    ):
        super().__init__(
            path, tokenizer, labels, max_length, device=device, batch_size=batch_size, truncation=truncation, task=task
        )
        import torch  # only for this backend: an ONNX Runtime server never imports torch

        _one_thread_after_fork()
        kind, index = parse_device(device)
        if kind == "cuda" and not torch.cuda.is_available():
            raise DeviceError(
                "device='cuda' needs a CUDA GPU, and torch sees none "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); use device='cpu'"
            )
        if threads is not None:
            check_threads("threads", threads)
            if _fork["child"] and threads > 1:
                import warnings

                warnings.warn(
                    f"threads={threads} ignored: in a fork()ed child torch runs on one thread (OpenMP's threads "
                    "do not survive fork, and torch would wait for them for ever)",
                    UserWarning,
                    stacklevel=3,
                )
                threads = 1
            torch.set_num_threads(threads)
        self._torch_device = torch.device(kind, index) if kind == "cuda" else torch.device("cpu")
        net = load_classifier(self.path, task=task).eval()
        self.attention = getattr(net.config, "_attn_implementation", None) or "sdpa"
        if fused_attention is not False and _swap(net, required=fused_attention is True):
            self.attention = "fastft-fused"
        self.model = net.to(self._torch_device)
        if warm_up:
            self._warm_up()

    def logits_from_ids(self, input_ids, attention_mask=None, token_type_ids=None) -> np.ndarray:
        import torch

        dev = self._torch_device
        kwargs = {"input_ids": torch.as_tensor(np.asarray(input_ids, dtype=np.int64), device=dev)}
        if attention_mask is not None:
            kwargs["attention_mask"] = torch.as_tensor(np.asarray(attention_mask, dtype=np.int64), device=dev)
        if token_type_ids is not None:
            kwargs["token_type_ids"] = torch.as_tensor(np.asarray(token_type_ids, dtype=np.int64), device=dev)
        with torch.inference_mode():
            return self.model(**kwargs).logits.float().cpu().numpy()

    def info(self) -> dict:
        import torch

        # torch's intra-op threads are the process's: load(threads=N) sets them for every model
        return {**super().info(), "attention": self.attention, "threads": torch.get_num_threads()}


def _swap(net, required: bool) -> bool:
    """Swap fastft's fused attention into ``net`` in place; True when it did. An unsupported
    model keeps its attention (False), unless the swap is ``required`` (FastftError)."""
    from fastft.swap import swap_attention  # imports torch: only for this backend

    try:
        swap_attention(net)
    except FastftError:
        if required:
            raise
        return False
    return True
