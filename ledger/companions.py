"""Another domain's writes that must commit with one ledger operation, done for a whole batch at once.

A generation request is an idempotency claim, a gate read, a hold, a generation row, a job row and a
stored answer, all or nothing. As a companion it rides the group commit: the batch's one transaction
runs every companion class's `prepare` (one statement for the whole batch: claims and gate reads), the
ledger operations of the companions still going, then `finish` (one statement: the rows and answers,
and undoing what `prepare` wrote for the refused).
Each caller is answered only after the commit that holds its work, and one refusal never fails its
neighbours: a companion refused in `prepare` runs no operation, and one whose operation the ledger
refuses writes nothing in `finish` (and undoes what its `prepare` wrote, such as its claim).

A companion may run again (the batch retried, or run alone after its batch failed), so `prepare` must
start from `reset()`'s state every time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from ledger.engine import Connection, Outcome
from ledger.operations import AnyOperation


class Companion:
    # Companions of one class are prepared and finished together; the class is the unit of batching.
    batch_key: ClassVar[str] = "companion"

    def __init__(self, operation: AnyOperation) -> None:
        self.operation = operation
        self.reset()

    def reset(self) -> None:
        # What the caller gets: an answer or an error; `settled` once either is decided.
        self.answer: Any = None
        self.error: BaseException | None = None
        self.settled = False
        self.outcome: Outcome | None = None

    def settle(self, *, answer: Any = None, error: BaseException | None = None) -> None:
        self.answer, self.error, self.settled = answer, error, True

    @classmethod
    async def prepare(cls, connection: Connection, companions: Sequence[Any]) -> None:
        """Before the ledger: settle every companion that must not run its operation."""

    @classmethod
    async def finish(cls, connection: Connection, companions: Sequence[Any]) -> None:
        """After the ledger, with every companion of the batch (settled ones too, to undo what their
        `prepare` wrote): each unsettled one has its `outcome`; write the rest and settle them."""

    def result(self) -> Any:
        """The caller's answer, after the commit; raises the companion's error."""
        if self.error is not None:
            raise self.error
        return self.answer
