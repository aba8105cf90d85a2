"""The command line: ``autoquant tune | worker | serve | quantize | check | ...`` and their tables.

A thin layer over :mod:`autoquant.search` and :mod:`autoquant.serve`.
"""

from autoquant.cli._app import main
from autoquant.cli._display import LiveReporter, best_latency_line, summary_table

__all__ = [
    "LiveReporter",
    "best_latency_line",
    "main",
    "summary_table",
]
