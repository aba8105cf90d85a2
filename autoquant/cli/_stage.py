"""The live display of ``tune``, ``worker`` and ``serve``, with the log capture's stages."""

from __future__ import annotations

from typing import Any

from autoquant.cli._console import end_stage
from autoquant.cli._display import LiveReporter


class StageReporter(LiveReporter):
    """A :class:`LiveReporter` that writes the warnings held during a phase or trial before its
    line, and knows whether a trial has started (before that, Ctrl-C has nothing to wait for)."""

    trials_started = False

    def phase(self, message: str) -> None:
        end_stage()
        super().phase(message)

    def trial_started(self, *args: Any) -> None:
        self.trials_started = True
        super().trial_started(*args)

    def trial_finished(self, *args: Any) -> None:
        end_stage()
        super().trial_finished(*args)
