"""int8 layers of a compiled-runtime table, calibrated on the uniform-int8 model measured end to end.

Timed alone, a dense int8 layer (``CompiledInt8``) quantizes its input in a pass of its own and reads
and writes its activations in float32; inside a compiled model inductor fuses that quantization
into the operation before it (a LayerNorm, GELU or residual add) and the rescale into the one
after, so the alone times overstate what int8 layers cost in the model (MiniLM, 16 x 32 tokens:
an allocation predicted at 1.80x measured 2.34x).  The additive model is kept and the dense int8
cells are scaled by one factor so that it reproduces a measured anchor: with O = base - prunable,
t_l the dense int8 ("q8:0.0000") time of layer l, and T the uniform-int8 model (every layer at
"q8:0.0000", weights rounded to int8) compiled and measured end to end beside the compiled dense
model (T = base * its median ratio to the dense model in the same interleaved rounds),

    f = (T - O) / sum_l t_l,        t_l <- f * t_l   for every layer,

so the table predicts the uniform-int8 model's measured time exactly.  Sparse int8 and fp32 cells
are left as timed.  The closed loop (``engine.run.stages.verify``) still measures whatever the search
picks, and tightens the target if the prediction was optimistic.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from torch import nn

from engine.core.grid import DENSE, int8_level
from engine.core.measure import time_interleaved
from engine.runtime.compiled import compile_model
from engine.timing.table import TimingTable

DENSE_INT8 = int8_level(DENSE)


def calibrate_int8(
    table: TimingTable, uniform_int8: nn.Module, run_model, example_inputs: Any, hardware, run_dense: Callable[[], Any],
) -> TimingTable:
    """``table`` with its dense int8 cells scaled by f (module docstring), ``uniform_int8`` the model with
    every layer of the table at "q8:0.0000"; the table as it is when a layer lacks that level."""
    if not all(DENSE_INT8 in layer.levels for layer in table.layers):
        return table
    uniform = compile_model(uniform_int8, example_inputs, run_model)
    stats = time_interleaved(
        {"dense": run_dense, "int8": lambda: uniform(example_inputs)},
        warmup=max(1, hardware.warmup), repeats=max(5, hardware.repeats // 2), max_spread=hardware.max_spread,
    )
    measured = table.base * stats["int8"].median / stats["dense"].median
    timed = sum(layer.seconds_at(DENSE_INT8) for layer in table.layers)
    factor = max(measured - table.overhead, 0.0) / timed
    layers = [
        replace(layer, seconds=tuple(s * factor if level == DENSE_INT8 else s for level, s in zip(layer.levels, layer.seconds)))
        for layer in table.layers
    ]
    environment = {**table.environment, "int8_calibration": {
        "uniform_int8_seconds": measured, "timed_int8_seconds": timed, "factor": factor,
        "ratio_to_dense": stats["int8"].median / stats["dense"].median,
    }}
    return replace(table, layers=layers, environment=environment)
