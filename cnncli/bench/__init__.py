"""`cnn bench`: time the training step that `cnn train` runs.

The step is built exactly as the training loop builds it (`make_train_step` with the
config's augmentation, the optimizer from `cnncli.train.optim`, the state replicated and
the batch sharded over the mesh of `cnncli.distributed`) and compiled ahead of time, so
compile time is measured apart from running time. Steady-state time is the median over
several windows of steps after a warm-up, each window ended by waiting for the device.

FLOPs come two ways: `flops_per_step` is XLA's cost analysis of the compiled step (null on a
GPU, where it would leave out the convolutions that run as cuDNN calls; where the step's convolutions and batch
norms are oneDNN calls, it is the analysis of the same step compiled with XLA's own -- the
figure `cnn summarize` reports, cnncli.train.xla_cost), `model_flops_per_step` is counted from
the traced forward pass (convolutions and matrix products, x 3 for the backward pass).
Achieved FLOP/s and MFU use the model FLOPs, MFU against the chip's dense bf16 peak.

The modules, in the order a bench runs: workload (the request, the config and the batches it
times), run (build, compile and time the step), timing (windows of steps, the eval step),
flops (the model's FLOPs, the chips' peaks) and report (the JSON report).
"""

from cnncli.bench.flops import PEAK_BF16_FLOPS, model_flops_per_step, peak_flops
from cnncli.bench.run import run_bench
from cnncli.bench.workload import DATA_CHOICES, DTYPES, BenchRequest, resolve_config

__all__ = ["DATA_CHOICES", "DTYPES", "PEAK_BF16_FLOPS", "BenchRequest", "model_flops_per_step", "peak_flops",
           "resolve_config", "run_bench"]
