"""Starting the processes a benchmark measures: `tiered-router` subcommands, each waited for until ready."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from router.supervisor import wait_ready

EXE = str(Path(sys.executable).parent / "tiered-router")


def start(args: list[str], url: str, timeout_s: float = 120.0) -> subprocess.Popen[bytes]:
    """Run `tiered-router <args>` in the background and wait until `url` answers 200 (else kill it and raise)."""
    process = subprocess.Popen([EXE, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if wait_ready(url, time.monotonic() + timeout_s):
        return process
    process.kill()
    raise RuntimeError(f"{url} did not come up")
