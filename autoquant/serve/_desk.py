"""Remote evaluation: the study handed out to clients in the user's own environment.

:class:`Desk` is the :class:`~autoquant.search.Scorer` of ``autoquant serve``
(:mod:`autoquant.serve` puts it on HTTP, :mod:`autoquant.serve.client` is the other end). Each model
the study needs scored, the FP32 reference first unless its score is known, becomes a handout:
a client asks for it, runs its batches through the handout's session (created once), and
reports the score it computed. A handout whose client sends nothing for ``trial_timeout``
seconds, or that its client abandons, is given back: an INT8 trial is failed and queued again
(:class:`~autoquant.search._phases.TrialReturned`), the FP32 trial is handed out again.

The study itself is run by :func:`~autoquant.serve._drivers.serve_study`, with several drivers
that share the Desk's ``gate``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import onnxruntime as ort
from optuna.trial import TrialState

from autoquant.common import ProgressFn
from autoquant.config import StudyConfig
from autoquant.engine.graph import session_for
from autoquant.errors import SearchStopped, TrialReturned
from autoquant.evaluation import compute_decay
from autoquant.search import Candidate, HandingScorer, OpenSearch, Trial, current_best
from autoquant.serve._arrays import InputSpec, PayloadError, decode_batch, encode_arrays
from autoquant.serve._wire import (
    Abandoned,
    Asked,
    AskState,
    BestTrial,
    DeskState,
    InputInfo,
    OutTrial,
    Reported,
    Status,
    TrialInfo,
)

logger = logging.getLogger(__name__)

_PAST_KEPT = 1000  # settled handout ids remembered, to answer 409 rather than 404


class NotHeld(LookupError):
    """A handout id that is unknown (404) or no longer out (409)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Handout:
    """A model out with a client, or waiting for one."""

    trial: Trial
    inputs: list[InputSpec]
    outputs: list[str]
    id: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    client: str | None = None
    taken: float | None = None  # time.time() when a client took it
    seen: float = 0.0  # time.monotonic() of its client's last request
    score: float | None = None
    returned: str | None = None
    woken: bool = False  # reported or abandoned: its driver is about to run again

    def info(self, timeout: float) -> TrialInfo:
        """The handout as its client sees it."""
        return TrialInfo(
            id=self.id,
            number=self.trial.number,
            fp32=self.trial.fp32,
            params={k: list(v) if isinstance(v, tuple) else v for k, v in self.trial.params.items()},
            inputs=[InputInfo.of(i) for i in self.inputs],
            outputs=self.outputs,
            timeout_s=timeout,
        )


class Desk(HandingScorer):
    """Hands the study's models to remote clients and waits for their scores (thread-safe).

    Args:
        config: The study config.
        trial_timeout: Seconds a client may stay silent before its trial is given back.
        stop: Set to stop the study: waiting drivers give their trials back and stop.
    """

    def __init__(self, config: StudyConfig, trial_timeout: float, stop: threading.Event) -> None:
        super().__init__(config)
        self.trial_timeout = trial_timeout
        self.stop = stop
        self.gate = threading.Lock()
        self.state = DeskState.PREPARING
        self.reason = ""
        self.search: OpenSearch | None = None
        self.reported = 0  # scores reported
        self._cond = threading.Condition()
        self._ready: deque[Handout] = deque()
        self._out: dict[str, Handout] = {}
        self._past: dict[str, str] = {}
        self._asking = 0  # clients waiting in ask()
        self._drivers = 1  # drivers serving the study (serve_study sets it)
        self._idle_drivers = 0  # drivers waiting, the gate released
        self._waking = 0  # drivers whose handout came back, not yet running again
        self._draining = False  # a driver found the study done: the others may claim, to find it too
        self._fp32_model: object | None = None
        self._fp32_session: ort.InferenceSession | None = None
        self._fp32_lock = threading.Lock()

    @contextlib.contextmanager
    def released(self) -> Iterator[None]:
        """Let the other drivers run while this one waits."""
        with self._cond:
            self._idle_drivers += 1
        self.gate.release()
        try:
            yield
        finally:
            self.gate.acquire()
            with self._cond:
                self._idle_drivers -= 1

    # ---- the drivers' side ------------------------------------------------------------------
    def reference_score(self, fp32: Candidate, stored: float | None, progress: ProgressFn) -> float:
        self._fp32_model = fp32.model
        return super().reference_score(fp32, stored, progress)

    def _hand(self, trial: Trial) -> float:
        session = trial._session
        handout = Handout(
            trial,
            [InputSpec.from_ort(i) for i in session.get_inputs()],
            [o.name for o in session.get_outputs()],
        )
        with self._cond:
            self._ready.append(handout)
            self._cond.notify_all()
        what = "the FP32 model" if trial.fp32 else f"trial {trial.number}"
        logger.debug("%s is ready for a client", what)
        try:
            with self.released(), self._cond:
                while True:
                    if handout.score is not None:
                        return handout.score
                    idle = time.monotonic() - handout.seen
                    if handout.returned is None and handout.taken is not None and idle > self.trial_timeout:
                        handout.returned = (
                            f"its client {handout.client} sent nothing for {self.trial_timeout:g} s"
                        )
                    if handout.returned is not None or self.stop.is_set():
                        self._settle(handout, handout.returned or "the server stopped")
                        if handout.returned is None:
                            raise SearchStopped
                        raise TrialReturned(handout.returned)
                    self._cond.wait(timeout=0.5)
        finally:
            if handout.woken:  # this driver holds the gate again
                with self._cond:
                    self._waking -= 1

    def may_claim(self, slot: int) -> bool:
        """Whether driver ``slot`` may claim a trial now (asked holding the gate): the first always;
        the others when more clients wait than there are trials ready or drivers about to make one
        (the drivers not waiting, and those whose trial just came back)."""
        with self._cond:
            busy = self._drivers - 1 - self._idle_drivers + self._waking
            return slot == 0 or self._draining or self._asking > len(self._ready) + busy

    def drained(self) -> None:
        """A driver is done: let the others claim (they meet the end of the study, or its last trials)."""
        with self._cond:
            self._draining = True

    def _settle(self, handout: Handout, reason: str) -> None:
        """Take a handout off the desk (call holding the condition)."""
        with contextlib.suppress(ValueError):
            self._ready.remove(handout)
        self._out.pop(handout.id, None)
        self._past[handout.id] = reason
        while len(self._past) > _PAST_KEPT:
            self._past.pop(next(iter(self._past)))

    def opened(self, search: OpenSearch, drivers: int) -> None:
        """The study is set up: ``drivers`` drivers hand out its trials."""
        with self._cond:
            self.search, self.state, self._drivers = search, DeskState.RUNNING, drivers
            self._cond.notify_all()

    def finish(self, state: DeskState, reason: str) -> None:
        """No more handouts: clients that ask are told the study is ``state`` (finished or stopped)."""
        with self._cond:
            self.state, self.reason = state, reason
            self._cond.notify_all()

    # ---- the clients' side -------------------------------------------------------------------
    def ask(self, client: str, wait: float) -> Asked:
        """The next handout, or ``wait`` (none within ``wait`` seconds), ``finished`` or ``stopped``."""
        deadline = time.monotonic() + wait
        with self._cond:
            self._asking += 1
            try:
                return self._take(client, deadline)
            finally:
                self._asking -= 1

    def _take(self, client: str, deadline: float) -> Asked:
        with self._cond:
            while True:
                if self._ready:
                    handout = self._ready.popleft()
                    handout.client, handout.taken, handout.seen = client, time.time(), time.monotonic()
                    self._out[handout.id] = handout
                    what = "the FP32 model" if handout.trial.fp32 else f"trial {handout.trial.number}"
                    logger.info("%s is out with %s", what, client)
                    return Asked(state=AskState.TRIAL, trial=handout.info(self.trial_timeout))
                if self.state.over:
                    return Asked(state=AskState(self.state), reason=self.reason)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return Asked(state=AskState.WAIT, reason=self.reason)
                self._cond.wait(remaining)

    def _held(self, handout_id: str) -> Handout:
        with self._cond:
            handout = self._out.get(handout_id)
            if handout is None:
                if handout_id in self._past:
                    raise NotHeld(f"trial {handout_id} is no longer out: {self._past[handout_id]}", 409)
                raise NotHeld(f"no trial {handout_id} was handed out", 404)
            handout.seen = time.monotonic()
            return handout

    def run(self, handout_id: str, body: bytes) -> bytes:
        """Run a batch through a handout's model; the outputs as an ``.npz``.

        Raises:
            NotHeld: The id is unknown or no longer out.
            PayloadError: The body is malformed or not what the model takes.
        """
        handout = self._held(handout_id)
        outputs = _run(handout.trial._session, decode_batch(body, handout.inputs))
        self._held(handout_id)  # a long batch counts as activity
        return outputs

    def run_fp32(self, body: bytes) -> bytes:
        """Run a batch through the FP32 model (once the study is prepared)."""
        with self._fp32_lock:
            if self._fp32_session is None:
                if self._fp32_model is None:
                    raise NotHeld("the study is still preparing its FP32 model; ask again shortly", 409)
                self._fp32_session = session_for(self._fp32_model)
            session = self._fp32_session
        inputs = [InputSpec.from_ort(i) for i in session.get_inputs()]
        return _run(session, decode_batch(body, inputs))

    def report(self, handout_id: str, score: float) -> Reported:
        """Take a handout's score; its decay against the FP32 score (0 for the FP32 model itself)."""
        if not math.isfinite(score):
            raise PayloadError(f"the score must be a finite number, got {score}", 422)
        with self._cond:
            handout = self._held(handout_id)
            fp32 = score if handout.trial.fp32 else self._fp32_score
            assert fp32 is not None
            decay = compute_decay(fp32, score, self.config.search.decay)
            handout.score, handout.woken = float(score), True
            self._waking += 1
            self._settle(handout, "its score was reported")
            self.reported += 1
            self._cond.notify_all()
        return Reported(
            number=handout.trial.number,
            fp32=handout.trial.fp32,
            score=float(score),
            decay=decay,
            within_budget=bool(decay <= self.config.search.accept_int8_decay),
        )

    def abandon(self, handout_id: str) -> Abandoned:
        """Give a handout back: it is handed out again (an INT8 trial as a new trial number)."""
        with self._cond:
            handout = self._held(handout_id)
            handout.returned, handout.woken = f"abandoned by its client {handout.client}", True
            self._waking += 1
            self._cond.notify_all()
        return Abandoned(number=handout.trial.number, fp32=handout.trial.fp32, abandoned=True)

    def status(self) -> Status:
        """The study as the clients see it."""
        now = time.monotonic()
        with self._cond:
            out = [
                OutTrial(
                    id=h.id,
                    number=h.trial.number,
                    fp32=h.trial.fp32,
                    client=h.client,
                    idle_s=round(now - h.seen, 3),
                )
                for h in self._out.values()
            ]
            state, reason, ready = self.state, self.reason, len(self._ready)
            reported = self.reported
        study, completed, best = self._progress()
        return Status(
            state=state,
            reason=reason,
            study=study,
            budget=self.config.search.accept_int8_decay,
            fp32_score=self._fp32_score,
            ready=ready,
            out=out,
            reported=reported,
            completed=completed,
            best=best,
        )

    def _progress(self) -> tuple[str | None, int, BestTrial | None]:
        """The study's name, its completed trials and its best so far (none before it is set up)."""
        search = self.search
        if search is None:
            return None, 0, None
        trials = search.storage.call(search.study.get_trials, deepcopy=False, states=(TrialState.COMPLETE,))
        best = search.storage.call(current_best, search.study)
        if best is None:
            return search.study.study_name, len(trials), None
        entry = BestTrial(
            number=best.number,
            key=best.key,
            score=best.score,
            decay=best.decay,
            within_budget=best.within_budget,
        )
        return search.study.study_name, len(trials), entry


def _run(session: ort.InferenceSession, feeds: dict) -> bytes:
    try:
        return encode_arrays(session.run(None, feeds))
    except (
        ort.capi.onnxruntime_pybind11_state.InvalidArgument,
        ort.capi.onnxruntime_pybind11_state.Fail,
    ) as exc:
        raise PayloadError(f"the model refused the batch: {exc}", 422) from exc
