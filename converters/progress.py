"""Progress of long operations as data: the pipeline and the parity check report events, the CLI prints them,
the benchmark times the spans between them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

StepState = Literal["running", "up to date", "not built"]


@dataclass(frozen=True)
class StageStep:
    """One tower of one stage, as the pipeline reaches it."""

    number: int
    total: int
    tower: str
    stage: str
    state: StepState
    reason: str = ""  # why a step was not built

    @property
    def key(self) -> str:
        return f"{self.tower}.{self.stage}"


@dataclass(frozen=True)
class Note:
    """Anything else worth a line: loading the model, computing the reference, a tower failing parity."""

    text: str


Event = StageStep | Note
Progress = Callable[[Event], None]


def render(event: Event) -> str:
    if isinstance(event, Note):
        return event.text
    line = f"[{event.number}/{event.total}] {event.key}: {event.state}"
    return f"{line} ({event.reason})" if event.reason else line


def ignore(event: Event) -> None:
    """A Progress that reports nothing."""
