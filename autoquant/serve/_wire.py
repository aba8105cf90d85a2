"""The shapes of the requests and answers of ``autoquant serve``, written once: the Desk builds
them and the HTTP layer sends them (they make its OpenAPI spec, ``docs/remote-api.json``).

The arrays themselves travel as ``.npy``/``.npz`` bodies (:mod:`autoquant.serve._arrays`). The
client (:mod:`autoquant.serve.client`) reads these shapes as plain JSON, so that it needs only the
standard library and numpy.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from autoquant.serve._arrays import InputSpec


class DeskState(StrEnum):
    """Where the served study is: setting up, handing out trials, or done (finished or stopped)."""

    PREPARING = "preparing"
    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped"

    @property
    def over(self) -> bool:
        """No more trials will be handed out."""
        return self in (DeskState.FINISHED, DeskState.STOPPED)


class AskState(StrEnum):
    """The answer to a client asking for a trial: one, none yet (ask again), or the study's end."""

    TRIAL = "trial"
    WAIT = "wait"
    FINISHED = "finished"
    STOPPED = "stopped"


class Error(BaseModel):
    detail: str


class InputInfo(BaseModel):
    name: str
    dtype: str = Field(description="numpy dtype name, e.g. float32")
    shape: list[int | None] = Field(description="null for a dynamic axis")

    @classmethod
    def of(cls, spec: InputSpec) -> InputInfo:
        """A model input as the API shows it."""
        return cls(name=spec.name, dtype=spec.dtype.name, shape=list(spec.shape))


class TrialInfo(BaseModel):
    id: str = Field(description="the handout id used in the trial's URLs")
    number: int = Field(description="Optuna trial number; -1 for the FP32 model")
    fp32: bool
    params: dict[str, Any]
    inputs: list[InputInfo]
    outputs: list[str] = Field(description="output names, in the order of the .npz members 0, 1, ...")
    timeout_s: float = Field(description="a trial whose client sends nothing for this long is given back")


class Asked(BaseModel):
    state: AskState
    trial: TrialInfo | None = None
    reason: str = ""


class Score(BaseModel):
    score: float = Field(description="the trial's score, higher is better; finite")


class Reported(BaseModel):
    number: int
    fp32: bool
    score: float
    decay: float
    within_budget: bool


class Abandoned(BaseModel):
    number: int
    fp32: bool
    abandoned: bool


class OutTrial(BaseModel):
    id: str
    number: int
    fp32: bool
    client: str | None
    idle_s: float = Field(description="seconds since its client's last request")


class BestTrial(BaseModel):
    number: int
    key: str
    score: float
    decay: float
    within_budget: bool


class Status(BaseModel):
    state: DeskState
    reason: str
    study: str | None = None
    budget: float
    fp32_score: float | None
    ready: int = Field(description="trials waiting for a client")
    out: list[OutTrial] = Field(description="trials out with clients")
    reported: int
    completed: int
    best: BestTrial | None
