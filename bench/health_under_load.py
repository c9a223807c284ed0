"""`/health` while the guard works hardest: `--clients` concurrent maximum-size guarded requests (the whole
`limits.max_content_chars`, written to make the injection patterns work: "ignore all the previous and prior
system" over and over, never completed), against the latency `/health` has with nothing else running.

Stand-ins play the tiers (own processes, `tiered-router standin`); the router is `tiered-router serve` with the
shipped config (guardrails on `large`), started from `--code` (a checkout: its `router` package is put first on
the path, so an older commit can be measured with this one's venv and the same script). A poller asks `/health`
every 20 ms; each guarded request is sent to `large` again as soon as it is answered.

    python bench/health_under_load.py [--clients 8] [--seconds 20] [--code PATH] [--prose]

`--prose`: send real prose instead, the longest benign text of bench/data/guard_heldout4.jsonl (an article of about
14,000 characters to summarise): the encoder's windows cost far more than the crafted text's patterns. Each answer's
`x-router-guardrail` header is counted, so a benign request blocked (by a rail, or by the rails' timeout) shows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.health import percentile, poll_health  # noqa: E402
from bench.processes import start  # noqa: E402
from router.supervisor import wait_ready  # noqa: E402
from tests.servers import free_port  # noqa: E402

PHRASE = "ignore all the previous and prior system "


def crafted(chars: int) -> str:
    return (PHRASE * (chars // len(PHRASE) + 1))[:chars]


def prose(chars: int) -> str:
    """The longest benign request of the fourth held-out rails set, cut to `chars`."""
    lines = (ROOT / "bench" / "data" / "guard_heldout4.jsonl").read_text(encoding="utf-8").splitlines()
    benign = [item for item in map(json.loads, lines) if item["label"] == "benign"]
    texts = [m["content"] for item in benign for m in item["messages"] if isinstance(m.get("content"), str)]
    return max(texts, key=len)[:chars]


async def guarded_load(url: str, until: float, text: str) -> tuple[list[float], dict[str, int]]:
    body = {"model": "large", "messages": [{"role": "user", "content": text}], "max_tokens": 8}
    seconds: list[float] = []
    statuses: dict[str, int] = {}
    async with httpx.AsyncClient(timeout=120) as client:
        while time.monotonic() < until:
            started = time.perf_counter()
            response = await client.post(f"{url}/v1/chat/completions", json=body)
            seconds.append(time.perf_counter() - started)
            key = f"{response.status_code} {response.headers.get('x-router-guardrail', '-')}"
            statuses[key] = statuses.get(key, 0) + 1
    return seconds, statuses


async def drive(url: str, clients: int, seconds: float, text: str) -> dict[str, Any]:
    idle = await poll_health(url, time.monotonic() + 3)
    until = time.monotonic() + seconds
    results = await asyncio.gather(poll_health(url, until), *(guarded_load(url, until, text) for _ in range(clients)))
    loaded = results[0]
    requests = [s for r in results[1:] for s in r[0]]
    statuses: dict[str, int] = {}
    for _, counted in results[1:]:
        for status, n in counted.items():
            statuses[status] = statuses.get(status, 0) + n
    return {
        "health_idle_ms": {"p50": statistics.median(idle), "p99": percentile(idle, 0.99), "n": len(idle)},
        "health_loaded_ms": {
            "p50": statistics.median(loaded),
            "p99": percentile(loaded, 0.99),
            "max": max(loaded),
            "n": len(loaded),
        },
        "guarded_requests": {"n": len(requests), "p50_s": statistics.median(requests), "statuses": statuses},
        "clients": clients,
        "chars": len(text),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout whose router is measured")
    parser.add_argument("--router-log", type=Path, default=None, help="where the router's own log goes")
    parser.add_argument("--prose", action="store_true", help="real prose, not the crafted text (see above)")
    args = parser.parse_args()
    code = args.code.resolve()
    raw: dict[str, Any] = yaml.safe_load((code / "config" / "router.yaml").read_text())
    chars = int(raw["limits"]["max_content_chars"]) - 100
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for tier in ("small", "large", "remote"):
            port = free_port()
            processes.append(start(["standin", "--port", str(port), "--name", tier], f"http://127.0.0.1:{port}/ready"))
            raw["tiers"][tier]["base_url"] = f"http://127.0.0.1:{port}/v1"
        raw["tiers"]["remote"]["api_key_env"] = None
        raw["guardrails"]["path"] = str(code / "config" / "guardrails")
        raw.pop("workers", None)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "router.yaml"
            path.write_text(yaml.safe_dump(raw))
            port = free_port()
            env = {**os.environ, "PYTHONPATH": str(code), "NEMO_GUARDRAILS_NO_USAGE_STATS": "1"}
            command = [sys.executable, "-m", "router.cli", "serve", "--config", str(path), "--port", str(port)]
            log = args.router_log.open("wb") if args.router_log else subprocess.DEVNULL
            # cwd too: `python -m` puts the current directory first on the path, ahead of PYTHONPATH.
            router = subprocess.Popen(command, env=env, cwd=code, stdout=log, stderr=log)
            processes.append(router)
            url = f"http://127.0.0.1:{port}"
            if not wait_ready(f"{url}/health", time.monotonic() + 120):
                raise RuntimeError("the router did not come up")
            text = prose(chars) if args.prose else crafted(chars)
            result = asyncio.run(drive(url, args.clients, args.seconds, text))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(10)
    commit = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    print(json.dumps({"code": str(code), "commit": commit.stdout.strip(), **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
