"""`tiered-router add-key` and `revoke-key`: manage the API keys kept in Redis (`<prefix>keys:<sha256>`).

A new key is random (`sk-tr-` and 32 bytes, URL-safe), printed once and stored only as its SHA-256, so neither
Redis nor the router ever holds it in clear. This is how the first key of a compose deployment is made:

    docker compose exec router tiered-router add-key --name alice --config config/gpu.yaml
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys

import msgspec

from router.core.config import Config, load_config
from router.core.state import RedisStore, StateUnavailable
from router.decide.access import KEYS_PREFIX, StoredKey, hash_key

KEY_PREFIX = "sk-tr-"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


async def store_key(config: Config, record: StoredKey, key: str) -> str:
    """Write `record` under `key`'s digest in the config's Redis; returns the digest."""
    if not config.redis.url:
        raise ValueError("redis.url is not set: keys kept in Redis need a Redis (or list them in auth.keys)")
    store = RedisStore.from_url(config.redis.url, config.redis.prefix, timeout_s=3.0)
    digest = hash_key(key)
    try:
        await store.put(KEYS_PREFIX + digest, msgspec.json.encode(record))
    finally:
        await store.close()
    return digest


async def remove_key(config: Config, digest: str) -> bool:
    if not config.redis.url:
        raise ValueError("redis.url is not set")
    store = RedisStore.from_url(config.redis.url, config.redis.prefix, timeout_s=3.0)
    try:
        existed = await store.get(KEYS_PREFIX + digest) is not None
        await store.delete(KEYS_PREFIX + digest)
    finally:
        await store.close()
    return existed


def run_add_key(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    tiers = [t.strip() for t in args.tiers.split(",") if t.strip()] if args.tiers else None
    unknown = sorted(set(tiers or ()) - set(config.tiers))
    if unknown:
        print(
            f"tiered-router add-key: unknown tier(s) {', '.join(unknown)} (known: {', '.join(config.tiers)})",
            file=sys.stderr,
        )
        return 2
    record = StoredKey(args.name, args.group, tiers, args.force_tiers, args.rpm, args.tpm)
    key = new_key()
    try:
        digest = asyncio.run(store_key(config, record, key))
    except (ValueError, StateUnavailable) as exc:
        print(f"tiered-router add-key: {exc}", file=sys.stderr)
        return 2
    if not config.auth.enabled or not config.auth.redis_keys:
        print("note: this config does not check keys from Redis (auth.enabled and auth.redis_keys)", file=sys.stderr)
    print(f"key '{args.name}' stored in Redis as sha256 {digest[:12]}…; it is shown only now:", file=sys.stderr)
    print(key)
    return 0


def run_revoke_key(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    digest = args.sha256 or hash_key(sys.stdin.readline().strip())
    try:
        existed = asyncio.run(remove_key(config, digest))
    except (ValueError, StateUnavailable) as exc:
        print(f"tiered-router revoke-key: {exc}", file=sys.stderr)
        return 2
    print(f"{'revoked' if existed else 'no such key'}: sha256 {digest[:12]}…")
    return 0 if existed else 1
