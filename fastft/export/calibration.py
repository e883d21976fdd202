"""The one calibration reader for static INT8: ready feed batches, from texts or from token ids."""

from __future__ import annotations


class CalibrationReader:
    """An ORT ``CalibrationDataReader`` over ready feed batches: the one calibration reader.

    Build it from texts (:class:`TextCalibrationReader`, tokenized here) or from rows already
    tokenized (:meth:`from_ids`, padded with ``pad_id``); ``token_type_ids`` are zeros.
    """

    def __init__(self, batches: list[dict], pad_id: int = 0):
        self.batches = batches
        self.pad_id = pad_id
        self._it = iter(self.batches)

    def one_shape(self) -> CalibrationReader:
        """The same rows, one per batch, each padded to the longest row's length (``input_ids`` with
        ``pad_id``, the rest with 0): ONNX Runtime's histogram calibrators (entropy, percentile)
        stack every batch's activations into one array, which fails on batches of other shapes."""
        import numpy as np

        n = max((b[k].shape[1] for b in self.batches for k in b), default=0)

        def pad(name, x):
            fill = self.pad_id if name == "input_ids" else 0
            return np.pad(x, ((0, 0), (0, n - x.shape[1])), constant_values=fill)

        rows = [
            {k: pad(k, v[i : i + 1]) for k, v in b.items()}
            for b in self.batches
            for i in range(len(next(iter(b.values()))))
        ]
        return CalibrationReader(rows, self.pad_id)

    @classmethod
    def from_ids(cls, ids: list[list[int]], pad_id: int, input_names: list[str], batch_size: int = 16):
        import numpy as np

        batches = []
        for s in range(0, len(ids), batch_size):
            rows = ids[s : s + batch_size]
            n = max(len(r) for r in rows)
            x = np.full((len(rows), n), pad_id, dtype=np.int64)
            m = np.zeros_like(x)
            for i, r in enumerate(rows):
                x[i, : len(r)] = r
                m[i, : len(r)] = 1
            feeds = {"input_ids": x, "attention_mask": m, "token_type_ids": np.zeros_like(x)}
            batches.append({k: feeds[k] for k in input_names})
        return cls(batches, pad_id)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self.batches)


class TextCalibrationReader(CalibrationReader):
    """:class:`CalibrationReader` over texts, tokenized in small padded batches."""

    def __init__(self, tokenizer, texts: list[str], input_names: list[str], max_length: int, batch_size: int = 8):
        import numpy as np

        batches = []
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(
                texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="np"
            )
            zeros = np.zeros_like(enc["input_ids"], dtype=np.int64)
            batches.append({n: enc[n].astype(np.int64) if n in enc else zeros for n in input_names})
        super().__init__(batches, tokenizer.pad_token_id or 0)


def _base_reader():
    from onnxruntime.quantization import CalibrationDataReader

    return CalibrationDataReader


def as_ort_reader(reader: CalibrationReader):
    base = _base_reader()

    class _Reader(base):
        def get_next(self):
            return reader.get_next()

        def rewind(self):
            reader.rewind()

    return _Reader()
