"""sentence-transformers folders: reading a teacher's embedding pipeline, writing a student's.

A sentence-transformers model is a Hugging Face checkpoint folder plus files that describe what
turns token states into one sentence embedding: `modules.json` (the pipeline), a Pooling module's
config, `sentence_bert_config.json` (max length, lowercasing) and, optionally, a Normalize module
and `config_sentence_transformers.json` (prompts, similarity function). We support the pipeline
that embedding models built on an encoder use: Transformer (the checkpoint at the folder's root)
-> Pooling -> optional Normalize. Anything else (Dense projections, routers, multi-vector
outputs, a Transformer in a subfolder...) is refused with the reason, because a student written
without it would load but compute other embeddings.

`read_sentence_transformers(path)` gives a `SentenceEmbeddingConfig` (or None for a plain
checkpoint); `write_sentence_transformers(path, config, embedding_dimension)` writes the files
that make a checkpoint folder load with `SentenceTransformer(path)`. The files are written in
the format every sentence-transformers version from 2.x to 6.x reads (legacy module type names
and pooling keys; 6.x maps them itself), whatever format the teacher folder used. Behaviour
mirrored from sentence-transformers 6.2 (`base/modules/transformer.py`,
`sentence_transformer/modules/pooling.py`, `base/modules/normalize.py`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

from minilm_jax.hf.weights import read_json, read_json_object

MODULES_FILE = "modules.json"
# The Transformer module's config; sentence-transformers still reads the older per-family names.
SBERT_CONFIG_FILES = (
    "sentence_bert_config.json",
    "sentence_roberta_config.json",
    "sentence_distilbert_config.json",
    "sentence_camembert_config.json",
    "sentence_albert_config.json",
    "sentence_xlm-roberta_config.json",
    "sentence_xlnet_config.json",
)
MODEL_CONFIG_FILE = "config_sentence_transformers.json"
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# Pre-6.0 Pooling configs: one bool per mode; active modes are concatenated in this order.
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# Written into a student's modules.json: these names load in sentence-transformers 2.x to 6.x.
_MODULE_TYPES = {
    "Transformer": "sentence_transformers.models.Transformer",
    "Pooling": "sentence_transformers.models.Pooling",
    "Normalize": "sentence_transformers.models.Normalize",
}
# Folders sentence-transformers names f"{index}_{ModuleClass}" (1_Pooling, 2_Normalize, 2_Dense).
_MODULE_FOLDER_RE = re.compile(r"^\d+_[A-Z][A-Za-z0-9]*$")
# The only Transformer-module settings of sentence-transformers 6.x that we reproduce.
_TEXT_MODALITY = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}
# transformers' "no limit" tokenizer length (int(1e30)), capped by the position table.
_VERY_LARGE_LENGTH = int(1e30)


@dataclasses.dataclass(frozen=True)
class SentenceEmbeddingConfig:
    """How token states become a sentence embedding (the Pooling/Normalize part of a
    sentence-transformers pipeline, plus the text preparation of its Transformer module).

    pooling: modes applied to the last hidden state and concatenated in this order; each of
      POOLING_MODES ("cls": first unmasked token, "mean", "max", "mean_sqrt_len_tokens": sum
      over sqrt(length), "weightedmean": position-weighted mean, "lasttoken").
    normalize: L2-normalise the pooled vector (a Normalize module).
    max_seq_length: tokens per text including special tokens; longer texts are truncated.
      None: the model's own limit.
    do_lower_case: lowercase texts before the tokenizer (if its normalizer does not already).
    include_prompt: False excludes a prompt's tokens from pooling (INSTRUCTOR-style models).
    prompts, default_prompt_name: named prompt prefixes; the default one is prepended to every
      text unless another prompt is asked for.
    similarity_fn_name: the similarity sentence-transformers reports ("cosine", "dot", ...).
    """

    pooling: tuple[str, ...] = ("mean",)
    normalize: bool = False
    max_seq_length: int | None = None
    do_lower_case: bool = False
    include_prompt: bool = True
    prompts: tuple[tuple[str, str], ...] = ()
    default_prompt_name: str | None = None
    similarity_fn_name: str | None = None

    def __post_init__(self):
        pooling = (self.pooling,) if isinstance(self.pooling, str) else tuple(self.pooling)
        bad = [m for m in pooling if m not in POOLING_MODES]
        if not pooling or bad:
            raise ValueError(
                f"SentenceEmbeddingConfig.pooling={self.pooling!r}: each mode must be one of "
                f"{POOLING_MODES}"
            )
        object.__setattr__(self, "pooling", pooling)
        prompts = self.prompts.items() if isinstance(self.prompts, dict) else self.prompts
        object.__setattr__(self, "prompts", tuple((str(k), str(v)) for k, v in prompts))
        if self.max_seq_length is not None and (
            not isinstance(self.max_seq_length, int) or self.max_seq_length < 2
        ):
            raise ValueError(
                f"SentenceEmbeddingConfig.max_seq_length={self.max_seq_length!r}: must be an "
                f"int >= 2 or None"
            )
        if self.default_prompt_name is not None and self.default_prompt_name not in dict(
            self.prompts
        ):
            raise ValueError(
                f"SentenceEmbeddingConfig.default_prompt_name={self.default_prompt_name!r} is "
                f"not one of the prompts {list(dict(self.prompts))}"
            )

    @property
    def default_prompt(self) -> str | None:
        """The text prepended to every input by default (None: no prompt)."""
        if self.default_prompt_name is None:
            return None
        return dict(self.prompts)[self.default_prompt_name] or None


# ---------------------------------------------------------------------------------------------
# Reading a teacher
# ---------------------------------------------------------------------------------------------


def is_sentence_transformers(path) -> bool:
    return os.path.isfile(os.path.join(os.fspath(path), MODULES_FILE))


def _unsupported(file: str, what: str) -> ValueError:
    return ValueError(
        f"{file}: {what}; supported sentence-transformers pipelines are Transformer (the "
        f"checkpoint at the folder's root) -> Pooling -> optional Normalize, so a student "
        f"written from this teacher would not compute the same kind of embedding"
    )


def _module_class(entry: Any, file: str) -> str:
    if not (isinstance(entry, dict) and isinstance(entry.get("type"), str) and "path" in entry):
        raise ValueError(f"{file}: each module needs a 'type' and a 'path'; got {entry!r}")
    module_type = entry["type"]
    class_name = module_type.rsplit(".", 1)[-1]
    if not module_type.startswith("sentence_transformers.") or class_name not in _MODULE_TYPES:
        raise _unsupported(file, f"module type {module_type!r} is not supported")
    return class_name


def _module_folder(path: str, entry: dict[str, Any], file: str) -> str:
    sub = entry["path"]
    if not isinstance(sub, str) or os.path.isabs(sub) or ".." in sub.replace("\\", "/").split("/"):
        raise ValueError(f"{file}: module path {sub!r} must be a folder inside the model folder")
    return os.path.join(path, sub)


def _pooling(folder: str, hidden_size: int | None) -> tuple[tuple[str, ...], bool]:
    """(modes, include_prompt) from a Pooling module's config.json (pre-6.0 or 6.x keys)."""
    file = os.path.join(folder, "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file} not found: the Pooling module of modules.json needs it")
    d = dict(read_json_object(file))
    dimension_keys = [k for k in ("embedding_dimension", "word_embedding_dimension") if k in d]
    for key in dimension_keys:
        if hidden_size is not None and d[key] != hidden_size:
            raise _unsupported(
                file, f"{key}={d[key]} differs from the model's hidden_size {hidden_size}"
            )
    include_prompt = d.pop("include_prompt", True)
    if "pooling_mode" in d:
        modes = d.pop("pooling_mode")
        modes = (modes,) if isinstance(modes, str) else tuple(modes or ())
        for key in _LEGACY_POOLING_KEYS:  # sentence-transformers drops them next to pooling_mode
            d.pop(key, None)
    else:
        modes = tuple(mode for key, mode in _LEGACY_POOLING_KEYS.items() if d.pop(key, False))
        modes = modes or ("mean",)  # what sentence-transformers does with every mode off
    unknown = sorted(set(d) - {"embedding_dimension", "word_embedding_dimension"})
    if unknown:
        raise _unsupported(file, f"Pooling settings {unknown} are not supported")
    bad = [m for m in modes if m not in POOLING_MODES]
    if not modes or bad:
        raise ValueError(
            f"{file}: pooling modes {list(modes)}; each must be one of {POOLING_MODES}"
        )
    if not isinstance(include_prompt, bool):
        raise ValueError(f"{file}: include_prompt={include_prompt!r} must be true or false")
    return modes, include_prompt


def _check_normalize(folder: str) -> None:
    file = os.path.join(folder, "config.json")
    if not os.path.isfile(file):
        return  # sentence-transformers < 6 wrote no config: it normalises the sentence embedding
    d = read_json_object(file)
    source = d.get("module_input_name", "sentence_embedding")
    target = d.get("module_output_name") or source
    unknown = sorted(set(d) - {"module_input_name", "module_output_name"})
    if (source, target) != ("sentence_embedding", "sentence_embedding") or unknown:
        raise _unsupported(
            file,
            f"a Normalize module with settings {d} (only the sentence "
            f"embedding's normalisation is supported)",
        )


def _transformer_settings(path: str, model_config: dict[str, Any]) -> tuple[int | None, bool]:
    """(max_seq_length, do_lower_case) as sentence-transformers 6.2's Transformer module
    derives them from sentence_bert_config.json, tokenizer_config.json and config.json."""
    file = next(
        (
            os.path.join(path, n)
            for n in SBERT_CONFIG_FILES
            if os.path.isfile(os.path.join(path, n))
        ),
        os.path.join(path, SBERT_CONFIG_FILES[0]),
    )
    d = dict(read_json_object(file)) if os.path.isfile(file) else {}
    checks = {
        "transformer_task": (d.pop("transformer_task", "feature-extraction"), "feature-extraction"),
        "modality_config": (d.pop("modality_config", _TEXT_MODALITY), _TEXT_MODALITY),
        "module_output_name": (d.pop("module_output_name", "token_embeddings"), "token_embeddings"),
        "processing_kwargs": (d.pop("processing_kwargs", None) or {}, {}),
        "config_kwargs": (d.pop("config_kwargs", None) or d.pop("config_args", None) or {}, {}),
    }
    for key in ("query_length", "document_length", "query_expansion"):
        checks[key] = (d.pop(key, None), None)
    for key, (value, supported) in checks.items():
        if value != supported:
            raise _unsupported(file, f"{key}={value!r} is not supported (only {supported!r})")
    processor = dict(d.pop("processor_kwargs", None) or d.pop("tokenizer_args", None) or {})
    processor.pop("trust_remote_code", None)  # sentence-transformers drops it too
    model_max_length = processor.pop("model_max_length", None)
    if processor:
        raise _unsupported(file, f"tokenizer settings {sorted(processor)} are not supported")
    # Loading options of the PyTorch model (dtype, attention kernel) and of unpadding: they do
    # not change the embeddings.
    for key in ("model_kwargs", "model_args", "unpad_inputs"):
        d.pop(key, None)
    max_seq_length = d.pop("max_seq_length", None)
    do_lower_case = d.pop("do_lower_case", False)
    if d:
        raise _unsupported(file, f"settings {sorted(d)} are not supported")
    if model_max_length is not None:
        max_seq_length = model_max_length  # sentence-transformers gives it priority
    elif max_seq_length is None:  # the tokenizer's limit, capped by the position table
        tokenizer_file = os.path.join(path, "tokenizer_config.json")
        tokenizer_config = (
            read_json_object(tokenizer_file) if os.path.isfile(tokenizer_file) else {}
        )
        max_seq_length = tokenizer_config.get("model_max_length") or _VERY_LARGE_LENGTH
        positions = model_config.get("max_position_embeddings")
        if isinstance(positions, int) and positions > 0:
            max_seq_length = min(max_seq_length, positions)
    if not isinstance(max_seq_length, int) or max_seq_length >= _VERY_LARGE_LENGTH:
        max_seq_length = None
    if not isinstance(do_lower_case, bool):
        raise ValueError(f"{file}: do_lower_case={do_lower_case!r} must be true or false")
    return max_seq_length, do_lower_case


def _model_settings(path: str) -> dict[str, Any]:
    """prompts, default_prompt_name and similarity_fn_name from config_sentence_transformers.json."""
    file = os.path.join(path, MODEL_CONFIG_FILE)
    if not os.path.isfile(file):
        return {}
    d = read_json_object(file)
    if d.get("model_type", "SentenceTransformer") != "SentenceTransformer":
        raise _unsupported(file, f"model_type {d['model_type']!r} is not a SentenceTransformer")
    prompts = d.get("prompts") or {}
    if not isinstance(prompts, dict):
        raise ValueError(f"{file}: prompts must be an object (name -> text), got {prompts!r}")
    return {
        # sentence-transformers fills unset prompts with ""
        "prompts": {k: "" if v is None else v for k, v in prompts.items()},
        "default_prompt_name": d.get("default_prompt_name"),
        "similarity_fn_name": d.get("similarity_fn_name"),
    }


def read_sentence_transformers(path) -> SentenceEmbeddingConfig | None:
    """The embedding pipeline of a sentence-transformers folder; None when `path` has no
    modules.json (a plain checkpoint). Unsupported pipelines raise ValueError naming the file
    and the module or setting."""
    path = os.fspath(path)
    file = os.path.join(path, MODULES_FILE)
    if not os.path.isfile(file):
        return None
    modules = read_json(file)
    if not isinstance(modules, list) or not modules:
        raise ValueError(f"{file}: expected a non-empty list of modules")
    classes = [_module_class(entry, file) for entry in modules]
    if classes not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise _unsupported(file, f"the pipeline is {classes}")
    if modules[0]["path"] not in ("", "."):
        raise _unsupported(
            file,
            f"the Transformer module is in the subfolder {modules[0]['path']!r}, not at the "
            f"folder's root (SentenceTransformer(path).save(new_path) writes it at the root)",
        )
    config_file = os.path.join(path, "config.json")
    model_config = read_json_object(config_file) if os.path.isfile(config_file) else {}
    hidden_size = model_config.get("hidden_size")
    pooling, include_prompt = _pooling(_module_folder(path, modules[1], file), hidden_size)
    if len(modules) == 3:
        _check_normalize(_module_folder(path, modules[2], file))
    max_seq_length, do_lower_case = _transformer_settings(path, model_config)
    try:
        return SentenceEmbeddingConfig(
            pooling=pooling,
            normalize=len(modules) == 3,
            max_seq_length=max_seq_length,
            do_lower_case=do_lower_case,
            include_prompt=include_prompt,
            **_model_settings(path),
        )
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


# ---------------------------------------------------------------------------------------------
# Writing a student
# ---------------------------------------------------------------------------------------------


def sentence_transformers_files(path) -> list[str]:
    """Names of the sentence-transformers files and module folders in the folder `path`
    (what a new export replaces)."""
    path = os.fspath(path)
    names = set(os.listdir(path))
    found = {n for n in names if n in (MODULES_FILE, MODEL_CONFIG_FILE, *SBERT_CONFIG_FILES)}
    found |= {
        n for n in names if _MODULE_FOLDER_RE.match(n) and os.path.isdir(os.path.join(path, n))
    }
    try:
        modules = read_json(os.path.join(path, MODULES_FILE)) if MODULES_FILE in names else []
    except ValueError:
        modules = []  # a broken modules.json is removed itself
    for entry in modules if isinstance(modules, list) else []:
        sub = entry.get("path") if isinstance(entry, dict) else None
        # Only direct subfolders: a module path never takes an export outside its folder.
        if isinstance(sub, str) and sub in names and os.path.isdir(os.path.join(path, sub)):
            found.add(sub)
    return sorted(found)


def _write_json(file: str, value: Any) -> None:
    with open(file, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
        f.write("\n")


def pooling_config_dict(config: SentenceEmbeddingConfig, embedding_dimension: int) -> dict:
    """A Pooling module's config.json: pre-6.0 keys (read by every version) when they can say
    it, i.e. when the modes are in the order those keys concatenate them; 6.x keys otherwise."""
    legacy_order = [m for m in _LEGACY_POOLING_KEYS.values() if m in config.pooling]
    if legacy_order == list(config.pooling):
        d = {"word_embedding_dimension": embedding_dimension}
        d.update({key: mode in config.pooling for key, mode in _LEGACY_POOLING_KEYS.items()})
    else:
        d = {"embedding_dimension": embedding_dimension, "pooling_mode": list(config.pooling)}
    d["include_prompt"] = config.include_prompt
    return d


def write_sentence_transformers(
    path, config: SentenceEmbeddingConfig, embedding_dimension: int
) -> None:
    """Writes modules.json, sentence_bert_config.json, config_sentence_transformers.json and the
    Pooling (and Normalize) module folders into the checkpoint folder `path`, so that
    `SentenceTransformer(path)` runs the checkpoint with `config`'s pooling. `embedding_dimension`
    is the checkpoint's hidden size."""
    path = os.fspath(path)
    modules = [("Transformer", ""), ("Pooling", "1_Pooling")]
    if config.normalize:
        modules.append(("Normalize", "2_Normalize"))
    _write_json(
        os.path.join(path, MODULES_FILE),
        [
            {"idx": i, "name": str(i), "path": sub, "type": _MODULE_TYPES[name]}
            for i, (name, sub) in enumerate(modules)
        ],
    )
    _write_json(
        os.path.join(path, SBERT_CONFIG_FILES[0]),
        {"max_seq_length": config.max_seq_length, "do_lower_case": config.do_lower_case},
    )
    os.makedirs(os.path.join(path, "1_Pooling"), exist_ok=True)
    _write_json(
        os.path.join(path, "1_Pooling", "config.json"),
        pooling_config_dict(config, embedding_dimension),
    )
    if config.normalize:
        os.makedirs(os.path.join(path, "2_Normalize"), exist_ok=True)
        _write_json(
            os.path.join(path, "2_Normalize", "config.json"),
            {"module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"},
        )
    model = {
        "model_type": "SentenceTransformer",
        "prompts": dict(config.prompts),
        "default_prompt_name": config.default_prompt_name,
    }
    if config.similarity_fn_name is not None:
        model["similarity_fn_name"] = config.similarity_fn_name
    _write_json(os.path.join(path, MODEL_CONFIG_FILE), model)
