"""Builds small random-weight causal-LM checkpoints (Llama / Qwen2) with a locally trained ChatML tokenizer.

The checkpoints are real transformers architectures saved with ``save_pretrained``, so the workers load them
offline through ``AutoTokenizer.from_pretrained`` / ``AutoModelForCausalLM.from_pretrained`` exactly as they
would load a hub model. The weights are random (seeded), so the text they generate is gibberish: they exist to
exercise the loading, chat-templating, generation and quantisation paths, not to answer questions.

The tokenizer is a byte-level BPE trained in-process on the prompts the project ships
(``router/data/labelled_prompts.jsonl``) plus a few built-in sentences; training takes well under a second.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from transformers import PreTrainedConfig, PreTrainedTokenizerFast

__all__ = [
    "DEMO_SPECS",
    "SHAPES",
    "SPEC_MARKER",
    "CheckpointSpec",
    "build_checkpoint",
    "build_shaped_checkpoint",
    "build_tokenizer",
    "ensure_demo_checkpoints",
]

#: Written last into a built checkpoint directory; holds the spec it was built from (see :func:`build_checkpoint`).
SPEC_MARKER = "tiered-router-spec.json"
#: Bump when the build recipe changes in a way that should invalidate checkpoints built by older code.
_FORMAT_VERSION = 1

PAD_TOKEN = "<|endoftext|>"  # also bos, as in Qwen2's config.json
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, IM_START, IM_END)

#: ChatML. ``content`` may be a string or a list of OpenAI-style parts (the text parts are concatenated).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set content = message['content'] -%}"
    "{%- elif message['content'] is none -%}"
    "{%- set content = '' -%}"
    "{%- else -%}"
    "{%- set ns = namespace(text='') -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part is string -%}{%- set ns.text = ns.text + part -%}"
    "{%- elif part['type'] == 'text' -%}{%- set ns.text = ns.text + part['text'] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set content = ns.text -%}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' + content + '<|im_end|>' + '\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\n' -}}"
    "{%- endif -%}"
)

_BUILTIN_SENTENCES: tuple[str, ...] = (
    "Hello, world! How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "You are a helpful assistant. Answer the question concisely and accurately.",
    "Sure! Here is a short summary of the main points, followed by an example.",
    "I'm sorry, but I can't help with that request.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 123 1000 2024 3.14159",
    "def main() -> None:\n    print('hello')\n\nif __name__ == '__main__':\n    main()\n",
    "The meeting is scheduled for Monday at 10:30 AM; please bring your notes.",
    "First, preheat the oven to 180 degrees. Then mix the flour, sugar and eggs.",
    "Thank you for your message. Let me think about it step by step.",
)

#: Qwen2's pre-tokenisation split (contractions, letter runs, single digits, punctuation runs, newlines, spaces).
_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

_LABELLED_PROMPTS = Path(__file__).resolve().parent.parent / "router" / "data" / "labelled_prompts.jsonl"


@dataclass(frozen=True)
class CheckpointSpec:
    """Shape of a random-weight checkpoint. ``vocab_size`` counts every token, special tokens included."""

    arch: Literal["llama", "qwen2"]
    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab_size: int  # the tokenizer is trained to exactly this many tokens (incl. special tokens)
    max_positions: int = 4096
    tie_embeddings: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arch not in ("llama", "qwen2"):
            raise ValueError(f"unsupported arch {self.arch!r}; expected 'llama' or 'qwen2'")
        for name in ("hidden_size", "layers", "heads", "kv_heads", "intermediate", "max_positions"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by heads {self.heads}")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads {self.heads} is not divisible by kv_heads {self.kv_heads}")
        minimum = 256 + len(SPECIAL_TOKENS)  # the byte-level alphabet plus the special tokens
        if self.vocab_size < minimum:
            raise ValueError(f"vocab_size must be at least {minimum} for a byte-level tokenizer, got {self.vocab_size}")

    def to_json(self) -> dict[str, Any]:
        """The spec as a JSON-able dict (what the marker file stores)."""
        return dataclasses.asdict(self)


DEMO_SPECS: dict[str, CheckpointSpec] = {
    # ~0.5 M parameters (2.1 MB): loads in ~20 ms once transformers is imported, ~900 tokens/s on 2 CPU cores.
    "small": CheckpointSpec(
        arch="qwen2",
        hidden_size=128,
        layers=2,
        heads=4,
        kv_heads=2,
        intermediate=384,
        vocab_size=1024,
        tie_embeddings=True,
        seed=0,
    ),
    # 4.0 M parameters (16 MB): still tiny, but visibly bigger and slower than "small" (~280 tokens/s on 2 cores).
    "large": CheckpointSpec(
        arch="llama",
        hidden_size=256,
        layers=4,
        heads=8,
        kv_heads=4,
        intermediate=704,
        vocab_size=2048,
        tie_embeddings=False,
        seed=1,
    ),
}


def _corpus() -> Iterator[str]:
    """Every message ``content`` string of the shipped labelled prompts, then the built-in sentences."""
    with _LABELLED_PROMPTS.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            record = json.loads(line)
            for message in record.get("messages", []):
                content = message.get("content")
                if isinstance(content, str) and content:
                    yield content
    yield from _BUILTIN_SENTENCES


def build_tokenizer(vocab_size: int, *, model_max_length: int = 4096) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE with ChatML special tokens to exactly ``vocab_size`` tokens.

    The pipeline (NFC, Qwen2's pre-tokenisation regex, byte-level) is the one ``transformers`` rebuilds for
    ``model_type == "qwen2"`` checkpoints (``Qwen2Tokenizer``), so text is split the same way whichever tokenizer
    class ``AutoTokenizer`` picks on load. Should the corpus run out of merges before the target size, the rest is
    filled with plain vocabulary entries no merge produces (``<reserved_N>``), the way released vocabularies carry
    unused ids. Not special tokens: a tokenizer with ~150k special tokens takes the grammar engine (llguidance)
    minutes to convert, holding the GIL, where this one takes about a second.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(), trainer=trainer)
    backend = _pad_vocab(backend, vocab_size)
    if (size := backend.get_vocab_size(with_added_tokens=True)) != vocab_size:
        raise RuntimeError(f"trained tokenizer has {size} tokens, expected {vocab_size}")

    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        bos_token=PAD_TOKEN,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        unk_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _pad_vocab(backend: Any, vocab_size: int) -> Any:
    from tokenizers import Tokenizer

    size = backend.get_vocab_size(with_added_tokens=True)
    if size >= vocab_size:
        return backend
    data = json.loads(backend.to_str())
    vocab = data["model"]["vocab"]
    vocab.update({f"<reserved_{i}>": size + i for i in range(vocab_size - size)})
    return Tokenizer.from_str(json.dumps(data))


def _model_config(spec: CheckpointSpec, bos_id: int, eos_id: int, pad_id: int) -> PreTrainedConfig:
    import torch

    common: dict[str, Any] = {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "max_position_embeddings": spec.max_positions,
        "tie_word_embeddings": spec.tie_embeddings,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "dtype": torch.float32,
    }
    if spec.arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(**common)
    from transformers import Qwen2Config

    return Qwen2Config(**common, use_sliding_window=False)


def _marker_payload(spec: CheckpointSpec) -> dict[str, Any]:
    """The spec, plus what else decides the files: the recipe version and the tokenizer's training data."""
    corpus = hashlib.sha256(_LABELLED_PROMPTS.read_bytes()).hexdigest()
    return {"format": _FORMAT_VERSION, "spec": spec.to_json(), "corpus_sha256": corpus}


def _is_built(path: Path, spec: CheckpointSpec) -> bool:
    marker = path / SPEC_MARKER
    try:
        stored = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if stored != _marker_payload(spec):
        return False
    required = ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
    return all((path / name).is_file() for name in required)


@contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Silence transformers' "Writing model shards" bar for the (instant) save; restores the previous setting."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def build_checkpoint(path: Path, spec: CheckpointSpec) -> Path:
    """Write a random-weight checkpoint for ``spec`` into ``path`` and return ``path``.

    Writes ``config.json``, ``model.safetensors`` (float32), ``generation_config.json`` and the tokenizer files,
    then the marker file :data:`SPEC_MARKER`. Idempotent: when ``path`` already holds a complete checkpoint built
    from an equal spec (and the same tokenizer corpus) it returns at once; otherwise (no marker, a different spec,
    a changed ``labelled_prompts.jsonl``, missing files) it rebuilds in place.
    The marker is removed first and written last, so an interrupted build is redone on the next call.
    The global torch RNG is left as it was: weights come from a forked generator seeded with ``spec.seed``.
    """
    path = Path(path)
    if _is_built(path, spec):
        return path

    import torch
    from transformers import GenerationConfig, LlamaForCausalLM, PreTrainedModel, Qwen2ForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    (path / SPEC_MARKER).unlink(missing_ok=True)

    tokenizer = build_tokenizer(spec.vocab_size, model_max_length=spec.max_positions)
    if len(tokenizer) != spec.vocab_size:
        raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens, expected {spec.vocab_size}")
    bos_id, eos_id, pad_id = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    if not (isinstance(bos_id, int) and isinstance(eos_id, int) and isinstance(pad_id, int)):
        raise RuntimeError(f"special token ids not resolved: bos={bos_id} eos={eos_id} pad={pad_id}")
    config = _model_config(spec, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)

    model_cls: type[PreTrainedModel] = LlamaForCausalLM if spec.arch == "llama" else Qwen2ForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = model_cls(config).float().eval()  # type: ignore[no-untyped-call]
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id
    )

    with _quiet_progress_bars():
        model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    marker = json.dumps(_marker_payload(spec), indent=2, sort_keys=True) + "\n"
    (path / SPEC_MARKER).write_text(marker, encoding="utf-8")
    return path


def ensure_demo_checkpoints(root: Path) -> dict[str, Path]:
    """Build (or reuse) ``root/"small"`` and ``root/"large"`` from :data:`DEMO_SPECS`; returns tier -> path."""
    root = Path(root)
    return {tier: build_checkpoint(root / tier, spec) for tier, spec in DEMO_SPECS.items()}


SHAPES: dict[str, dict[str, Any]] = {
    # Real model shapes with random weights: real memory and speed, meaningless text (the GPU benchmarks).
    "qwen2.5-1.5b": {
        "arch": "qwen2",
        "hidden_size": 1536,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "intermediate_size": 8960,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    "qwen2.5-7b": {
        "arch": "qwen2",
        "hidden_size": 3584,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "intermediate_size": 18944,
        "vocab_size": 152064,
        "tie_word_embeddings": False,
    },
    "llama-2-7b": {
        "arch": "llama",
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "intermediate_size": 11008,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
    },
}
"""`tiered-router make-checkpoint --shape NAME` and bench/worker_gpu.py build these; `tiny` is DEMO_SPECS["small"]."""


def shaped_config(shape: str, bos_id: int, eos_id: int, pad_id: int) -> tuple[PreTrainedConfig, Any]:
    """The transformers config of a :data:`SHAPES` entry, and the model class to build from it."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    fields = dict(SHAPES[shape])
    arch = fields.pop("arch")
    ids: dict[str, Any] = {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id}
    if arch == "llama":
        return LlamaConfig(**fields, max_position_embeddings=4096, **ids), LlamaForCausalLM
    return Qwen2Config(**fields, max_position_embeddings=32768, **ids), Qwen2ForCausalLM


def build_shaped_checkpoint(path: Path, shape: str, *, device: str = "cpu", dtype: str = "bfloat16") -> Path:
    """A random-weight checkpoint of a real model's shape (:data:`SHAPES`), or ``tiny`` (the demo's small one).

    The tokenizer is trained small (a few thousand tokens) and padded with plain vocabulary entries to the real
    vocabulary (:func:`build_tokenizer`), so every token a random model picks decodes to visible text and reaches a
    client as a stream chunk, and the grammar engine converts it in about a second. Weights are made
    on ``device`` (a 7B model in bf16 takes ~15 GB there) with a fixed seed. Returns at once if ``path`` holds one.
    """
    path = Path(path)
    if shape == "tiny":
        return build_checkpoint(path, DEMO_SPECS["small"])
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r} (known: tiny, {', '.join(SHAPES)})")
    if (path / "config.json").is_file() and any(path.glob("model*.safetensors*")):
        return path

    import torch

    tokenizer = build_tokenizer(SHAPES[shape]["vocab_size"])
    ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    config, model_cls = shaped_config(shape, *ids)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        model = model_cls(config).to(getattr(torch, dtype))
    with _quiet_progress_bars():
        model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
