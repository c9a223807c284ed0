"""Random-weight demo checkpoints: built offline, loaded through the Auto classes, generated from, quantised to NF4."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, Qwen2ForCausalLM

from workers.checkpoints import DEMO_SPECS, SPEC_MARKER, CheckpointSpec, build_checkpoint, ensure_demo_checkpoints

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hello, world! What is 2 + 2?"},
]
CHATML = (
    "<|im_start|>system\nYou are terse.<|im_end|>\n"
    "<|im_start|>user\nHello, world! What is 2 + 2?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
ARCH_CLASSES = {"llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM}


def test_demo_checkpoints_load_offline_through_auto_classes(tmp_path: Path) -> None:
    paths = ensure_demo_checkpoints(tmp_path)
    assert paths == {"small": tmp_path / "small", "large": tmp_path / "large"}
    assert DEMO_SPECS["small"].arch == "qwen2" and DEMO_SPECS["small"].tie_embeddings
    assert DEMO_SPECS["large"].arch == "llama"

    params = {}
    for tier, path in paths.items():
        spec = DEMO_SPECS[tier]
        for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", SPEC_MARKER):
            assert (path / name).is_file(), f"{tier}: {name} missing"
        with safe_open(str(path / "model.safetensors"), framework="pt") as weights:
            assert {weights.get_slice(key).get_dtype() for key in weights.keys()} == {"F32"}  # noqa: SIM118

        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        assert len(tokenizer) == spec.vocab_size == model.config.vocab_size
        assert model.get_input_embeddings().weight.shape == (spec.vocab_size, spec.hidden_size)
        assert model.dtype == torch.float32

        ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}
        assert tokenizer.convert_ids_to_tokens([ids["bos"], ids["eos"], ids["pad"]]) == [
            "<|endoftext|>",
            "<|im_end|>",
            "<|endoftext|>",
        ]
        for source in (model.config, model.generation_config):
            assert (source.bos_token_id, source.eos_token_id, source.pad_token_id) == (
                ids["bos"],
                ids["eos"],
                ids["pad"],
            )
        on_disk = json.loads((path / "generation_config.json").read_text())
        assert (on_disk["bos_token_id"], on_disk["eos_token_id"], on_disk["pad_token_id"]) == tuple(ids.values())

        assert tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False) == CHATML
        parts = [{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}]
        assert tokenizer.apply_chat_template(parts, tokenize=False) == "<|im_start|>user\nHi there<|im_end|>\n"
        encoded = tokenizer("Hello, world! 123")["input_ids"]
        assert encoded[0] != tokenizer.bos_token_id  # no bos prepended: ChatML prompts start with <|im_start|>
        assert tokenizer.decode(encoded) == "Hello, world! 123"
        assert tokenizer.decode(tokenizer("  two  spaces\n\tand a tab")["input_ids"]) == "  two  spaces\n\tand a tab"
        params[tier] = model.num_parameters()
    assert params["large"] > 2 * params["small"]


def test_demo_checkpoints_generate_greedily(tmp_path: Path) -> None:
    for tier, path in ensure_demo_checkpoints(tmp_path).items():
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        assert type(model) is ARCH_CLASSES[DEMO_SPECS[tier].arch]
        inputs = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        prompt_len = inputs["input_ids"].shape[1]
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
            again = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        assert out.shape == (1, prompt_len + 8)
        assert torch.equal(out, again)  # greedy is deterministic
        assert isinstance(tokenizer.decode(out[0, prompt_len:], skip_special_tokens=True), str)


def test_build_checkpoint_is_idempotent_and_rebuilds_on_a_different_spec(tmp_path: Path) -> None:
    spec = CheckpointSpec(arch="qwen2", hidden_size=64, layers=1, heads=2, kv_heads=1, intermediate=128, vocab_size=512)
    path = tmp_path / "tiny"
    assert build_checkpoint(path, spec) == path
    weights = path / "model.safetensors"
    first = weights.stat().st_mtime_ns
    first_bytes = weights.read_bytes()
    assert json.loads((path / SPEC_MARKER).read_text())["spec"]["seed"] == 0

    assert build_checkpoint(path, spec) == path
    assert weights.stat().st_mtime_ns == first

    reseeded = CheckpointSpec(**{**spec.to_json(), "seed": 7})
    build_checkpoint(path, reseeded)
    assert weights.stat().st_mtime_ns != first
    assert weights.read_bytes() != first_bytes  # other seed, other weights
    assert json.loads((path / SPEC_MARKER).read_text())["spec"]["seed"] == 7

    build_checkpoint(path, spec)  # back to seed 0: the very same weights again
    assert weights.read_bytes() == first_bytes

    (path / SPEC_MARKER).unlink()  # an interrupted build leaves no marker: it is redone
    rebuilt_from = weights.stat().st_mtime_ns
    build_checkpoint(path, spec)
    assert weights.stat().st_mtime_ns != rebuilt_from
    assert (path / SPEC_MARKER).is_file()


def test_checkpoint_spec_rejects_impossible_shapes() -> None:
    with pytest.raises(ValueError, match="divisible"):
        CheckpointSpec(arch="llama", hidden_size=100, layers=1, heads=3, kv_heads=1, intermediate=64, vocab_size=512)
    with pytest.raises(ValueError, match="vocab_size"):
        CheckpointSpec(arch="llama", hidden_size=64, layers=1, heads=2, kv_heads=1, intermediate=64, vocab_size=100)


def test_bitsandbytes_nf4_kernels_run_on_cpu(tmp_path: Path) -> None:
    """bitsandbytes' CPU NF4 kernels stay close to the float32 model (every decoder Linear swapped by hand)."""
    import bitsandbytes as bnb

    path = ensure_demo_checkpoints(tmp_path)["large"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    inputs = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        reference = model(**inputs).logits[0, -1].float()

    swapped = 0
    for parent in list(model.model.layers.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear:
                layer = bnb.nn.Linear4bit(
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    compute_dtype=torch.bfloat16,
                    compress_statistics=True,
                    quant_type="nf4",
                )
                layer.weight = bnb.nn.Params4bit(
                    child.weight.data, requires_grad=False, compress_statistics=True, quant_type="nf4"
                )
                setattr(parent, name, layer.to("cpu"))  # moving a Params4bit to a device quantises it
                swapped += 1
    assert swapped == 7 * DEMO_SPECS["large"].layers
    first = model.model.layers[0].self_attn.q_proj
    assert first.weight.bnb_quantized and first.weight.quant_type == "nf4" and first.weight.dtype == torch.uint8

    with torch.inference_mode():
        logits = model(**inputs).logits[0, -1].float()
        out = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert torch.isfinite(logits).all()
    assert torch.nn.functional.cosine_similarity(logits, reference, dim=0) > 0.9  # close to the float32 model
    assert out.shape == (1, inputs["input_ids"].shape[1] + 4)


@pytest.mark.parametrize(("shape", "billions"), [("qwen2.5-1.5b", 1.54), ("qwen2.5-7b", 7.62), ("llama-2-7b", 6.74)])
def test_benchmark_shapes_are_the_real_models(shape: str, billions: float) -> None:
    """The shapes `make-checkpoint` builds have the published parameter counts (counted on the meta device)."""
    import torch

    from workers.checkpoints import shaped_config

    config, model_cls = shaped_config(shape, 1, 2, 2)
    with torch.device("meta"):
        model = model_cls(config)
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, abs=0.01)


def test_make_checkpoint_builds_a_loadable_checkpoint(tmp_path: Path) -> None:
    import subprocess
    import sys

    from router.core.workers import WorkerConfig
    from workers.loader import load_model

    out = tmp_path / "tiny"
    done = subprocess.run(
        [sys.executable, "-m", "router.cli", "make-checkpoint", "--shape", "tiny", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tiny checkpoint (random weights)" in done.stdout
    loaded = load_model(WorkerConfig(model=str(out), device="cpu"), tmp_path)
    assert loaded.model.config.hidden_size == DEMO_SPECS["small"].hidden_size


def test_padded_vocabulary_is_plain_entries_not_special_tokens() -> None:
    """A benchmark-size vocabulary is mostly padding; as ~150k special tokens it took the grammar engine minutes to
    convert (holding the GIL, so the worker answered nothing meanwhile). Padding is plain vocabulary instead."""
    from workers.checkpoints import SPECIAL_TOKENS, build_tokenizer

    tokenizer = build_tokenizer(30_000)
    assert len(tokenizer) == 30_000
    special = [t for t in tokenizer.backend_tokenizer.get_added_tokens_decoder().values() if t.special]
    assert len(special) == len(SPECIAL_TOKENS)
    assert tokenizer.convert_tokens_to_ids("<reserved_0>") < 30_000
    # Text still never produces a padding id.
    ids = tokenizer.encode("<reserved_0> hello <|im_start|>")
    assert "<reserved_0>" not in tokenizer.convert_ids_to_tokens(ids)
