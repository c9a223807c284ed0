"""Typed router configuration: load YAML, apply environment overrides, validate at start-up.

Environment overrides live here and only here. A variable named
``TIERED_ROUTER__<key>__<key>...`` replaces that key of the YAML tree, its value
parsed as YAML (so ``TIERED_ROUTER__server__port=9000`` is an int and
``TIERED_ROUTER__redis__url=redis://host:6379/0`` a string). Every error names
the file, the key and the reason.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import msgspec
import yaml
from msgspec import Meta

from router.core.schema import ConfigError as ConfigError
from router.core.schema import Seconds as Seconds
from router.core.schema import Strict as Strict
from router.core.schema import Unit as Unit
from router.core.schema import decode_struct as decode_struct
from router.core.serving import ServerConfig as ServerConfig
from router.core.workers import WorkerConfig, var_dir

ENV_PREFIX = "TIERED_ROUTER__"
CLASSIFIER_KINDS = ("static", "heuristic", "embedding")
Capability = Literal["tools", "response_format", "logprobs", "penalties", "logit_bias", "n"]
"""What a tier may honour beyond plain chat (router.decide.capabilities maps request parameters onto these)."""
CAPABILITIES: tuple[Capability, ...] = get_args(Capability)
TelemetrySource = Literal["ours", "vllm", "tgi", "ollama", "none"]
"""Where pre-flight reads a tier's load from (router.dispatch.telemetry)."""


class LimitsConfig(Strict, frozen=True):
    """What one chat request may carry; beyond it, a 400 (or 413 for the body) naming the limit."""

    max_messages: Annotated[int, Meta(ge=1)] = 512
    max_content_chars: Annotated[int, Meta(ge=1)] = 400_000
    """All message text together."""
    max_tokens: Annotated[int, Meta(ge=1)] = 32_768
    """The largest `max_tokens` / `max_completion_tokens` accepted."""


class EmbeddingsConfig(Strict, frozen=True):
    """`POST /v1/embeddings`: served by the router's all-minilm-l6-v2, or by a configured tier."""

    aliases: list[str] = []
    """Other model names answered by the router's MiniLM too (e.g. `text-embedding-3-small`, for clients that
    hard-code one)."""
    tiers: dict[str, str] = {}
    """Model name -> tier: a request naming that model is sent to the tier's own `/embeddings` (its base URL, key
    and timeouts; a vLLM or TGI embedding server, or the remote API), the model name as the client sent it.
    Any model neither here, nor an alias, nor all-minilm-l6-v2 is a 404 `model_not_found`."""


class ApiKey(Strict, frozen=True):
    name: str
    sha256: Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]
    """The key's SHA-256, hex (`tiered-router hash-key`): keys are never stored in clear."""
    group: str | None = None
    """Rules can match it (`when: {key_group: [...]}`)."""
    tiers: list[str] | None = None
    """Tiers this key may use (None: all); a decision is moved along its chain to an allowed tier."""
    force_tiers: bool = False
    """May this key choose its tier: `model` naming a tier, or a rule matching request `headers` (x-tier)?
    Without it such a request is a 403, and header rules do not match for it."""
    rpm: Annotated[int, Meta(ge=0)] = 0
    """Requests per minute (0: no limit)."""
    tpm: Annotated[int, Meta(ge=0)] = 0
    """Tokens per minute: counted at admission as prompt estimate + max_tokens, the unused rest given back
    when the request ends (0: no limit)."""


class AuthConfig(Strict, frozen=True):
    enabled: bool = False
    """Require `Authorization: Bearer <key>` on /v1/*. Off by default (the local demo)."""
    keys: list[ApiKey] = []
    redis_keys: bool = True
    """Also look keys up in Redis (`<prefix>keys:<sha256>` holding the same fields as JSON), when Redis is set."""
    worker_token_env: str | None = None
    """The environment variable holding a token the router sends to workers and workers require."""
    fail_open: bool = False
    """When the rate limiter's store (Redis) is down: let requests through (true) or answer 503 (false)."""
    failed_keys_per_minute: Annotated[int, Meta(ge=1)] = 20
    """Invalid or missing keys accepted from one client address per minute; beyond, its requests get 429 (with
    Retry-After) before any key is looked at, until the minute has passed."""
    max_streams_per_key: Annotated[int, Meta(ge=1)] = 64
    """Streams one key may hold open at once (each holds a connection to a tier); beyond, 429."""


class Timeouts(Strict, frozen=True):
    connect: Seconds = 2.0
    first_byte: Seconds = 60.0
    between_chunks: Seconds = 60.0
    total: Seconds = 600.0
    pool: Seconds = 1.0
    """How long a request waits for a free connection of the tier's pool (`max_connections`) before the tier counts
    as unavailable and the chain moves on (never past the fallback deadline)."""


class RetryConfig(Strict, frozen=True):
    """Retries of failures before the first byte (429, 5xx, refused, timed out), with jittered backoff."""

    attempts: Annotated[int, Meta(ge=0, le=10)] = 3
    backoff_s: Seconds = 0.2
    """The first wait; doubled each retry (with jitter) up to `max_backoff_s`."""
    max_backoff_s: Seconds = 5.0
    max_retry_after_s: Annotated[float, Meta(ge=0)] = 10.0
    """A `Retry-After` longer than this is not waited for: the request moves on (or fails) at once."""


class BreakerConfig(Strict, frozen=True):
    failures: Annotated[int, Meta(ge=1)] = 5
    """Consecutive failures that open the breaker (requests then skip the tier at once)."""
    reset_s: Seconds = 30.0
    """How long it stays open before one probe request may try again (half-open)."""


class TierConfig(Strict, frozen=True):
    base_url: str
    model: str
    kind: Literal["worker", "remote"] = "worker"
    api_key_env: str | None = None
    guardrails: bool = False
    fallback: list[str] = []
    timeouts: Timeouts = Timeouts()
    max_connections: Annotated[int, Meta(ge=1)] = 256
    retry: RetryConfig | None = None
    breaker: BreakerConfig | None = None
    max_concurrency: Annotated[int, Meta(ge=1)] | None = None
    """Requests in flight to this tier at most (a stream counts until it ends); others wait, within the deadline."""
    continuation_body: dict[str, Any] = {}
    """Extra request fields when this tier continues a stream another tier broke off (the text so far is sent
    as a final assistant message), e.g. `{continue_final_message: true, add_generation_prompt: false}` for vLLM
    (what worker tiers get when this is empty)."""
    capabilities: list[Capability] | None = None
    """What this tier honours of `tools` (with `tool_choice`), `response_format` (json_object, json_schema),
    `logprobs` (with `top_logprobs`), `penalties` (presence, frequency), `logit_bias` and `n` (> 1). A request
    needing one it lacks skips the tier (to the next of its chain that has it; none: a 400 naming the
    parameter). Unset: a remote tier honours all of them, a worker tier none (our workers do not yet)."""
    discover_from: list[str] = []
    """Where workers found through Redis heartbeats may be: hosts, IP addresses or CIDR ranges (`10.0.0.0/8`,
    `worker-large`) their URL's host must match. Empty: only the static `base_url` itself is taken from a
    heartbeat (its telemetry is used); any other URL is ignored and counted, since anyone who can write to Redis
    could otherwise point the tier's traffic at a server of theirs."""
    context_window: Annotated[int, Meta(ge=1)] | None = None
    """Tokens of prompt and generation together. A worker tier's own telemetry (its `max_seq_len`) wins over
    this; a remote tier has only this. A request (prompt estimate + max_tokens) beyond it skips the tier;
    unset and unreported: unknown, the tier is tried."""

    telemetry: TelemetrySource | None = None
    """Where pre-flight reads this tier's memory, queue and context window: `ours` (our workers' heartbeats in Redis,
    else their `/v1/memory`), `vllm` (its `/metrics` and `/v1/models`), `tgi` (its `/metrics` and `/info`), `ollama`
    (its `/api/ps`), polled every `discovery.interval_s`; `none`: never checked, always tried. Unset: `ours` for a
    worker tier, `none` for a remote one. A vLLM, TGI or Ollama server is a `kind: remote` tier (its key, if any, in
    `api_key_env`) with this set."""

    def telemetry_source(self) -> TelemetrySource:
        if self.telemetry is not None:
            return self.telemetry
        return "ours" if self.kind == "worker" else "none"

    def capable(self) -> frozenset[Capability]:
        """The capabilities it honours: as declared, else all for a remote tier and none for a worker."""
        if self.capabilities is not None:
            return frozenset(self.capabilities)
        return frozenset(CAPABILITIES) if self.kind == "remote" else frozenset()


class ClassifierConfig(Strict, frozen=True):
    kind: str = "static"
    threshold: Unit = 0.5
    calibration: str | None = None
    max_chars: Annotated[int, Meta(ge=256)] = 32_000
    embedding_weights: str | None = None
    static_weights: str | None = None
    """The static classifier's head (JSON); default: the shipped router/data/static_classifier.json."""
    static_table: str | None = None
    """Its token table (npz), which must be the one the head was trained on; default: router/data/static_tokens.npz."""


class ScoreRange(Strict, frozen=True):
    min: float | None = None
    max: float | None = None

    def contains(self, value: float) -> bool:
        """Half-open: `min <= value < max`, either bound optional."""
        return (self.min is None or value >= self.min) and (self.max is None or value < self.max)


class Match(Strict, frozen=True):
    score: ScoreRange | None = None
    complexity: Literal["simple", "complex"] | None = None
    prompt_tokens: ScoreRange | None = None
    last_user_regex: str | None = None
    model: list[str] | None = None
    has_tools: bool | None = None
    has_response_format: bool | None = None
    headers: dict[str, str] | None = None
    key_group: list[str] | None = None

    def is_empty(self) -> bool:
        return self == Match()


class Rule(Strict, frozen=True):
    name: str
    tier: str
    when: Match = Match()
    guardrails: bool | None = None
    fallback: list[str] | None = None


class RoutingConfig(Strict, frozen=True):
    allow_forced_tier: bool = True
    fallback_deadline_s: Seconds = 30.0
    """How long a request may spend on refusals, retries and fallbacks before its first byte."""
    mid_stream: Literal["continue", "error"] = "continue"
    """A stream whose tier fails after tokens were sent: continue it on the next tier of the chain, with the
    text so far as an assistant prefix, or end it with an error event. Never cut silently."""
    preflight: bool = True
    """Skip a worker tier whose telemetry says the request would not fit in its free GPU memory."""
    max_queue_wait_s: Seconds | None = None
    """With pre-flight on: skip a worker where a request would wait longer than this for its first token (predicted
    from its queue, batch and recent step time: router.dispatch.wait), for the next tier of the chain; the
    worker is still waited on if the rest of the chain cannot answer. Unset: requests wait in a worker's queue
    however long it is (they never go to the paid remote for being slow)."""


class LoggingConfig(Strict, frozen=True):
    prompts: bool = False
    """Put the last user message (up to 2,000 characters) in the access log. Off: prompts never reach logs."""


class ReloadConfig(Strict, frozen=True):
    """Hot reload of rules, thresholds and routing settings: on SIGHUP, and on file change when `watch`."""

    watch: bool = True
    poll_s: Seconds = 1.0


class DiscoveryConfig(Strict, frozen=True):
    """Worker telemetry: heartbeats in Redis (when `redis.url` is set) or polling each worker's /v1/memory."""

    interval_s: Seconds = 0.5
    stale_after_s: Seconds = 3.0
    """Telemetry older than this counts as unknown: the router tries the worker and reacts to its answer."""
    poll: bool = True
    """Without Redis, poll `/v1/memory` of each worker tier's base_url."""


class RedisConfig(Strict, frozen=True):
    url: str | None = None
    prefix: str = "tiered-router:"


class GuardrailsConfig(Strict, frozen=True):
    """The guard stage (router.guard): NeMo Guardrails on each hop of a request's chain (see `scope`)."""

    path: str = "guardrails"
    """The NeMo Guardrails config directory (config.yml, rails.co, prompts.yml), relative to this file."""
    refusal: str = "I'm sorry, but I can't help with that request."
    on_error: Literal["block", "allow"] = "block"
    """What a rail that raises or times out means: `block` fails closed."""
    timeout_s: Seconds = 5.0
    scope: Literal["guarded-tiers", "all"] = "guarded-tiers"
    """Which hops get the full rails (every input rail, the output rails): those to tiers with `guardrails: true`
    (and every hop of a request whose rule says `guardrails: true`), or every hop. Whatever the scope, the
    LLM-free input rails screen every request once a guard is loaded, so a flagged request is never served by an
    unguarded tier because it looked simple."""
    speculative: bool = True
    """Start generating on a local tier while input rails run; nothing is released before they pass."""
    speculative_remote: bool = False
    """The same for remote tiers. Off: nothing is sent to a remote tier before the input rails pass, so a
    blocked prompt never reaches a third party."""
    max_scan_chars: Annotated[int, Meta(ge=1024)] = 16_384
    """The input rails read at most this many characters of each piece of client text: its start and its end
    (an instruction hidden after padding sits at the end)."""
    stream_chunk_chars: Annotated[int, Meta(ge=1)] = 64
    """Streams: output rails re-check the text each time this many new characters have arrived."""
    hold_back_chars: Annotated[int, Meta(ge=0)] = 0
    """Streams: characters always kept back from the client beyond what the pattern rails hold."""
    self_check_tier: str = "small"
    """The tier that answers NeMo's own LLM calls (self check input/output): never the 7B."""
    prune_flows: bool = True
    """Drop NeMo library flows the configured rails never reach from the Colang runtime (faster checks)."""
    compile_flows: bool = True
    """Run flows that are one `llm_free_checks` call and a refusal directly, not through Colang."""


class Config(Strict, frozen=True):
    tiers: dict[str, TierConfig]
    rules: list[Rule]
    server: ServerConfig = ServerConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    routing: RoutingConfig = RoutingConfig()
    redis: RedisConfig = RedisConfig()
    discovery: DiscoveryConfig = DiscoveryConfig()
    reload: ReloadConfig = ReloadConfig()
    limits: LimitsConfig = LimitsConfig()
    auth: AuthConfig = AuthConfig()
    logging: LoggingConfig = LoggingConfig()
    guardrails: GuardrailsConfig = GuardrailsConfig()
    embeddings: EmbeddingsConfig = EmbeddingsConfig()
    workers: dict[str, dict[str, Any]] = {}
    """Per-tier worker settings, decoded by :meth:`worker` (validated at load too)."""
    source: str = ""
    """The file this config came from (set by the loader, used in messages and relative paths)."""

    def resolve_path(self, relative: str) -> Path:
        base = Path(self.source).parent if self.source else Path.cwd()
        return (base / relative).resolve()

    def worker(self, tier: str) -> WorkerConfig:
        """The decoded `workers.<tier>` section; errors name the file and key."""
        raw: Any = self.workers.get(tier)
        if raw is None:
            known = ", ".join(sorted(self.workers)) or "none"
            raise ConfigError(
                self.source, f"workers.{tier}", f"no worker configured for tier '{tier}' (configured: {known})"
            )
        worker = decode_struct(raw, WorkerConfig, self.source, prefix=f"workers.{tier}")
        if worker.max_tokens_default > worker.max_tokens_cap:
            raise ConfigError(self.source, f"workers.{tier}.max_tokens_default", "must not exceed max_tokens_cap")
        if worker.max_tokens_cap >= worker.max_seq_len:
            raise ConfigError(self.source, f"workers.{tier}.max_tokens_cap", "must be below max_seq_len")
        if worker.vram.simulate_shared_path is not None and worker.vram.simulate_total_bytes is None:
            raise ConfigError(
                self.source, f"workers.{tier}.vram.simulate_shared_path", "needs vram.simulate_total_bytes"
            )
        return worker

    def checkpoint_root(self, worker: WorkerConfig) -> Path:
        """Where a worker's generated checkpoints are built: its `checkpoint_dir` (relative to this file), else
        `checkpoints/` under the var directory."""
        if worker.checkpoint_dir is None:
            return var_dir() / "checkpoints"
        return self.resolve_path(worker.checkpoint_dir)

    def compile_cache_root(self, worker: WorkerConfig) -> Path:
        """Where a worker's torch.compile caches live: its `compile_cache_dir` (relative to this file), else
        `compile-cache/` under the var directory."""
        if worker.compile_cache_dir is None:
            return var_dir() / "compile-cache"
        return self.resolve_path(worker.compile_cache_dir)


class Calibration(Strict, frozen=True):
    classifier: str
    threshold: Unit
    small_share: Unit
    prompts: int
    achieved_share: Unit = 0.0


def load_config(path: str | Path, environ: Mapping[str, str] | None = None, *, calibrated: bool = True) -> Config:
    """Read, override from the environment, decode and validate; raise `ConfigError` on any problem.

    With `calibrated=False` the calibration file is not applied (what `tiered-router calibrate` needs).
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(path, "(file)", f"cannot read: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(path, "(file)", f"not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(path, "(root)", "expected a mapping at the top level")
    _apply_env_overrides(raw, os.environ if environ is None else environ, path)
    raw["source"] = str(path)
    if isinstance(raw.get("tiers"), dict):
        # Decoded one by one first: msgspec names a bad dict entry `[...]`, we want `tiers.<name>`.
        for name, tier in raw["tiers"].items():
            try:
                decode_struct(tier, TierConfig, path, prefix=f"tiers.{name}")
            except ConfigError as exc:
                if ".capabilities[" not in exc.key:
                    raise
                raise ConfigError(path, exc.key, f"{exc.reason} (known: {', '.join(CAPABILITIES)})") from exc
    config = decode_struct(raw, Config, path)
    validate(config)
    return apply_calibration(config) if calibrated else config


def validate(config: Config) -> None:
    """Cross-field checks msgspec cannot express: tier references, regexes, the default rule."""
    src = config.source
    tiers = set(config.tiers)
    if not tiers:
        raise ConfigError(src, "tiers", "at least one tier is required")
    for name in tiers:
        if name == "auto":
            raise ConfigError(src, "tiers.auto", "'auto' is reserved for routing")
    for name, tier in config.tiers.items():
        if not tier.base_url.startswith(("http://", "https://")):
            raise ConfigError(src, f"tiers.{name}.base_url", f"must be an http(s) URL, got {tier.base_url!r}")
        _check_chain(src, f"tiers.{name}.fallback", tier.fallback, tiers, own=name)
        for i, allowed in enumerate(tier.discover_from):
            if not _host_pattern(allowed):
                raise ConfigError(
                    src, f"tiers.{name}.discover_from[{i}]", f"not a host, IP address or CIDR: {allowed!r}"
                )
        if tier.capabilities is not None and len(set(tier.capabilities)) != len(tier.capabilities):
            raise ConfigError(src, f"tiers.{name}.capabilities", "a capability appears twice")
        if tier.telemetry == "ours" and tier.kind != "worker":
            raise ConfigError(src, f"tiers.{name}.telemetry", "'ours' reads our workers: the tier must be kind: worker")
    if config.classifier.kind not in CLASSIFIER_KINDS:
        raise ConfigError(
            src,
            "classifier.kind",
            f"unknown classifier {config.classifier.kind!r} (known: {', '.join(CLASSIFIER_KINDS)})",
        )
    if not config.rules:
        raise ConfigError(src, "rules", "at least one rule is required, the last being the default")
    seen: set[str] = set()
    for i, rule in enumerate(config.rules):
        key = f"rules[{i}]"
        if rule.name in seen:
            raise ConfigError(src, f"{key}.name", f"duplicate rule name {rule.name!r}")
        seen.add(rule.name)
        if rule.tier not in tiers:
            raise ConfigError(src, f"{key}.tier", f"unknown tier {rule.tier!r} (defined: {', '.join(sorted(tiers))})")
        if rule.fallback is not None:
            _check_chain(src, f"{key}.fallback", rule.fallback, tiers, own=rule.tier)
        _check_match(src, f"{key}.when", rule.when)
    for model, served_by in config.embeddings.tiers.items():
        if served_by not in tiers:
            defined = ", ".join(sorted(tiers))
            raise ConfigError(src, f"embeddings.tiers.{model}", f"unknown tier {served_by!r} (defined: {defined})")
        if model in config.embeddings.aliases:
            raise ConfigError(src, f"embeddings.tiers.{model}", "is also in embeddings.aliases (served locally)")
    if config.guardrails.self_check_tier not in tiers:
        raise ConfigError(src, "guardrails.self_check_tier", f"unknown tier {config.guardrails.self_check_tier!r}")
    names: set[str] = set()
    for i, api_key in enumerate(config.auth.keys):
        if api_key.name in names:
            raise ConfigError(src, f"auth.keys[{i}].name", f"duplicate key name {api_key.name!r}")
        names.add(api_key.name)
        unknown = [t for t in api_key.tiers or [] if t not in tiers]
        if unknown:
            raise ConfigError(src, f"auth.keys[{i}].tiers", f"unknown tier(s) {unknown}")

    for name in config.workers:
        if name not in tiers:
            raise ConfigError(src, f"workers.{name}", f"no tier named '{name}' (defined: {', '.join(sorted(tiers))})")
        config.worker(name)
    if not config.rules[-1].when.is_empty():
        raise ConfigError(
            src,
            f"rules[{len(config.rules) - 1}].when",
            "the last rule is the default and must match everything (no 'when')",
        )
    for i, rule in enumerate(config.rules[:-1]):
        if rule.when.is_empty():
            raise ConfigError(
                src, f"rules[{i}].when", "only the last rule may match everything; the rules after it would never run"
            )


def apply_calibration(config: Config) -> Config:
    """Replace the classifier threshold with the one a `tiered-router calibrate` run wrote."""
    if config.classifier.calibration is None:
        return config
    path = config.resolve_path(config.classifier.calibration)
    key = "classifier.calibration"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(config.source, key, f"cannot read calibration file {path}: {exc}") from exc
    calibration = decode_struct(raw, Calibration, path)
    if calibration.classifier != config.classifier.kind:
        raise ConfigError(
            config.source,
            key,
            f"{path} was calibrated for the {calibration.classifier!r} classifier, not {config.classifier.kind!r}",
        )
    classifier = msgspec.structs.replace(config.classifier, threshold=calibration.threshold)
    return msgspec.structs.replace(config, classifier=classifier)


def _host_pattern(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
        return True
    except ValueError:
        return re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", text) is not None


def _check_chain(src: str, key: str, chain: list[str], tiers: set[str], *, own: str) -> None:
    for tier in chain:
        if tier not in tiers:
            raise ConfigError(src, key, f"unknown tier {tier!r} in the fallback chain")
        if tier == own:
            raise ConfigError(src, key, f"tier {own!r} cannot fall back to itself")
    if len(set(chain)) != len(chain):
        raise ConfigError(src, key, "a tier appears twice in the fallback chain")


def _check_match(src: str, key: str, match: Match) -> None:
    patterns = {
        "last_user_regex": match.last_user_regex,
        **{f"headers.{h}": p for h, p in (match.headers or {}).items()},
    }
    for field, pattern in patterns.items():
        if pattern is None:
            continue
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(src, f"{key}.{field}", f"invalid regular expression {pattern!r}: {exc}") from exc
    for field, bounds in (("score", match.score), ("prompt_tokens", match.prompt_tokens)):
        if bounds and bounds.min is not None and bounds.max is not None and bounds.min >= bounds.max:
            raise ConfigError(src, f"{key}.{field}", f"min ({bounds.min}) must be below max ({bounds.max})")


def _apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str], path: Path) -> None:
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [k for k in name[len(ENV_PREFIX) :].split("__") if k]
        if not keys:
            continue
        node: Any = raw
        for key in keys[:-1]:
            child = node.get(key) if isinstance(node, dict) else None
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ConfigError(path, ".".join(keys), f"environment variable {name} overrides inside a non-mapping")
            node = child
        try:
            node[keys[-1]] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(path, ".".join(keys), f"environment variable {name} is not valid YAML: {exc}") from exc


def worker_token(config: Config, environ: Mapping[str, str] | None = None) -> str | None:
    """The router-to-worker token (`auth.worker_token_env`); a named but unset variable stops start-up."""
    name = config.auth.worker_token_env
    if not name:
        return None
    token = (os.environ if environ is None else environ).get(name)
    if not token:
        raise ConfigError(config.source, "auth.worker_token_env", f"the environment variable {name} is not set")
    return token
