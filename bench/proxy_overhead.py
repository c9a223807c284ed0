"""The router's added latency and CPU cost over calling the same upstream directly.

Starts the stand-in upstream and the router (each its own process, uvicorn + uvloop + httptools),
then drives both with wrk (POST /v1/chat/completions, a small non-streamed chat request) at each
concurrency, direct and proxied back to back in one run. The router's CPU time per request is
read from /proc/<pid>/stat around each proxied run.

    python bench/proxy_overhead.py [--seconds 10] [--concurrency 1 8 32]

Needs wrk (Debian package `wrk`). Writes JSON lines to bench/results/ and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY = {"model": "auto", "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 16}
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[%s]]
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format("RESULT {\\"requests\\": %%d, \\"seconds\\": %%f, \\"errors\\": %%d, "
    .. "\\"p50_ms\\": %%f, \\"p90_ms\\": %%f, \\"p99_ms\\": %%f}\\n",
    summary.requests, summary.duration / 1e6, errors,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000))
end
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def wrk(url: str, concurrency: int, seconds: float, script: Path) -> dict[str, float]:
    threads = 1 if concurrency < 8 else 2
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{concurrency}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    result: dict[str, float] = json.loads(line[len("RESULT ") :])
    result["rps"] = result["requests"] / result["seconds"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--standin-port", type=int, default=18109)
    parser.add_argument("--router-port", type=int, default=18100)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    script = tmp / "post.lua"
    script.write_text(WRK_SCRIPT % json.dumps(BODY))
    upstream = f"http://127.0.0.1:{args.standin_port}/v1"
    raw = yaml.safe_load((ROOT / "config" / "router.yaml").read_text())
    for tier in raw["tiers"].values():
        tier["base_url"] = upstream
    raw["server"]["port"] = args.router_port
    # The config is written elsewhere; its guardrails folder is named relative to config/, where it stays.
    raw["guardrails"]["path"] = str((ROOT / "config" / raw["guardrails"]["path"]).resolve())
    config = tmp / "router.yaml"
    config.write_text(yaml.safe_dump(raw))

    env = {**os.environ, "NEMO_GUARDRAILS_NO_USAGE_STATS": "1", "OPENAI_API_KEY": "bench"}
    cli = [sys.executable, "-m", "router.cli", "--log-level", "warning"]
    standin = subprocess.Popen([*cli, "standin", "--port", str(args.standin_port)], env=env, cwd=ROOT)
    router = subprocess.Popen([*cli, "serve", "--config", str(config)], env=env, cwd=ROOT)
    results = []
    try:
        wait_ready(f"{upstream}/models")
        wait_ready(f"http://127.0.0.1:{args.router_port}/health")
        direct_url = f"{upstream}/chat/completions"
        proxied_url = f"http://127.0.0.1:{args.router_port}/v1/chat/completions"
        wrk(proxied_url, 8, 2, script)  # warm-up: connection pool, code paths
        wrk(direct_url, 8, 2, script)
        for concurrency in args.concurrency:
            direct = wrk(direct_url, concurrency, args.seconds, script)
            before = cpu_seconds(router.pid)
            proxied = wrk(proxied_url, concurrency, args.seconds, script)
            router_cpu = cpu_seconds(router.pid) - before
            row = {
                "concurrency": concurrency,
                "direct": direct,
                "proxied": proxied,
                "added_p50_ms": proxied["p50_ms"] - direct["p50_ms"],
                "added_p99_ms": proxied["p99_ms"] - direct["p99_ms"],
                "router_cpu_ms_per_request": 1000 * router_cpu / max(1, proxied["requests"]),
            }
            results.append(row)
            print(json.dumps(row), flush=True)
    finally:
        for proc in (router, standin):
            proc.terminate()
            proc.wait(timeout=10)

    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    meta = {"machine": f"{platform.node()} {os.cpu_count()} cores", "python": platform.python_version(), "date": stamp}
    with (out_dir / f"proxy_overhead-{stamp}.jsonl").open("w") as fh:
        for row in results:
            fh.write(json.dumps({**meta, **row}) + "\n")

    print(
        f"\n{'conc':>4} | {'direct p50':>10} {'p99':>7} {'rps':>6} | {'router p50':>10} {'p99':>7} {'rps':>6} "
        f"| {'+p50':>6} {'+p99':>6} | {'cpu/req':>7} | errors"
    )
    for r in results:
        d, p = r["direct"], r["proxied"]
        print(
            f"{r['concurrency']:>4} | {d['p50_ms']:>8.2f}ms {d['p99_ms']:>5.2f}ms {d['rps']:>6.0f} | "
            f"{p['p50_ms']:>8.2f}ms {p['p99_ms']:>5.2f}ms {p['rps']:>6.0f} | {r['added_p50_ms']:>4.2f}ms "
            f"{r['added_p99_ms']:>4.2f}ms | {r['router_cpu_ms_per_request']:>5.3f}ms | {int(d['errors'] + p['errors'])}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
