"""Drives tenant moves in the background of a long-running process (an API instance).

A move is started by the admin API and driven here, in a task of the instance that
planned it. Any instance also sweeps the control plane now and then for unfinished
moves that nobody drives (their driver died with its process, or stalled on a shard
that was down) and resumes them: the mover's advisory lock lets one process drive a
move at a time, so every instance may sweep. ``meridian moves resume`` does the same
by hand, in the foreground.
"""

from __future__ import annotations

import asyncio
import logging
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from sharding.models import FINAL_MOVE_STATES, TenantMove
from sharding.mover import MoveBusyError, MoveError, Mover

log = logging.getLogger("sharding.driver")


class MoveDriver:
    """Background tasks running :meth:`Mover.run_move`, one per move, and the sweep.

    ``sweep_interval`` seconds between sweeps (0: no sweeping; moves then finish only in
    the process that started them, or by ``meridian moves resume``).
    """

    def __init__(self, mover: Mover, control: AsyncEngine, *, sweep_interval: float) -> None:
        self.mover = mover
        self._control = control
        self.sweep_interval = sweep_interval
        self._running: dict[UUID, asyncio.Task[None]] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.sweep_interval > 0 and self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_loop())

    async def stop(self) -> None:
        """Cancels every task: a move is left in its recorded state, and its advisory
        lock is released with the task, so another instance's sweep resumes it."""
        tasks = [*self._running.values(), *([self._sweeper] if self._sweeper else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._running.clear()
        self._sweeper = None

    def drive(self, move_id: UUID) -> None:
        """Drive the move in the background unless this process does already."""
        if move_id in self._running:
            return
        task = asyncio.create_task(self._drive(move_id), name=f"move {move_id}")
        self._running[move_id] = task
        task.add_done_callback(lambda _: self._running.pop(move_id, None))

    def driving(self, move_id: UUID) -> bool:
        return move_id in self._running

    async def sweep(self) -> list[UUID]:
        """Start driving every unfinished move; returns their ids."""
        async with self._control.connect() as conn:
            unfinished = list(
                (
                    await conn.execute(
                        select(TenantMove.id)
                        .where(TenantMove.state.not_in([s.value for s in FINAL_MOVE_STATES]))
                        .order_by(TenantMove.id)
                    )
                ).scalars()
            )
        for move_id in unfinished:
            self.drive(move_id)
        return unfinished

    async def _drive(self, move_id: UUID) -> None:
        try:
            info = await self.mover.run_move(move_id)
        except MoveBusyError:
            return  # another process drives it
        except MoveError as exc:
            # Recorded on the move (its error); the next sweep tries again.
            log.warning("move %s stopped: %s", move_id, exc)
            return
        except Exception:
            log.exception("move %s failed unexpectedly; the next sweep resumes it", move_id)
            return
        log.info("move %s is %s", move_id, info.state.value)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                await self.sweep()
            except Exception:
                log.warning("the sweep for unfinished moves failed", exc_info=True)
