"""Client fixtures: one stack per session for the real client libraries (real SmolLM2 workers for small and large,
the remote tier unreachable, a router in front), and the environment that keeps the clients on loopback."""

from __future__ import annotations

import inspect
import os
from collections.abc import Generator, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml
from pluggy import Result

from router.api.app import create_app
from router.core.config import load_config
from router.guard.rails import Guard
from tests.helpers import REPO, router_yaml, wait_until_ready, write_config
from tests.servers import ServerThread
from workers.app import create_worker_app

DEAD = "http://127.0.0.1:1/v1"
"""The remote tier: nothing listens there, so nothing leaves the machine."""

# Set before the clients are imported (they read these at import): LiteLLM's model-cost map from its own wheel,
# not from GitHub; no telemetry from LiteLLM, LangSmith, llama-index or pydantic-ai's logfire.
os.environ.update(
    LITELLM_LOCAL_MODEL_COST_MAP="True",
    LITELLM_TELEMETRY="False",
    LANGCHAIN_TRACING_V2="false",
    LANGSMITH_TRACING="false",
    LOGFIRE_SEND_TO_LOGFIRE="false",
    OPENAI_API_KEY="unused",
)
for name in ("OPENAI_BASE_URL", "OPENAI_API_BASE", "LANGSMITH_API_KEY", "LANGCHAIN_API_KEY"):
    os.environ.pop(name, None)


@pytest.fixture(scope="session")
def smollm_router(tmp_path_factory: pytest.TempPathFactory, shipped_guard: Guard) -> Iterator[str]:
    """The router's /v1 base URL, in front of real SmolLM2-135M workers (small in fp32, large in NF4) on CPU.
    Session-scoped: the client tests share one stack instead of loading the model per test."""
    from router.core.workers import var_dir

    tmp = tmp_path_factory.mktemp("clients")
    raw = yaml.safe_load((REPO / "config" / "router.yaml").read_text())
    for tier in ("small", "large"):
        raw["workers"][tier].update(checkpoint_dir=str(var_dir() / "checkpoints"), device="cpu")
    worker_config = load_config(write_config(tmp / "workers.yaml", raw), environ={})
    with ExitStack() as stack:
        workers = {
            tier: stack.enter_context(ServerThread(create_worker_app(worker_config, tier)))
            for tier in ("small", "large")
        }
        for worker in workers.values():
            wait_until_ready(worker)
        routed = router_yaml(f"{workers['small'].url}/v1", f"{workers['large'].url}/v1", DEAD)
        config = load_config(write_config(tmp / "router.yaml", routed), environ={})
        router = stack.enter_context(ServerThread(create_app(config, environ={}, guard=shipped_guard)))
        yield f"{router.url}/v1"


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> Generator[None, Result[object]]:
    """The async tests here (langchain-tests' among them, which expect pytest-asyncio's auto mode) run under
    pytest-asyncio, without switching the whole suite to auto mode: marked just after collection, before
    pytest-asyncio's own wrapper (outside this one) turns marked coroutines into its items. One loop for the
    session: langchain-openai caches its async HTTP client, whose pooled connections belong to the first loop."""
    outcome = yield
    if not inspect.iscoroutinefunction(obj):
        return
    result = outcome.get_result()
    for item in result if isinstance(result, list) else [result]:
        if isinstance(item, pytest.Function):
            item.add_marker(pytest.mark.asyncio(loop_scope="session"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every client test talks to the real model, and only on loopback: pytest-socket (which langchain-tests brings)
    refuses any other connection while the test and its fixtures run."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.allow_hosts(["127.0.0.1"]))
