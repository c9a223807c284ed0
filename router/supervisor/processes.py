"""Keeping a set of processes running: each one started again when it dies, after a capped exponential backoff.

A process that dies is not waited for in a blocking call: `ProcessSupervisor.tend` looks at every process, notes
deaths, starts those whose delay has passed and returns how long nothing is due, so one loop serves them all and
a crash loop costs a process start per delay, never a busy wait. Stopping does not wait for a pending restart.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn

import httpx
import msgspec

log = logging.getLogger(__name__)
POLL_S = 0.5
"""How often a running process is looked at (its death is noticed within this)."""


class RestartPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """When a process that died is started again: `initial_s` after its first death, `factor` times later after each
    death that follows, never later than `max_s`. A process that had stayed up `stable_s` starts over at `initial_s`.
    """

    initial_s: float = 1.0
    factor: float = 2.0
    max_s: float = 30.0
    stable_s: float = 60.0

    def __post_init__(self) -> None:
        for name in ("initial_s", "max_s", "stable_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"restart policy: {name} must be > 0, got {getattr(self, name)}")
        if not self.factor >= 1:
            raise ValueError(f"restart policy: factor must be >= 1, got {self.factor}")
        if self.max_s < self.initial_s:
            raise ValueError(f"restart policy: max_s ({self.max_s}) is below initial_s ({self.initial_s})")

    def delay(self, restart: int) -> float:
        """Seconds to wait before the `restart`-th restart in a row (1 for the first)."""
        delay = self.initial_s
        for _ in range(restart - 1):  # a loop, not a power: no overflow however long the crash loop
            if delay >= self.max_s:
                break
            delay *= self.factor
        return min(delay, self.max_s)


def answers(url: str, timeout_s: float = 1.0) -> bool:
    """Whether `url` answers 200 now."""
    try:
        return httpx.get(url, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def wait_ready(url: str, deadline: float, alive: Callable[[], bool] = lambda: True) -> bool:
    """Until `url` answers 200 (True), or the monotonic `deadline` passes or `alive()` turns false (False)."""
    while time.monotonic() < deadline and alive():
        if answers(url):
            return True
        time.sleep(0.3)
    return False


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def describe_exit(code: int) -> str:
    """`exit code 1`, or `signal SIGKILL` for a process a signal ended (Popen's negative return codes)."""
    return f"exit code {code}" if code >= 0 else f"signal {signal_name(-code)}"


class SupervisedProcess:
    """One process: how to start it, the running one (None while it waits to be restarted), its deaths in a row."""

    def __init__(
        self,
        name: str,
        label: str,
        command: Sequence[str],
        env: Mapping[str, str],
        policy: RestartPolicy,
        ready_url: str | None = None,
    ) -> None:
        self.name, self.label, self.ready_url = name, label, ready_url
        self._command, self._env, self._policy = list(command), dict(env), policy
        self.popen: subprocess.Popen[bytes] | None = None
        self.deaths = 0
        self._started_at = 0.0
        self._restart_at = 0.0
        self._awaiting_ready = False

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def exit_code(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def spawn(self) -> None:
        self.popen = subprocess.Popen(self._command, env=self._env)
        self._started_at = time.monotonic()
        restart = f", restart {self.deaths}" if self.deaths else ""
        log.info(
            f"started {self.label} (pid {self.popen.pid}{restart}): {' '.join(self._command[1:])}",
            extra={"service": self.name, "pid": self.popen.pid, "restart": self.deaths},
        )

    def tend(self, now: float) -> float:
        """Note a death, restart when due, note readiness after a restart; seconds until something is due here."""
        if self.popen is not None:
            code = self.popen.poll()
            if code is None:
                if self._awaiting_ready and self.ready_url and answers(self.ready_url, timeout_s=POLL_S):
                    self._awaiting_ready = False
                    log.info(f"{self.label} is ready again", extra={"service": self.name, "restart": self.deaths})
                return POLL_S
            self._died(now, f"exited ({describe_exit(code)})", code, self.popen.pid)
        if now < self._restart_at:
            return self._restart_at - now
        try:
            self.spawn()
        except OSError as exc:  # the executable went away, or no memory to fork: try again later
            self._died(now, f"could not be started ({exc})", None, None)
            return self._restart_at - now
        self._awaiting_ready = True
        return POLL_S

    def _died(self, now: float, how: str, code: int | None, pid: int | None) -> None:
        uptime = now - self._started_at if pid is not None else 0.0
        if uptime >= self._policy.stable_s:
            self.deaths = 0
        self.deaths += 1
        delay = self._policy.delay(self.deaths)
        self.popen, self._restart_at, self._awaiting_ready = None, now + delay, False
        log.warning(
            f"{self.label} {how} after {uptime:.1f} s; restart {self.deaths} in {delay:.3g} s",
            extra={
                "service": self.name,
                "pid": pid,
                "exit_code": code if code is not None and code >= 0 else None,
                "signal": signal_name(-code) if code is not None and code < 0 else None,
                "uptime_s": round(uptime, 3),
                "restart": self.deaths,
                "delay_s": delay,
            },
        )


class ProcessSupervisor:
    """Processes started through it, each restarted by one `RestartPolicy` when it dies, until `stop`."""

    def __init__(self, policy: RestartPolicy, env: Mapping[str, str]) -> None:
        self._policy, self._env = policy, env
        self._processes: dict[str, SupervisedProcess] = {}

    def __getitem__(self, name: str) -> SupervisedProcess:
        return self._processes[name]

    def start(
        self, name: str, command: Sequence[str], *, label: str | None = None, ready_url: str | None = None
    ) -> SupervisedProcess:
        """Start `command` now and keep it running from the next `tend` on."""
        process = SupervisedProcess(name, label or name, command, self._env, self._policy, ready_url)
        self._processes[name] = process
        process.spawn()
        return process

    def tend(self) -> float:
        """Look after every process once (see SupervisedProcess.tend); seconds until the next thing is due."""
        now = time.monotonic()
        return min((process.tend(now) for process in self._processes.values()), default=POLL_S)

    def run(self) -> NoReturn:
        """Tend the processes until interrupted (KeyboardInterrupt, which the caller turns SIGTERM into)."""
        while True:
            time.sleep(min(POLL_S, max(0.01, self.tend())))

    def stop(self, grace_s: float = 10.0) -> None:
        """Terminate every running process (the last started first), give them `grace_s` in all to exit, then kill
        those left. One waiting to be restarted is not started again."""
        running = [p.popen for p in reversed(self._processes.values()) if p.popen is not None and p.alive()]
        self._processes.clear()
        for popen in running:
            popen.terminate()
        deadline = time.monotonic() + grace_s
        for popen in running:
            try:
                popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
