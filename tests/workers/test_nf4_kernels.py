"""The start-up choice between bitsandbytes' fused 4-bit kernel and dequantize+linear: the table logic, with a timer
given in place of the device's (the timing itself runs on a GPU only: bench/profile_step.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from router.core.workers import WorkerConfig
from workers import nf4_kernels
from workers.loader import load_model
from workers.nf4_kernels import KernelTable, Shape, choose, install

# Seconds per matmul, by ((out, in), rows): the fused kernel and dequantize+linear.
TIMES: dict[tuple[Shape, int], tuple[float, float]] = {
    ((4608, 3584), 1): (1.0, 9.0),
    ((4608, 3584), 16): (5.0, 4.0),
    ((37888, 3584), 1): (2.0, 8.0),
    ((37888, 3584), 16): (3.0, 3.0),  # a tie keeps the fused kernel: it needs no bf16 copy of the weight
}


def test_each_shape_and_row_count_gets_the_faster_path() -> None:
    asked: list[tuple[Shape, int, bool]] = []

    def timer(shape: Shape, rows: int, fused: bool) -> float:
        asked.append((shape, rows, fused))
        return TIMES[(shape, rows)][0 if fused else 1]

    table = choose([(4608, 3584), (37888, 3584)], [16, 1, 16], timer)
    assert table == {
        (1, 4608, 3584): True,
        (16, 4608, 3584): False,
        (1, 37888, 3584): True,
        (16, 37888, 3584): True,
    }
    assert sorted(asked) == sorted({(shape, rows, fused) for (shape, rows) in TIMES for fused in (True, False)})


def test_the_table_answers_for_what_it_measured_and_leaves_the_rest_to_bitsandbytes() -> None:
    heuristic_calls: list[tuple[int | None, torch.dtype, int, int, int]] = []

    def heuristic(device: int | None, dtype: torch.dtype, m: int, n: int, k: int) -> bool:
        heuristic_calls.append((device, dtype, m, n, k))
        return True

    table = KernelTable(heuristic)
    table.choices[(0, torch.bfloat16, 16, 4608, 3584)] = False
    assert table(0, torch.bfloat16, 16, 4608, 3584) is False
    assert heuristic_calls == []
    assert table(0, torch.bfloat16, 512, 4608, 3584) is True, "a prefill chunk: not measured"
    assert table(1, torch.bfloat16, 16, 4608, 3584) is True, "another device"
    assert table(0, torch.float16, 16, 4608, 3584) is True, "another dtype"
    assert heuristic_calls == [
        (0, torch.bfloat16, 512, 4608, 3584),
        (1, torch.bfloat16, 16, 4608, 3584),
        (0, torch.float16, 16, 4608, 3584),
    ]


def test_install_puts_the_table_in_front_of_bitsandbytes_dispatch_once() -> None:
    def heuristic(device: int | None, dtype: torch.dtype, m: int, n: int, k: int) -> bool:
        return m <= 4

    ops = SimpleNamespace(_gemm_4bit_use_custom_fn=heuristic)  # bitsandbytes.backends.cuda.ops, as far as used
    table = install(ops)
    assert isinstance(table, KernelTable) and ops._gemm_4bit_use_custom_fn is table
    assert table.heuristic is heuristic
    assert install(ops) is table, "a second worker in the process shares the table, never wraps it twice"
    assert install(SimpleNamespace()) is None, "a bitsandbytes without the hook keeps its own heuristic"


def test_measuring_on_the_cpu_does_nothing(checkpoint_dir: Path) -> None:
    loaded = load_model(
        WorkerConfig(model="demo:large", device="cpu", dtype="bfloat16", quantization="nf4"), checkpoint_dir
    )
    assert nf4_kernels.four_bit_layers(loaded.model) == {}, "CPU weights: nothing to time"
    assert nf4_kernels.measure(loaded.model, [1, 2, 4]) == {}
