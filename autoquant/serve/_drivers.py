"""``autoquant serve``'s study: run as ``tune`` runs it, with ``slots`` drivers in this process so
that as many trials can be out with clients at once.

The drivers share one lock (``Desk.gate``) that each releases only while it waits, for a client or
for another driver's trial: the search context is used by one driver at a time, and the clients'
evaluations overlap. The first driver claims trials as ``tune`` does; the others claim one only
when a client is waiting and no trial is ready or about to be (:meth:`Desk.may_claim`), so a single
client is never handed trials prepared ahead that a finished fast-mode study would not have run.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

from autoquant.config import StudyConfig
from autoquant.errors import SearchError, SearchStopped
from autoquant.names import Command
from autoquant.search import Reporter, TuneResult, drive, open_search, serving
from autoquant.serve._desk import Desk
from autoquant.serve._wire import DeskState


class _SharedReporter:
    """The drivers' one reporter: a phase is shown once, whichever driver enters it first."""

    def __init__(self, reporter: Reporter) -> None:
        self._reporter, self._phase = reporter, None

    def phase(self, message: str) -> None:
        if message != self._phase:
            self._phase = message
            self._reporter.phase(message)

    def __getattr__(self, name: str):
        return getattr(self._reporter, name)


def serve_study(
    config: StudyConfig,
    desk: Desk,
    reporter: Reporter,
    slots: int,
    fresh: bool = False,
    stop: Callable[[], bool] | None = None,
) -> TuneResult:
    """Run the study with ``desk`` as its scorer and ``slots`` drivers; see the module docstring.

    Raises:
        AutoquantError: As :func:`autoquant.search.tune`.
    """
    stopped = stop or desk.stop.is_set
    reporter = _SharedReporter(reporter)  # type: ignore[assignment]
    with serving(config):
        try:
            with desk.gate:
                search = open_search(config, reporter, fresh, stopped, desk, Command.SERVE)
        except SearchStopped:
            desk.finish(DeskState.STOPPED, "the server stopped before the first trial")
            raise KeyboardInterrupt from None
        desk.opened(search, slots)
        results: list[TuneResult] = []
        errors: list[BaseException] = []

        def run(slot: int) -> None:
            try:
                with desk.gate:
                    results.append(
                        drive(search, slot, desk.released, functools.partial(desk.may_claim, slot))
                    )
                desk.drained()
            except BaseException as exc:  # raised in the main thread below
                errors.append(exc)
                desk.stop.set()

        threads = [
            threading.Thread(target=run, args=(i,), name=f"autoquant-driver-{i}", daemon=True)
            for i in range(slots)
        ]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(timeout=0.2)
        finally:
            if desk.stop.is_set() or stopped():
                desk.finish(DeskState.STOPPED, "stopped")
            else:
                desk.finish(DeskState.FINISHED, "the study is done")
    real = [e for e in errors if not isinstance(e, SearchError)]
    if real:
        raise real[0]
    if not results:
        raise errors[0] if errors else SearchError("no driver of the study finished")
    return results[-1]
