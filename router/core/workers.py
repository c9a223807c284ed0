"""Typed worker configuration: the `workers.<tier>` section of router.yaml, and where generated files land."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from msgspec import Meta

from router.core.schema import Strict

Fraction = Annotated[float, Meta(gt=0.0, le=1.0)]
Positive = Annotated[int, Meta(ge=1)]
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
"""OpenAI's error code for a prompt beyond the context window: a worker answers its 400 with it (a prompt over its
`max_seq_len`), and on that code alone the router moves on to the next tier of the chain instead of relaying it."""


class VramConfig(Strict, frozen=True):
    budget_fraction: Fraction = 0.9
    """Share of the device's total memory this worker may use (weights, graphs and KV cache together)."""
    safety_margin_bytes: Annotated[int, Meta(ge=0)] = 512 * 1024 * 1024
    """Kept free on top of every reservation; widened after an out-of-memory error."""
    simulate_total_bytes: Annotated[int, Meta(ge=1)] | None = None
    """Pretend the accelerator has this much memory (tests, demos on a CPU)."""
    simulate_shared_path: str | None = None
    """With `simulate_total_bytes`: a file (relative to the config file) naming one simulated device that every
    worker process giving the same path shares; each is charged only with its own use (workers.memory.SimulatedGpu)."""


class WorkerConfig(Strict, frozen=True):
    model: str
    """A local checkpoint directory, a hub id, `embedded:<name>` for a model a package ships (converted once, see
    workers.embedded), or `demo:<name>` for a tiny random-weight checkpoint built locally."""
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8001
    advertise_url: str | None = None
    """The base URL routers should use, published in the Redis heartbeat (default http://host:port/v1);
    set it when the worker binds 0.0.0.0 or sits behind NAT, e.g. http://worker-small:8001/v1 in compose."""
    served_name: str | None = None
    """The model name `/v1/models` reports (default: the tier name)."""
    device: str = "auto"
    """`auto` (cuda if available, else cpu), `cpu`, `cuda`, `cuda:N`."""
    dtype: Literal["bfloat16", "float16", "float32", "auto"] = "auto"
    """`auto`: bfloat16 on CUDA, float32 on the CPU."""
    quantization: Literal["none", "nf4"] = "none"
    device_map: str | None = None
    alloc_conf: str | None = "expandable_segments:True"
    """Written to PYTORCH_CUDA_ALLOC_CONF before torch initialises CUDA."""
    cuda_graphs: bool = True
    """Decode from captured CUDA graphs (on CUDA only); false is what other servers call enforce_eager."""
    compile: bool = False
    """Fuse the decode step with torch.compile (inductor) before capturing it: ~1.5x faster steps on an H100
    (bench/RESULTS.md), at the price of a minute or two of compilation at start-up."""
    compile_cache_dir: str | None = None
    """Where torch.compile keeps its inductor and triton caches, so a restart reuses them (relative to the config
    file); default: `compile-cache/` under the var directory. TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR win if set."""
    fuse_projections: bool = True
    """Stack each layer's q/k/v and gate/up weights into one matmul each at load time (NF4: the same 4-bit codes
    and scales, re-packed, not requantised; see workers/fuse.py)."""
    nf4_kernels: Literal["measured", "bitsandbytes"] = "measured"
    """`measured`: time bitsandbytes' fused 4-bit kernel against dequantize+linear for each weight shape and decode
    batch size at start-up (about a second, CUDA only) and use the faster; `bitsandbytes`: its own shape heuristic."""
    decode_attention: Literal["auto", "in-place", "gather"] = "auto"
    """How a decode step attends over the paged cache. `in-place`: one Triton kernel per layer reads each row's
    own blocks through the block table (CUDA only; start-up fails without Triton); `gather`: the row's slots for
    the step's whole width are gathered, then sdpa; `auto`: `in-place` where CUDA and Triton are there."""
    max_tokens_default: Positive = 256
    max_tokens_cap: Positive = 2048
    max_seq_len: Annotated[int, Meta(ge=16)] = 4096
    """Longest sequence (prompt + generation) one request may use: a per-request limit. The KV cache is paged, so
    a request holds memory for its own prompt and max_tokens only."""
    max_batch_size: Positive = 16
    """Most sequences decoded together (the block table's rows, the largest decode graph). How many fit in
    memory at once is the paged cache's business: its block count comes from the memory budget."""
    block_size: Annotated[int, Meta(ge=1, le=1024)] = 16
    """Tokens per KV-cache block: requests take (prompt + max_tokens) rounded up to whole blocks."""
    prefill_chunk: Positive = 512
    """Prompt tokens one prefill forward takes, joining prompts packed together; one decode step of the running
    requests runs between two forwards. Bounds the activation memory of long prompts (they take several
    forwards) and how long a joining prompt holds up decoding."""
    prefill_chunk_idle: Positive | None = None
    """Prompt tokens one prefill forward may take while no request is decoding (nobody to hold up), so a prompt
    arriving at an idle worker goes through in fewer forwards. Worth it where a forward has a fixed cost: a 4-bit
    model dequantises every weight once per forward. Default: `prefill_chunk`. Should the larger forward run out
    of memory, the worker goes back to `prefill_chunk` for good and the request is not refused for it."""
    queue_size: Annotated[int, Meta(ge=0)] = 64
    """Requests waiting for a batch slot beyond this are refused with 503 and Retry-After."""
    vram: VramConfig = VramConfig()
    checkpoint_dir: str | None = None
    """Where generated checkpoints are built (relative to the config file); default: `checkpoints/` under the
    var directory (see :func:`var_dir`)."""


def var_dir() -> Path:
    """The one place generated files land: $TIERED_ROUTER_VAR if set, else `var/` under the working directory
    (the repository root for `make run`/`make test`, ignored by git; /app/var in the images)."""
    return Path(os.environ.get("TIERED_ROUTER_VAR") or "var").resolve()
