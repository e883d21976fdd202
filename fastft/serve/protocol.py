"""Request parsing and response building: fastft's ``/predict`` and the Open Inference Protocol v2.

v2 (the KServe / Triton HTTP protocol) carries tensors as JSON, or with Triton's binary
tensor extension: the body is a JSON header of ``Inference-Header-Content-Length`` bytes
followed by raw tensors, a BYTES element being a 4-byte little-endian length and its bytes.
``tritonclient[http]`` sends and asks for binary tensors by default; plain JSON clients
(curl, KServe's client) get JSON. The model has one input, ``text`` (BYTES, shape [n]), and
three outputs: ``label`` (BYTES [n]), ``probabilities`` (FP32 [n, num_labels]) and
``truncated`` (BOOL [n]: the text was cut at the model's max length).

A token-classification model answers entities instead: ``/predict`` gives each text
``{"entities": [{entity, score, start, end, word}...], "truncated"}``, and v2 has the outputs
``entities`` (BYTES [n], each element the text's entities as a JSON array) and ``truncated``.
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np

INPUT = "text"
OUTPUTS = ("label", "probabilities", "truncated")
TOKEN_OUTPUTS = ("entities", "truncated")
HEADER_LENGTH = "inference-header-content-length"


class BadRequest(Exception):
    """A request the server cannot use; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def check_texts(texts, max_texts: int, where: str = "inputs") -> list[str]:
    if isinstance(texts, str):
        raise BadRequest(f"'{where}' must be a list of strings, not a single string (wrap it: [text])", 422)
    if not isinstance(texts, list):
        raise BadRequest(f"'{where}' must be a list of strings (got {_json_type(texts)})", 422)
    if not texts:
        raise BadRequest(f"'{where}' is empty: give at least one text", 422)
    if len(texts) > max_texts:
        raise BadRequest(f"too many texts in one request: {len(texts)} > {max_texts} (--max-texts)", 413)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise BadRequest(f"'{where}'[{i}] is not a string (got {_json_type(t)})", 422)
        if not t.strip():
            raise BadRequest(f"'{where}'[{i}] is an empty text", 422)
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate escaped as \ud800 in the JSON
            raise BadRequest(
                f"'{where}'[{i}] is not valid Unicode (lone surrogate {t[exc.start]!r} at character {exc.start})", 422
            ) from None
    return texts


def _json_type(x) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(x), type(x).__name__)


def load_json(body: bytes):
    try:
        return json.loads(body)
    except RecursionError:
        raise BadRequest("the body is not usable JSON (nested too deeply)", 400) from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise BadRequest(f"the body is not valid JSON ({exc.msg} at {where})", 400) from None
    except UnicodeDecodeError:
        raise BadRequest("the body is not valid JSON (not UTF-8 text)", 400) from None
    except ValueError:  # Python's limit on the digits of an integer it converts
        raise BadRequest("the body is not usable JSON (a number with more than 4,300 digits)", 400) from None


# -- /predict ------------------------------------------------------------------------------
def parse_predict(body: bytes, max_texts: int) -> list[str]:
    doc = load_json(body)
    if not isinstance(doc, dict):
        raise BadRequest(f'the body must be a JSON object {{"inputs": [texts]}} (got {_json_type(doc)})', 422)
    if "inputs" not in doc:
        raise BadRequest('the body has no "inputs": send {"inputs": [texts]}', 422)
    return check_texts(doc["inputs"], max_texts)


def entities_response(entities: list[list[dict]], truncated: list[bool]) -> list[dict]:
    """``/predict`` rows of a token-classification model: each text's entities and truncation flag."""
    return [{"entities": e, "truncated": t} for e, t in zip(entities, truncated)]


def predict_response(labels: list[str], probs: np.ndarray, truncated: list[bool]) -> list[dict]:
    best = probs.argmax(axis=1)
    rows = []
    for p, b, t in zip(probs.tolist(), best.tolist(), truncated):
        rows.append({"label": labels[b], "score": p[b], "scores": dict(zip(labels, p)), "truncated": t})
    return rows


# -- Open Inference Protocol v2 -------------------------------------------------------------
def model_metadata(name: str, labels: list[str], platform: str, per_token: bool = False) -> dict:
    if per_token:
        return {
            "name": name,
            "versions": ["1"],
            "platform": platform,
            "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [
                {"name": "entities", "datatype": "BYTES", "shape": [-1]},
                {"name": "truncated", "datatype": "BOOL", "shape": [-1]},
            ],
            "parameters": {"labels": ",".join(labels), "task": "token-classification"},
        }
    return {
        "name": name,
        "versions": ["1"],
        "platform": platform,
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(labels)]},
            {"name": "truncated", "datatype": "BOOL", "shape": [-1]},
        ],
        "parameters": {"labels": ",".join(labels)},
    }


class InferRequest:
    """A parsed v2 infer request: the texts and which outputs to send back, and how."""

    def __init__(self, texts: list[str], outputs: list[str], binary: dict[str, bool], request_id):
        self.texts = texts
        self.outputs = outputs
        self.binary = binary
        self.id = request_id


def parse_infer(body: bytes, header_length: str | None, max_texts: int, outputs=OUTPUTS) -> InferRequest:
    if header_length is not None:
        if not (header_length.isascii() and header_length.isdigit()):  # int() also takes " 5_0 " and "+50"
            raise BadRequest(f"Inference-Header-Content-Length is not a decimal integer ({header_length[:40]!r})")
        n = int(header_length)
        if not 0 < n <= len(body):
            raise BadRequest(f"Inference-Header-Content-Length {n} does not fit the {len(body)}-byte body")
        doc, blob = load_json(body[:n]), memoryview(body)[n:]
    else:
        doc, blob = load_json(body), memoryview(b"")
    if not isinstance(doc, dict):
        raise BadRequest(f"the infer request must be a JSON object (got {_json_type(doc)})")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("the infer request needs 'inputs': a list with one BYTES tensor named 'text'")
    if len(inputs) != 1:
        raise BadRequest(f"this model takes exactly one input, '{INPUT}' (got {len(inputs)})")
    if not isinstance(inputs[0], dict):
        got = _json_type(inputs[0])
        raise BadRequest(f"the input must be a tensor object {{name, datatype, shape, data}} (got {got})")
    tensor = inputs[0]
    name = tensor.get("name")
    if name != INPUT:
        raise BadRequest(f"unknown input {name!r}: this model's input is '{INPUT}'")
    if tensor.get("datatype") != "BYTES":
        raise BadRequest(f"input '{INPUT}' must have datatype BYTES (got {tensor.get('datatype')!r})")
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        or len(shape) not in (1, 2)
        or len(shape) == 2
        and shape[1] != 1
    ):
        raise BadRequest(f"input '{INPUT}' needs a shape [n] or [n, 1] (got {str(shape)[:80]})")
    count = math.prod(shape)  # Python integers: no int64 wrap-around
    if count > max_texts:
        raise BadRequest(f"too many texts in one request: {count} > {max_texts} (--max-texts)", 413)
    params = _params(tensor, f"input '{INPUT}'")
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size > len(blob):
            raise BadRequest(f"binary_data_size {size!r} does not fit the {len(blob)} bytes after the header")
        if size != len(blob):  # the body holds one binary tensor: the rest is not part of the request
            raise BadRequest(f"{len(blob) - size} bytes follow the {size}-byte binary input (binary_data_size)")
        texts = _decode_bytes(blob[:size], count)
    else:
        data = tensor.get("data")
        if data is None:
            raise BadRequest(f"input '{INPUT}' has neither 'data' nor binary data")
        if not isinstance(data, list):
            raise BadRequest(f"input '{INPUT}' data must be a list of strings (got {_json_type(data)})")
        texts = _flatten(data, shape)
        if len(texts) != count:
            raise BadRequest(f"input '{INPUT}' has {len(texts)} elements but its shape {shape} says {count}")
    texts = check_texts(texts, max_texts, where=f"{INPUT}")
    names, binary = _requested_outputs(doc, tuple(outputs))
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(f"'id' must be a string (got {_json_type(request_id)})")
    if request_id is not None:
        try:
            request_id.encode("utf-8")  # it is sent back: a lone surrogate (\ud800) cannot be
        except UnicodeEncodeError as exc:
            raise BadRequest(f"'id' is not valid Unicode (lone surrogate at character {exc.start})") from None
    return InferRequest(texts, names, binary, request_id)


def _params(obj: dict, where: str) -> dict:
    """``obj``'s ``parameters`` (an object, or absent)."""
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise BadRequest(f"{where} parameters must be an object (got {_json_type(params)})")
    return params


def _flag(params: dict, key: str, default: bool, where: str) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{where} parameter {key} must be true or false (got {_json_type(value)})")
    return value


def _flatten(data: list, shape: list[int]) -> list:
    """The elements of a tensor's ``data``, flat (row-major) or nested as its shape: [n] takes a flat
    list, [n, 1] a flat list or n lists of one element each."""
    if any(isinstance(x, list) for x in data):
        if len(shape) != 2 or not all(isinstance(x, list) and len(x) == shape[1] for x in data):
            raise BadRequest(f"input '{INPUT}' data is nested other than its shape {shape} says")
        return [y for x in data for y in x]
    return data


def _decode_bytes(buf: memoryview, count: int) -> list[str]:
    texts, off = [], 0
    for i in range(count):
        if off + 4 > len(buf):
            raise BadRequest(f"binary BYTES tensor ends inside element {i} (expected {count} elements)")
        (n,) = struct.unpack_from("<I", buf, off)
        off += 4
        if off + n > len(buf):
            raise BadRequest(f"binary BYTES element {i} says {n} bytes but only {len(buf) - off} are left")
        try:
            texts.append(bytes(buf[off : off + n]).decode("utf-8"))
        except UnicodeDecodeError:
            raise BadRequest(f"text {i} is not valid UTF-8") from None
        off += n
    if off != len(buf):
        raise BadRequest(f"binary BYTES tensor has {len(buf) - off} bytes after its {count} elements")
    return texts


def _no_classification(params: dict, where: str) -> None:
    """Triton's classification extension (top-k "score:index:label" strings) is not served: asked
    for, it would be ignored, and a client would read the raw tensor as what it asked for."""
    if "classification" in params:
        raise BadRequest(
            f"{where} asks for the classification extension, which this server does not offer; read the "
            "'label' and 'probabilities' outputs instead"
        )


def _requested_outputs(doc: dict, known: tuple[str, ...] = OUTPUTS) -> tuple[list[str], dict[str, bool]]:
    request = _params(doc, "request")
    _no_classification(request, "the request")
    default_binary = _flag(request, "binary_data_output", False, "request")
    req = doc.get("outputs")
    if req is None:
        return list(known), {o: default_binary for o in known}
    if not isinstance(req, list) or not req:
        raise BadRequest("'outputs' must be a non-empty list of {\"name\": ...} objects (or left out for all)")
    names, binary = [], {}
    for o in req:
        name = o.get("name") if isinstance(o, dict) else None
        if name not in known:
            raise BadRequest(f"unknown output {str(name)[:40]!r}: this model's outputs are {', '.join(known)}")
        if name in binary:
            raise BadRequest(f"output {name!r} is asked for twice")
        names.append(name)
        params, where = _params(o, f"output {name!r}"), f"output {name!r}"
        _no_classification(params, where)
        binary[name] = _flag(params, "binary_data", default_binary, where)
    return names, binary


def infer_response(
    req: InferRequest,
    model: str,
    labels: list[str],
    probs,
    truncated: list[bool],
    entities: list[list[dict]] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of the v2 answer: JSON, or JSON header + binary tensors where asked.

    ``entities`` (token classification): the ``entities`` output, one JSON array per text.
    """
    n = len(req.texts)
    if entities is not None:
        tensors = {
            "entities": ("BYTES", [n], [json.dumps(e, separators=(",", ":")) for e in entities]),
            "truncated": ("BOOL", [n], truncated),
        }
    else:
        best = probs.argmax(axis=1)
        tensors = {
            "label": ("BYTES", [n], [labels[int(b)] for b in best]),
            "probabilities": ("FP32", [n, probs.shape[1]], probs),
            "truncated": ("BOOL", [n], truncated),
        }
    outputs, blobs = [], []
    for name in req.outputs:
        dtype, shape, value = tensors[name]
        out = {"name": name, "datatype": dtype, "shape": shape}
        if req.binary.get(name):
            raw = _encode_binary(dtype, value)
            out["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            out["data"] = value.reshape(-1).tolist() if isinstance(value, np.ndarray) else list(value)
        outputs.append(out)
    doc = {"model_name": model, "model_version": "1", "outputs": outputs}
    if req.id is not None:
        doc["id"] = req.id
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(head)),
    }


def _encode_binary(dtype: str, value) -> bytes:
    if dtype == "FP32":
        return np.ascontiguousarray(value, dtype="<f4").tobytes()
    if dtype == "BOOL":
        return np.asarray(value, dtype=np.bool_).tobytes()
    parts = []
    for s in value:
        b = s.encode("utf-8")
        parts.append(struct.pack("<I", len(b)) + b)
    return b"".join(parts)
