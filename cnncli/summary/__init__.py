"""`cnn summarize`: per-layer tables, totals, training memory and XLA's cross-check for any model.

Nothing heavy is imported here (the CLI imports this package for `--help`); jax and flax
load inside the functions that need them.
"""

from cnncli.summary.memory import MemoryModel, SummaryError, parse_memory
from cnncli.summary.report import ModelSummary, SummaryOptions, summarize_model
from cnncli.summary.walk import LayerRow, group_blocks, walk_layers

__all__ = ["LayerRow", "MemoryModel", "ModelSummary", "SummaryError", "SummaryOptions", "group_blocks", "parse_memory",
           "summarize_model", "walk_layers"]
