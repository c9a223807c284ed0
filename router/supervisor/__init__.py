"""`tiered-router up`: the whole stack on one machine (`stack`), each process kept running (`processes`)."""

from router.supervisor.processes import wait_ready
from router.supervisor.stack import run_stack

__all__ = ["run_stack", "wait_ready"]
