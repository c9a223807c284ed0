"""`tiered-router up` as real processes: with auth on and the worker token and admin key left unset, it makes both
and the stack takes the key; a worker SIGKILLed under it comes back while a client loop sees no error; a crash loop
waits longer each time and Ctrl-C stops it mid-backoff; a process that cannot start fails start-up at once."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.decide.access import hash_key
from tests.helpers import REPO, router_yaml, write_config
from tests.servers import ServerThread, free_port

KEY = "sk-supervised-0123456789abcdef"


class UpProcess:
    """A running `tiered-router up`, its output (children's included) read into `printed` as it comes."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.printed: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._ended = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout or ():
            self._lines.put(line)
        self._lines.put(None)  # the output ended: `up` and every child it started closed it

    def _take(self, timeout_s: float) -> None:
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            return
        if line is None:
            self._ended = True
        else:
            self.printed.append(line)

    def wait_for(self, done: Callable[[], bool], timeout_s: float = 90.0) -> None:
        """Read output until `done()`; fails if `up` exits first or it takes past `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not done():
            assert time.monotonic() < deadline and self.proc.poll() is None, "".join(self.printed[-50:])
            self._take(0.2)

    def drain(self) -> None:
        """Read the output to its end."""
        deadline = time.monotonic() + 30
        while not self._ended and time.monotonic() < deadline:
            self._take(0.2)

    def text(self) -> str:
        return "".join(self.printed)

    def events(self, service: str | None = None) -> list[dict[str, Any]]:
        """The supervisor's log records (JSON lines), of one service if given, in order."""
        found = []
        for line in list(self.printed):
            if line.startswith('{"ts"') and '"logger": "router.supervisor' in line:
                event = json.loads(line)
                if service is None or event.get("service") == service:
                    found.append(event)
        return found

    def pids(self) -> set[int]:
        return {event["pid"] for event in self.events() if event["msg"].startswith("started")}

    def stop(self, sig: int = signal.SIGINT) -> int:
        """Send `sig`, read the rest of the output, and return the exit status."""
        self.proc.send_signal(sig)
        returncode = self.proc.wait(timeout=60)
        self.drain()
        return returncode


def _ctrl_c_as_at_a_terminal() -> None:
    """In the child before exec: SIGINT back to its default, as for a command started at a terminal. A test run
    started in the background by a non-interactive shell has SIGINT ignored, and a child inherits that, so `up`
    would ignore the tests' Ctrl-C (as it should, started so)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def tiered_router_up(config: Path, *flags: str, env: dict[str, str] | None = None) -> Iterator[UpProcess]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "router.cli", "up", "--config", str(config), "--start-timeout", "60", *flags],
        cwd=REPO,
        env={"TEST_REMOTE_KEY": "sk-test", **(os.environ if env is None else env)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_ctrl_c_as_at_a_terminal,
    )
    try:
        yield UpProcess(proc)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


def stack_yaml(remote: ServerThread, **server: Any) -> tuple[dict[str, Any], dict[str, int]]:
    """A config whose small and large tiers are local stand-ins `up` starts (no `workers`), on free ports."""
    ports = {"small": free_port(), "large": free_port(), "router": free_port()}
    raw = router_yaml(
        f"http://127.0.0.1:{ports['small']}/v1", f"http://127.0.0.1:{ports['large']}/v1", f"{remote.url}/v1"
    )
    raw["workers"] = {}  # local tiers without a model: `up` serves them with stand-ins
    raw["server"].update(port=ports["router"], **server)
    for tier in raw["tiers"].values():
        tier["guardrails"] = False
    return raw, ports


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


class ClientLoop:
    """A client sending `model: large` chats to the router, streamed and not in turn, from a thread, until stopped
    (at most `limit` requests): the tier of each answer, and every error (status, or a stream that broke)."""

    def __init__(self, url: str, limit: int = 5000) -> None:
        self.url, self.limit = url, limit
        self.tiers: list[str] = []
        self.fallbacks: list[str | None] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ClientLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            for n in range(self.limit):
                if self._stop.is_set():
                    return
                body = {"model": "large", "stream": n % 2 == 1, "messages": [{"role": "user", "content": f"hi {n}"}]}
                try:
                    with client.stream("POST", "/v1/chat/completions", json=body) as response:
                        text = response.read().decode()
                        if response.status_code != 200 or (body["stream"] and not text.endswith("data: [DONE]\n\n")):
                            self.errors.append(f"{response.status_code}: {text[-300:]}")
                            continue
                        self.tiers.append(response.headers["x-router-tier"])
                        self.fallbacks.append(response.headers.get("x-router-fallback"))
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))

    def wait_for(self, done: Callable[[], bool], timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            assert time.monotonic() < deadline and self._thread.is_alive(), (self.tiers[-20:], self.errors[:5])
            time.sleep(0.05)


@contextmanager
def holding_port(port: int) -> Iterator[socket.socket]:
    """Listen on `port` (once whoever had it let go), so a server started on it cannot bind and exits."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    deadline = time.monotonic() + 10
    while True:
        try:
            sock.bind(("127.0.0.1", port))
            break
        except OSError:
            assert time.monotonic() < deadline, f"port {port} was not released"
            time.sleep(0.01)
    sock.listen()
    try:
        yield sock
    finally:
        sock.close()


def _ts(event: dict[str, Any]) -> float:
    return datetime.strptime(event["ts"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def _started(up: UpProcess, service: str) -> list[dict[str, Any]]:
    return [event for event in up.events(service) if event["msg"].startswith("started")]


def _exited(up: UpProcess, service: str) -> list[dict[str, Any]]:
    return [event for event in up.events(service) if " exited " in event["msg"]]


def test_up_makes_the_missing_secrets_and_the_stack_takes_the_key(
    standins: dict[str, ServerThread], tmp_path: Path
) -> None:
    raw, ports = stack_yaml(standins["remote"], admin_key_env="TR_TEST_ADMIN_KEY")
    raw["auth"] = {
        "enabled": True,
        "worker_token_env": "TR_TEST_WORKER_TOKEN",
        "keys": [{"name": "operator", "sha256": hash_key(KEY), "force_tiers": True}],
    }
    config = write_config(tmp_path / "router.yaml", raw)
    env = {k: v for k, v in os.environ.items() if k not in {"TR_TEST_ADMIN_KEY", "TR_TEST_WORKER_TOKEN"}}
    with tiered_router_up(config, env=env) as up:
        up.wait_for(lambda: "authorization: Bearer $KEY" in up.text())
        text = up.text()
        assert "TR_TEST_WORKER_TOKEN is not set: made a worker token" in text
        assert "auth is on" in text and "auth.keys" in text  # no Redis here: keys come from the YAML
        admin = re.search(r"admin key \(/metrics, /status\) is (\S+)", text)
        assert admin, text
        url = f"http://127.0.0.1:{ports['router']}"
        body = {"model": "small", "messages": [{"role": "user", "content": "hello there"}]}
        assert httpx.post(f"{url}/v1/chat/completions", json=body).status_code == 401
        answered = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"})
        assert answered.status_code == 200 and answered.headers["x-router-tier"] == "small", answered.text
        assert httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {KEY}"}).status_code in {401, 403}
        metrics = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {admin.group(1)}"})
        assert metrics.status_code == 200 and "tiered_router" in metrics.text


def test_a_worker_killed_under_up_comes_back_and_a_client_loop_sees_no_error_then_the_router_too(
    standins: dict[str, ServerThread], tmp_path: Path
) -> None:
    raw, ports = stack_yaml(standins["remote"])
    config = write_config(tmp_path / "router.yaml", raw)
    # 2 s before a restart: the window in which the router must serve the large tier's requests elsewhere.
    with tiered_router_up(config, "--restart-delay", "2") as up:
        up.wait_for(lambda: "tiered-router is up" in up.text())
        [large] = [event["pid"] for event in _started(up, "large")]
        with ClientLoop(f"http://127.0.0.1:{ports['router']}") as client:
            client.wait_for(lambda: client.tiers.count("large") >= 5)
            os.kill(large, signal.SIGKILL)  # as the OOM killer would
            killed_at = len(client.tiers)
            up.wait_for(lambda: any("ready again" in event["msg"] for event in up.events("large")))
            assert httpx.get(f"http://127.0.0.1:{ports['large']}/ready").status_code == 200
            client.wait_for(lambda: "large" in client.tiers[killed_at:] and "remote" in client.tiers[killed_at:])
            client.wait_for(lambda: client.tiers[killed_at:][-3:] == ["large"] * 3)
        assert client.errors == []
        after = client.tiers[killed_at:]
        assert after.index("remote") < len(after) - 1 - after[::-1].index("large")  # remote, then large again
        assert all(client.fallbacks[killed_at + i] for i, tier in enumerate(after) if tier == "remote")
        [exited] = _exited(up, "large")
        assert (exited["pid"], exited["signal"], exited["restart"], exited["delay_s"]) == (large, "SIGKILL", 1, 2.0)
        assert [event["restart"] for event in _started(up, "large")] == [0, 1]
        assert not _exited(up, "small") and not _exited(up, "router")
        # The router itself is kept up too: killed, it is started again and answers as before.
        [router] = [event["pid"] for event in _started(up, "router")]
        os.kill(router, signal.SIGKILL)
        up.wait_for(lambda: any("ready again" in event["msg"] for event in up.events("router")))
        [exited] = _exited(up, "router")
        assert (exited["pid"], exited["signal"], exited["restart"]) == (router, "SIGKILL", 1)
        body = {"model": "large", "messages": [{"role": "user", "content": "still there?"}]}
        answered = httpx.post(f"http://127.0.0.1:{ports['router']}/v1/chat/completions", json=body, timeout=30)
        assert answered.status_code == 200 and answered.headers["x-router-tier"] == "large", answered.text
        pids = up.pids()
        assert len(pids) == 5  # small, large, the router, then large and the router again
        assert up.stop(signal.SIGINT) == 0
    assert all(gone(pid) for pid in pids)
    for port in ports.values():
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more


def test_a_crash_loop_waits_longer_each_time_and_ctrl_c_stops_it_mid_backoff(
    standins: dict[str, ServerThread], tmp_path: Path
) -> None:
    raw, ports = stack_yaml(standins["remote"])
    config = write_config(tmp_path / "router.yaml", raw)
    policy = ("--restart-delay", "0.2", "--restart-factor", "3", "--restart-max-delay", "300")
    with tiered_router_up(config, *policy, "--restart-reset-after", "600") as up:
        up.wait_for(lambda: "tiered-router is up" in up.text())
        [small] = [event["pid"] for event in _started(up, "small")]
        os.kill(small, signal.SIGKILL)
        with holding_port(ports["small"]):  # each restart finds its port taken and exits at once
            up.wait_for(lambda: len(_exited(up, "small")) >= 4)
            pids = up.pids()
            assert up.stop(signal.SIGINT) == 0  # during the fourth wait, 5.4 s
    exits, starts = _exited(up, "small"), _started(up, "small")[1:]
    assert [event["restart"] for event in exits] == [1, 2, 3, 4]
    assert [event["delay_s"] for event in exits] == pytest.approx([0.2, 0.6, 1.8, 5.4])
    assert exits[0]["signal"] == "SIGKILL" and all(event["exit_code"] not in {None, 0} for event in exits[1:])
    assert [event["restart"] for event in starts] == [1, 2, 3]  # not a fourth: Ctrl-C stopped the pending restart
    for died, restarted in zip(exits, starts, strict=False):
        assert _ts(restarted) - _ts(died) >= died["delay_s"] - 0.002  # it waited (log stamps are in ms)
    lifecycle = [event["msg"].split()[0 if event["msg"].startswith("started") else 2] for event in up.events("small")]
    assert lifecycle == ["started", "exited", "started", "exited", "started", "exited", "started", "exited"]
    assert all(gone(pid) for pid in pids)


def test_a_tier_that_cannot_start_fails_up_at_once(standins: dict[str, ServerThread], tmp_path: Path) -> None:
    raw, ports = stack_yaml(standins["remote"])
    config = write_config(tmp_path / "router.yaml", raw)
    with holding_port(ports["large"]), tiered_router_up(config) as up:
        up.wait_for(lambda: up.proc.poll() is not None or "before it was ready" in up.text())
        assert up.proc.wait(timeout=60) == 1
        up.drain()
    text = up.text()
    failed = (
        rf"tier 'large' exited \(exit code [1-9]\d*\) before it was ready at http://127.0.0.1:{ports['large']}/ready"
    )
    assert re.search(failed, text), text
    assert not _exited(up, "large") and "tiered-router is up" not in text  # not restarted, no router started
    assert all(gone(pid) for pid in up.pids())
