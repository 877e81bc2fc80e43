"""Fulfilment rules: which steps a tenant may configure, and the saga's state machine.

A saga runs its steps in order. A step's action is called until it answers 2xx or has
used its attempts; a step that finally fails turns the saga to ``compensating``, which
calls the compensation of every completed step in reverse order (each retried the same
way). The saga ends ``completed`` (every step done), ``compensated`` (a step failed and
what was done is undone) or ``failed`` (a compensation finally failed: the saga needs
attention, and ``retry`` resumes the compensation where it stopped).

The functions here change a ``Saga`` in memory and say what follows; the worker
(``meridian.fulfilment.worker``) loads the saga locked, applies them, writes the saga back
and queues the events in the same transaction, and makes the calls between two such
transactions. Each transition checks that the saga is where the job expects it, so a
stale or duplicated job changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from meridian.errors import UNIQUE, Conflict, ValidationFailed
from meridian.fulfilment.models import FINISHED
from meridian.fulfilment.schemas import StepsUpdate
from meridian.web.targets import TargetRefused, check_url

Phase = Literal["action", "compensation"]
ACTION: Phase = "action"
COMPENSATION: Phase = "compensation"


# -- configuration ---------------------------------------------------------------------
def validate_steps(body: StepsUpdate, *, allow_private: bool) -> list[dict[str, Any]]:
    """The steps as stored, or 422 naming the first wrong field (a duplicate name, a URL
    that cannot be a target)."""
    seen: set[str] = set()
    for i, step in enumerate(body.steps):
        if step.name in seen:
            raise _invalid(["steps", i, "name"], f"{step.name!r} names another step too", UNIQUE)
        seen.add(step.name)
        for part in ("action", "compensation"):
            url = getattr(step, part).url
            try:
                check_url(url, allow_private=allow_private)
            except TargetRefused as exc:
                raise _invalid(["steps", i, part, "url"], str(exc)) from exc
    return [s.model_dump(mode="json") for s in body.steps]


def _invalid(loc: list[str | int], message: str, kind: str = "value_error") -> ValidationFailed:
    path = ".".join(str(p) for p in loc)
    return ValidationFailed(
        f"{path}: {message}", errors=[{"loc": loc, "msg": message, "type": kind}]
    )


def won_opportunity(event: dict[str, Any]) -> tuple[UUID, dict[str, Any]] | None:
    """The event's id and the opportunity it holds, if it is an ``opportunity.won``."""
    if event.get("type") != "opportunity.won":
        return None
    record = (event.get("data") or {}).get("record")
    if not isinstance(record, dict) or "id" not in record:
        return None
    return UUID(str(event["id"])), record


# -- the saga ------------------------------------------------------------------------
def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Step:
    id: UUID
    position: int
    name: str
    action: dict[str, Any]
    compensation: dict[str, Any]
    timeout: float
    max_attempts: int
    state: str
    attempts: int
    compensation_attempts: int
    started_at: datetime | None
    completed_at: datetime | None
    compensated_at: datetime | None
    updated_at: datetime
    last_error: str | None
    result: dict[str, Any] | None

    def public(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "name": self.name,
            "state": self.state,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "compensation_attempts": self.compensation_attempts,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "compensated_at": self.compensated_at,
            "updated_at": self.updated_at,
            "last_error": self.last_error,
            "result": self.result,
        }


@dataclass
class Saga:
    id: UUID
    opportunity_id: UUID
    won_event_id: UUID
    owner_id: UUID | None
    state: str
    opportunity: dict[str, Any]
    config_version: int
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    steps: list[Step] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def current(self) -> tuple[Phase, int] | None:
        """The call the saga waits for: (phase, step position); None once it ended."""
        if self.state == "running":
            for step in self.steps:
                if step.state != "completed":
                    return ACTION, step.position
        elif self.state == "compensating":
            for step in reversed(self.steps):
                if step.state in ("completed", "compensating"):
                    return COMPENSATION, step.position
        return None

    def summary(self) -> dict[str, Any]:
        """What the saga's events show of it."""
        return {
            "id": self.id,
            "opportunity_id": self.opportunity_id,
            "state": self.state,
            "config_version": self.config_version,
            "error": self.error,
            "steps": [
                {"name": s.name, "state": s.state, "attempts": s.attempts} for s in self.steps
            ],
        }

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "opportunity_id": self.opportunity_id,
            "won_event_id": self.won_event_id,
            "state": self.state,
            "config_version": self.config_version,
            "error": self.error,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
            "steps": [s.public() for s in self.steps],
        }


@dataclass(frozen=True)
class Attempt:
    """One call of a step's action or compensation."""

    saga_id: UUID
    phase: Phase
    position: int
    number: int
    name: str
    method: str
    url: str
    timeout: float
    idempotency_key: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    ok: bool
    status: int | None = None
    result: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class Transition:
    """What recording an outcome did: the steps it changed, the events to queue
    (``fulfilment.<action>`` and their data), whether saq should retry the job (a failed
    attempt with attempts left), and the call to queue next."""

    changed: list[Step] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    retry: bool = False
    next: tuple[Phase, int] | None = None
    stale: bool = False


def idempotency_key(saga_id: UUID, step: str, phase: Phase) -> str:
    """``<saga>:<step>`` for the action; the compensation has a key of its own so a
    receiver that dedupes by key never answers it with the action's stored response."""
    key = f"{saga_id}:{step}"
    return key if phase == ACTION else f"{key}:compensation"


def begin(saga: Saga, tenant_id: UUID, phase: Phase, position: int) -> Attempt | None:
    """Start the next call of the step at ``position`` in ``phase``, if that is what the
    saga waits for (None: a stale job). An attempt found running was cut short (its
    worker stopped): it counts, and the call is made again under the same key."""
    if saga.current() != (phase, position):
        return None
    step = saga.steps[position]
    if phase == ACTION:
        step.state = "running"
        step.attempts += 1
        step.started_at = step.started_at or _now()
        number = step.attempts
    else:
        step.state = "compensating"
        step.compensation_attempts += 1
        number = step.compensation_attempts
    results = {
        s.name: (s.result or {}).get("body")
        for s in saga.steps
        if s.result is not None
        and (s.position < position or (phase == COMPENSATION and s.position == position))
    }
    call = step.action if phase == ACTION else step.compensation
    body = {
        "saga_id": str(saga.id),
        "tenant_id": str(tenant_id),
        "opportunity": saga.opportunity,
        "step": step.name,
        "phase": phase,
        "attempt": number,
        "results": results,
    }
    return Attempt(
        saga_id=saga.id,
        phase=phase,
        position=position,
        number=number,
        name=step.name,
        method=str(call["method"]),
        url=str(call["url"]),
        timeout=step.timeout,
        idempotency_key=idempotency_key(saga.id, step.name, phase),
        body=body,
    )


def record(saga: Saga, attempt: Attempt, outcome: Outcome) -> Transition:
    """Apply the outcome of ``attempt`` to ``saga``: the step's state, the saga's, the
    events, and what follows. Nothing changes if another job has moved the saga on."""
    step = saga.steps[attempt.position]
    expected = (
        ("running", step.attempts)
        if attempt.phase == ACTION
        else ("compensating", step.compensation_attempts)
    )
    if saga.current() != (attempt.phase, attempt.position) or expected != (
        step.state,
        attempt.number,
    ):
        return Transition(stale=True)
    out = Transition(changed=[step])
    detail: dict[str, Any] = {
        "step": step.name,
        "position": step.position,
        "phase": attempt.phase,
        "attempt": attempt.number,
    }
    if outcome.ok:
        if attempt.phase == ACTION:
            step.state, step.completed_at, step.result = "completed", _now(), outcome.result
            out.events.append(("step_completed", {**detail, "status": outcome.status}))
        else:
            step.state, step.compensated_at = "compensated", _now()
            out.events.append(("step_compensated", {**detail, "status": outcome.status}))
        _follow(saga, out)
        return out
    step.last_error = outcome.error
    used = step.attempts if attempt.phase == ACTION else step.compensation_attempts
    final = used >= step.max_attempts
    failed = {**detail, "status": outcome.status, "error": outcome.error, "final": final}
    out.events.append(("step_failed", failed))
    if not final:
        if attempt.phase == ACTION:
            step.state = "failed"
        out.retry = True
        return out
    if attempt.phase == ACTION:
        step.state = "failed"
        saga.state = "compensating"
        _follow(saga, out)
    else:
        # The step stays "compensating": what it did is not undone.
        saga.state = "failed"
        saga.error = f"compensation of step {step.name!r} failed: {outcome.error}"
        out.events.append(("failed", {"step": step.name, "error": saga.error}))
    return out


def _follow(saga: Saga, out: Transition) -> None:
    """After a transition: the call to queue next, or the saga's end."""
    out.next = saga.current()
    if out.next is not None:
        return
    if saga.state == "running":
        saga.state = "completed"
        out.events.append(("completed", {}))
    elif saga.state == "compensating":
        saga.state = "compensated"
        failed = [s.name for s in saga.steps if s.state == "failed"]
        out.events.append(("compensated", {"failed_step": failed[0] if failed else None}))


def retry(saga: Saga) -> tuple[Phase, int]:
    """Resume a failed saga's compensation where it stopped, with fresh attempts."""
    if saga.state != "failed":
        raise Conflict(f"The saga is {saga.state}; only a failed saga can be retried.")
    saga.state, saga.error = "compensating", None
    current = saga.current()
    assert current is not None, "a failed saga waits for a compensation"
    saga.steps[current[1]].compensation_attempts = 0
    return current
