"""The `tiered-router` command: serve the router, run a worker, calibrate or retrain the classifier."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from router.core.config import ConfigError, ServerConfig, load_config
from router.core.logs import configure as configure_logging

DEFAULT_CONFIG = "config/router.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    os.environ.setdefault("NEMO_GUARDRAILS_NO_USAGE_STATS", "1")
    try:
        result: int = args.run(args)
        return result
    except ConfigError as exc:
        print(f"tiered-router: invalid configuration: {exc}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace) -> int:
    from router.api.app import create_app
    from router.guard.rails import Guard
    from router.pipeline import needs_guard

    config = load_config(args.config)
    host = args.host or config.server.host
    port = config.server.port if args.port is None else args.port
    auth = config.auth
    if auth.enabled and not auth.keys and not (auth.redis_keys and config.redis.url):
        raise ConfigError(
            config.source,
            "auth.enabled",
            "auth is on but no key could ever be valid: list keys under auth.keys (`tiered-router hash-key`), "
            "or set redis.url and make them with `tiered-router add-key`",
        )
    # Loaded before serving, so a broken guardrails config stops start-up with a message, not a traceback.
    guard = Guard.load(config) if needs_guard(config) else None
    print(f"tiered-router: serving on http://{host}:{port}/v1 (config {args.config})", flush=True)
    app = create_app(config, guard=guard)
    return _run(app, host, port, args.log_level, config.server)


def _run(app: Any, host: str, port: int, log_level: str, server: ServerConfig | None = None) -> int:
    """Serve an ASGI app (the router or a worker) until stopped, with the bounded graceful shutdown and the
    per-connection limits of `server` (router.api.serving)."""
    import uvicorn

    from router.api.serving import uvicorn_config

    uvicorn.Server(uvicorn_config(app, host, port, server, log_level=log_level)).run()
    return 0


def _worker(args: argparse.Namespace) -> int:
    from workers.app import create_worker_app

    config = load_config(args.config)
    worker = config.worker(args.tier)
    host = args.host or worker.host
    port = worker.port if args.port is None else args.port
    print(f"tiered-router worker '{args.tier}' ({worker.model}) on http://{host}:{port}/v1", flush=True)
    app = create_worker_app(config, args.tier, host=host, port=port)
    return _run(app, host, port, args.log_level, config.server)


def _standin(args: argparse.Namespace) -> int:
    import uvicorn

    from router.devtools.standin import Standin, StandinSettings

    settings = StandinSettings(
        name=args.name,
        chunk_delay_s=args.chunk_delay_ms / 1000,
        response_delay_s=args.delay_ms / 1000,
        fail_status=args.fail_status,
        record=args.record,
        max_words=args.max_words,
    )
    print(f"stand-in '{args.name}' on http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(Standin(settings), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


def _up(args: argparse.Namespace) -> int:
    from router.supervisor import run_stack

    return run_stack(args)


def _calibrate(args: argparse.Namespace) -> int:
    from router.decide.calibrate import run_calibration

    return run_calibration(args)


def _train(args: argparse.Namespace) -> int:
    from router.decide.classify.training import run_training

    return run_training(args)


def _eval(args: argparse.Namespace) -> int:
    from router.devtools.evaluate import run_guard_eval, run_route_eval

    try:
        return run_route_eval(args) if args.kind == "route" else run_guard_eval(args)
    except (OSError, ValueError) as exc:  # a missing or malformed data file
        print(f"tiered-router eval: {exc}", file=sys.stderr)
        return 2


def _train_guard(args: argparse.Namespace) -> int:
    if getattr(args, "model", "minilm") == "ngram":
        from router.guard.ngram_training import run_ngram_training

        return run_ngram_training(args)
    from router.guard.training import run_training as run_guard_training

    return run_guard_training(args)


def _add_key(args: argparse.Namespace) -> int:
    from router.ops.keys import run_add_key

    return run_add_key(args)


def _revoke_key(args: argparse.Namespace) -> int:
    from router.ops.keys import run_revoke_key

    return run_revoke_key(args)


def _make_checkpoint(args: argparse.Namespace) -> int:
    from workers.checkpoints import build_shaped_checkpoint

    path = build_shaped_checkpoint(args.output, args.shape, device=args.device, dtype=args.dtype)
    print(f"{args.shape} checkpoint (random weights) in {path}")
    return 0


def _hash_key(args: argparse.Namespace) -> int:
    from router.decide.access import hash_key

    key = args.key if args.key is not None else sys.stdin.readline().strip()
    if not key:
        print("tiered-router: give a key (argument or stdin)", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tiered-router", description=__doc__)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="json", choices=["json", "text"], help="JSON lines (default) or text")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the router (OpenAI-compatible, port 8000 by default)")
    serve.add_argument("--config", default=DEFAULT_CONFIG, help=f"router YAML (default {DEFAULT_CONFIG})")
    serve.add_argument("--host", default=None, help="override server.host")
    serve.add_argument("--port", type=int, default=None, help="override server.port")
    serve.set_defaults(run=_serve)

    worker = sub.add_parser("worker", help="serve one tier's local model (ports 8001 small / 8002 large by default)")
    worker.add_argument("--tier", required=True, help="the tier to serve, e.g. small or large")
    worker.add_argument("--config", default=DEFAULT_CONFIG)
    worker.add_argument("--host", default=None, help="override workers.<tier>.host")
    worker.add_argument("--port", type=int, default=None, help="override workers.<tier>.port")
    worker.set_defaults(run=_worker)

    up = sub.add_parser(
        "up", help="start the whole stack here (a process per local tier, then the router) and restart what dies"
    )
    up.add_argument("--config", default=DEFAULT_CONFIG)
    up.add_argument("--start-timeout", type=float, default=600.0, help="seconds to wait for each process")
    # Unset flags take RestartPolicy's defaults (router/supervisor/processes.py), which the brackets repeat.
    restart = up.add_argument_group(
        "restarts", "a process that dies after start-up is started again, later each time it dies again [default]"
    )
    restart.add_argument("--restart-delay", type=float, help="seconds before the first restart in a row [1]")
    restart.add_argument(
        "--restart-factor", type=float, help="each further restart in a row waits this times longer [2]"
    )
    restart.add_argument("--restart-max-delay", type=float, help="the longest wait before a restart, seconds [30]")
    restart.add_argument(
        "--restart-reset-after", type=float, help="a process up this many seconds starts over at the first delay [60]"
    )
    up.set_defaults(run=_up)

    standin = sub.add_parser("standin", help="run an OpenAI-compatible echo server (tests, benchmarks, demos)")
    standin.add_argument("--host", default="127.0.0.1")
    standin.add_argument("--port", type=int, default=8009)
    standin.add_argument("--name", default="standin")
    standin.add_argument("--chunk-delay-ms", type=float, default=0.0)
    standin.add_argument("--delay-ms", type=float, default=0.0)
    standin.add_argument("--fail-status", type=int, default=None)
    standin.add_argument("--record", type=int, default=200, help="received requests kept for /_standin/requests")
    standin.add_argument("--max-words", type=int, default=64, help="longest answer, in words")
    standin.set_defaults(run=_standin)

    shaped = sub.add_parser(
        "make-checkpoint", help="build a random-weight checkpoint of a real model's shape (GPU benchmarks)"
    )
    shaped.add_argument("--shape", required=True, choices=["qwen2.5-1.5b", "qwen2.5-7b", "llama-2-7b", "tiny"])
    shaped.add_argument("--output", type=Path, required=True, help="the checkpoint directory to write")
    shaped.add_argument("--device", default="cpu", help="where the weights are made: cpu, cuda (7B in bf16: ~15 GB)")
    shaped.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    shaped.set_defaults(run=_make_checkpoint)

    hashed = sub.add_parser("hash-key", help="print an API key's SHA-256, for auth.keys[].sha256 (or Redis)")
    hashed.add_argument("key", nargs="?", default=None, help="the key (default: read a line from stdin)")
    hashed.set_defaults(run=_hash_key)

    add_key = sub.add_parser("add-key", help="make a new API key, store its SHA-256 in Redis, print the key once")
    add_key.add_argument("--name", required=True, help="who the key is for (logs and limits name it)")
    add_key.add_argument("--config", default=DEFAULT_CONFIG, help="router YAML: its redis.url and prefix")
    add_key.add_argument("--group", default=None, help="a group, for rules matching key_group")
    add_key.add_argument("--tiers", default=None, help="comma-separated tiers the key may use (default: all)")
    add_key.add_argument("--force-tiers", action="store_true", help="the key may choose its tier (model: <tier>)")
    add_key.add_argument("--rpm", type=int, default=0, help="requests per minute (0: no limit)")
    add_key.add_argument("--tpm", type=int, default=0, help="tokens per minute (0: no limit)")
    add_key.set_defaults(run=_add_key)

    revoke = sub.add_parser("revoke-key", help="delete a key from Redis (by its sha256, or the key on stdin)")
    revoke.add_argument("--config", default=DEFAULT_CONFIG)
    revoke.add_argument("--sha256", default=None, help="the key's digest (default: read the key from stdin)")
    revoke.set_defaults(run=_revoke_key)

    calibrate = sub.add_parser(
        "calibrate", help="find the score threshold that sends a target share of traffic to the small tier"
    )
    calibrate.add_argument("--config", default=DEFAULT_CONFIG)
    calibrate.add_argument(
        "--prompts",
        required=True,
        type=Path,
        help="JSONL ({'messages': [...]} or {'prompt': ...}) or one prompt per line",
    )
    calibrate.add_argument(
        "--small-share", required=True, type=float, help="target share of traffic for the small tier, 0..1"
    )
    calibrate.add_argument(
        "--output",
        type=Path,
        default=None,
        help="where to write the calibration (default: config dir / calibration.yaml)",
    )
    calibrate.set_defaults(run=_calibrate)

    train = sub.add_parser("train-classifier", help="retrain the embedding classifier on labelled prompts")
    train.add_argument(
        "--data",
        type=Path,
        default=None,
        help="labelled JSONL (default: the shipped router/data/labelled_prompts.jsonl)",
    )
    train.add_argument(
        "--output",
        type=Path,
        default=None,
        help="weights file (default: the shipped router/data/embedding_classifier.json)",
    )
    train.add_argument("--heldout-every", type=int, default=5, help="hold out one example in N for the accuracy report")
    train.set_defaults(run=_train)

    evaluate = sub.add_parser(
        "eval", help="score the routing classifier or the guardrails on labelled JSONL ({prompt|messages, label})"
    )
    evaluate.add_argument("kind", choices=["route", "guard"], help="route: simple/complex; guard: attack/benign")
    evaluate.add_argument("file", type=Path, help="labelled JSONL, one {'prompt'|'messages', 'label'} per line")
    evaluate.add_argument("--config", default=DEFAULT_CONFIG, help=f"router YAML (default {DEFAULT_CONFIG})")
    evaluate.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    evaluate.set_defaults(run=_eval)

    train_guard = sub.add_parser("train-guard", help="retrain the guardrails' attack classifier on labelled prompts")
    train_guard.add_argument("--data", type=Path, default=None, help="labelled JSONL (default: router/data/guard)")
    train_guard.add_argument("--output", type=Path, default=None, help="weights file (default: the shipped one)")
    train_guard.add_argument(
        "--model",
        choices=["minilm", "ngram"],
        default="minilm",
        help="minilm: the MiniLM head (guard_classifier.json); ngram: the character n-gram rail (guard_ngrams.npz)",
    )
    train_guard.add_argument(
        "--encoder",
        type=Path,
        default=None,
        help="encoder deltas to train the MiniLM head over (python -m router.guard.tuning makes them)",
    )
    train_guard.set_defaults(run=_train_guard)
    return parser


if __name__ == "__main__":
    sys.exit(main())
