"""A worker process loads only the router's shared contract (router.wire, router.core), nothing of its stages."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import REPO

FORBIDDEN = ("router.dispatch", "router.guard", "router.decide", "router.api", "router.pipeline", "router.ops")
SCRIPT = """
import json, sys
from router.cli import _parser  # the CLI a worker process starts from
from router.core.config import load_config
from workers.app import create_worker_app
import workers.setup, workers.telemetry, workers.state
create_worker_app(load_config("config/router.yaml", environ={}), "small")
print(json.dumps(sorted(m for m in sys.modules if m.startswith(("router", "workers")))))
"""


def test_a_worker_process_imports_no_router_stage() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    modules = json.loads(done.stdout.strip().splitlines()[-1])
    assert "workers.app" in modules and "router.wire.protocol" in modules  # the check sees what it should
    assert [m for m in modules if m.startswith(FORBIDDEN)] == []
