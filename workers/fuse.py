"""Fuse each layer's q/k/v and gate/up projections into one weight, so a forward does one matmul where it did three.

A decode step's projections are small matmuls whose cost is mostly reading the weight; one wide matmul keeps the
device busier than three narrow ones (the k/v projections of a GQA model are 7x narrower than q).

How the model uses the fused weight: transformers' attention and MLP modules call `q_proj`, `k_proj`, `v_proj`
(`gate_proj`, `up_proj`) one after the other on the same input tensor. Each is replaced by a `ProjectionSlice` that
asks the shared `FusedProjection` for its part: the first call runs the one matmul on that input and splits it;
the others take their part of that result. The attention and MLP forwards themselves are untouched, so this works
whatever a transformers version does around the projections (rotary, q/k norms, caches). Called with another input,
or for a part already handed out, the fused matmul simply runs again, so the result is right in any call order.

NF4 (bitsandbytes) weights are re-packed, never requantised. Quantisation blocks (64 weights) run along the
flattened `[out, in]` weight, so when every part's size is a multiple of the block size, concatenating the parts
along the output dimension concatenates their packed 4-bit codes and their block scales (absmax) unchanged.
Double quantisation stores each part's absmax as 8-bit codes with 256-value blocks and one offset per part; the
parts' offsets differ, so one nested state cannot hold them exactly. The fused weight therefore keeps its first-level
absmax in float32, computed by bitsandbytes' own `dequantize_blockwise(absmax, state2) + offset`, the very values
its matmuls reconstruct from the nested state: the fused weight dequantises to exactly the concatenated parts'
weights (tests/workers/test_fuse.py checks this bit for bit). The price is 3 more bytes per 64 weights
(about 9% more bytes for the fused weights than 4-bit codes with 8-bit scales).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("qkv_proj", ("q_proj", "k_proj", "v_proj")),  # on attention modules
    ("gate_up_proj", ("gate_proj", "up_proj")),  # on MLP modules
)
"""(the fused module's name on the parent, the projections it replaces, in output order)."""


class FusedProjection(nn.Module):
    """One linear layer holding several projections' weights stacked along the output dimension."""

    def __init__(self, linear: nn.Module, sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.linear = linear
        self.sizes = sizes
        self._input: torch.Tensor | None = None
        self._parts: list[torch.Tensor | None] = [None] * len(sizes)

    def part(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Projection `index` of `x`: from the last fused matmul if that ran on this very tensor, else a new one."""
        cached = self._parts[index]
        if cached is None or self._input is not x:
            parts: list[torch.Tensor | None] = list(self.linear(x).split(self.sizes, dim=-1))
            self._input, self._parts, cached = x, parts, parts[index]
        assert cached is not None
        self._parts[index] = None
        if all(p is None for p in self._parts):
            self._input = None  # every part handed out: hold no activations between forwards
        return cached

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}"


class ProjectionSlice(nn.Module):
    """Stands where `q_proj` (or `k_proj`, ...) was: returns its part of the fused projection of its input."""

    def __init__(self, fused: FusedProjection, index: int) -> None:
        super().__init__()
        self._fused = (fused,)  # a tuple, so the fused weight is registered once (on the parent), not per part
        self.index = index
        self.out_features = fused.sizes[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fused[0].part(x, self.index)

    def extra_repr(self) -> str:
        return f"part={self.index}, out_features={self.out_features}"


@dataclass(frozen=True)
class FuseReport:
    fused: int
    """Groups fused (one per attention and one per MLP of each layer, when all fit)."""
    skipped: tuple[str, ...]
    """Modules left as they were, with why."""


def fuse_projections(model: nn.Module) -> FuseReport:
    """Fuse q/k/v and gate/up of every layer of `model` in place (bf16/fp32 `nn.Linear` or NF4 `Linear4bit`)."""
    fused, skipped = 0, []
    for name, module in list(model.named_modules()):
        for fused_name, names in GROUPS:
            found = [getattr(module, n, None) for n in names]
            linears = [m for m in found if isinstance(m, nn.Linear)]
            if len(linears) != len(names):
                continue
            reason = f"it already has a {fused_name}" if hasattr(module, fused_name) else _cannot_fuse(linears)
            if reason:
                skipped.append(f"{name}.{fused_name}: {reason}")
                continue
            fusion = FusedProjection(_fuse_linears(linears), tuple(int(m.out_features) for m in linears))
            setattr(module, fused_name, fusion)
            for index, n in enumerate(names):
                setattr(module, n, ProjectionSlice(fusion, index))
            fused += 1
    if skipped:
        log.warning("left %d projection groups unfused: %s", len(skipped), "; ".join(skipped[:3]))
    log.info("fused %d projection groups (q/k/v, gate/up)", fused)
    return FuseReport(fused, tuple(skipped))


def _is_4bit(module: nn.Module) -> bool:
    return hasattr(module.weight, "quant_state")


def _cannot_fuse(linears: list[Any]) -> str | None:  # Any: nn.Linear or bitsandbytes' Linear4bit
    """Why these projections cannot be stacked into one weight exactly, or None."""
    first = linears[0]
    if len({type(m) for m in linears}) != 1:
        return "mixed module types"
    if len({int(m.in_features) for m in linears}) != 1:
        return "different input sizes"
    biases = [m.bias for m in linears]
    if any(b is None for b in biases) and not all(b is None for b in biases):
        return "some have a bias, some not"
    if len({(b.dtype, b.device) for b in biases if b is not None}) > 1:
        return "biases of different dtypes"
    if not _is_4bit(first):
        if len({(m.weight.dtype, m.weight.device) for m in linears}) != 1:
            return "weights of different dtypes"
        return None
    states = [m.weight.quant_state for m in linears]
    if any(s is None or getattr(s, "packing_format_for_cpu", False) for s in states):
        return "4-bit weights not in bitsandbytes' standard layout"
    pairs = zip(states, linears, strict=True)
    settings = {(s.blocksize, s.quant_type, s.dtype, m.weight.dtype, m.weight.device) for s, m in pairs}
    if len(settings) > 1:
        return "different 4-bit settings"
    if any(s.state2 is not None and s.state2.blocksize != 256 for s in states if s.nested):
        return "nested absmax blocks other than 256"
    if not all(torch.equal(s.code, states[0].code) for s in states):
        return "different 4-bit code books"
    if any(int(s.shape[0]) * int(s.shape[1]) % s.blocksize for s in states):
        return f"a weight's size is not a multiple of the {states[0].blocksize}-weight quantisation block"
    if first.weight.dtype != torch.uint8:
        return f"4-bit storage {first.weight.dtype} (only uint8 is re-packed)"
    return None


def _fuse_linears(linears: list[Any]) -> nn.Module:
    in_features = int(linears[0].in_features)
    out_features = sum(int(m.out_features) for m in linears)
    bias = None if linears[0].bias is None else torch.cat([m.bias.detach() for m in linears])
    if _is_4bit(linears[0]):
        return _fuse_4bit(linears, in_features, out_features, bias)
    weight = linears[0].weight
    fused = nn.Linear(in_features, out_features, bias=bias is not None, device="meta", dtype=weight.dtype)
    fused.weight = nn.Parameter(torch.cat([m.weight.detach() for m in linears]), requires_grad=False)
    if bias is not None:
        fused.bias = nn.Parameter(bias, requires_grad=False)
    return fused


def first_level_absmax(state: Any) -> torch.Tensor:
    """A 4-bit weight's per-block scales in float32, exactly as bitsandbytes' dequantisation reconstructs them."""
    import bitsandbytes.functional as F

    if not state.nested:
        absmax: torch.Tensor = state.absmax.float()
        return absmax
    # The same two steps as bitsandbytes' `dequantize_4bit` and its CUDA dequantize+linear path.
    absmax = F.dequantize_blockwise(state.absmax, state.state2)
    absmax += state.offset
    return absmax.float()


def _fuse_4bit(linears: list[Any], in_features: int, out_features: int, bias: torch.Tensor | None) -> nn.Module:
    import bitsandbytes.functional as F
    from bitsandbytes.nn.modules import Linear4bit, Params4bit

    first = linears[0]
    states = [m.weight.quant_state for m in linears]
    state = states[0]
    data = torch.cat([m.weight.data.reshape(-1) for m in linears]).reshape(-1, 1)
    quant_state = F.QuantState(  # type: ignore[no-untyped-call]
        absmax=torch.cat([first_level_absmax(s) for s in states]),
        shape=torch.Size([out_features, in_features]),
        code=state.code,
        blocksize=state.blocksize,
        quant_type=state.quant_type,
        dtype=state.dtype,
    )
    fused = Linear4bit(  # type: ignore[no-untyped-call]
        in_features,
        out_features,
        bias=bias is not None,
        compute_dtype=first.compute_dtype,
        compress_statistics=False,
        quant_type=state.quant_type,
        quant_storage=first.weight.quant_storage,
        device="meta",
    )
    fused.weight = Params4bit(
        data,
        requires_grad=False,
        quant_state=quant_state,
        blocksize=state.blocksize,
        compress_statistics=False,
        quant_type=state.quant_type,
        quant_storage=first.weight.quant_storage,
        module=fused,
        bnb_quantized=True,
    )
    fused.compute_type_is_set = first.compute_type_is_set
    if bias is not None:
        fused.bias = nn.Parameter(bias, requires_grad=False)
    return fused
