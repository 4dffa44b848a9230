"""A generation request as one companion of the ledger's group commit (ledger/companions.py).

Everything `create` used to do in a transaction of its own (claim the Idempotency-Key, read the tier, hold
the moments, insert the generation and its job, store the answer) now shares the batch's transaction with
the other requests queued at the same moment: two statements of this module and the ledger's own for
the whole batch, instead of about ten round trips and a commit per request.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import msgspec

import ledger
import pricing
from entitlements import idempotency
from entitlements.errors import IdempotencyKeyReused, TierRequired
from entitlements.generations import queries
from entitlements.generations.schemas import GenerationOut
from entitlements.tiers import video_refusal

OPERATION = "create_generation"
_encoder = msgspec.json.Encoder()


class GenerationRequest(ledger.Companion):
    def __init__(
        self,
        *,
        hold: ledger.Hold,
        generation: GenerationOut,
        caller_key_id: int,
        idempotency_key: str,
        fingerprint: bytes,
        catalog: pricing.Catalog,
    ) -> None:
        self.generation = generation
        self.caller_key_id = caller_key_id
        self.idempotency_key = idempotency_key
        self.fingerprint = fingerprint
        self.catalog = catalog
        super().__init__(hold)

    def reset(self) -> None:
        super().reset()
        # Another request of the same batch with the same caller and key: answered as that one is.
        self.first: GenerationRequest | None = None
        # This request made the key's claim in this batch (so a refusal must drop it again).
        self.claimed = False

    @property
    def claim(self) -> tuple[int, str]:
        return self.caller_key_id, self.idempotency_key

    @classmethod
    async def prepare(cls, connection: ledger.Connection, companions: Sequence[GenerationRequest]) -> None:
        firsts: dict[tuple[int, str], GenerationRequest] = {}
        claiming: list[GenerationRequest] = []
        for request in companions:
            first = firsts.setdefault(request.claim, request)
            if first is request:
                claiming.append(request)
            else:
                request.first = first
                request.settled = True  # answered in finish, from its first
        rows = await connection.fetch(
            queries.CLAIM_AND_GATE,
            [request.caller_key_id for request in claiming],
            [request.idempotency_key for request in claiming],
            [request.fingerprint for request in claiming],
            [request.operation.user_id for request in claiming],
            pricing.FREE_TIER,
        )
        taken: list[GenerationRequest] = []
        for request, row in zip(claiming, rows, strict=True):
            if not row["claimed"]:
                taken.append(request)
                continue
            request.claimed = True
            tier = row["tier"] or pricing.FREE_TIER
            # Debt is checked by the hold itself, under the user's row lock.
            if video_refusal(request.catalog, tier, owed=0) == "tier_required":
                request.settle(
                    error=TierRequired(
                        f"video generation needs a PREMIUM or ULTIMATE tier; {request.operation.user_id} is {tier}"
                    )
                )
        if taken:
            await _replay(connection, taken)

    @classmethod
    async def finish(cls, connection: ledger.Connection, companions: Sequence[GenerationRequest]) -> None:
        created: list[GenerationRequest] = []
        # Claims made in prepare that end without a generation: dropped, as a refusal is not stored and
        # the same key may try again (after a top-up, say).
        released: list[GenerationRequest] = []
        for request in companions:
            if request.first is not None:
                continue
            if not request.settled:
                if isinstance(request.outcome, ledger.LedgerRuleError):
                    request.settle(error=request.outcome)
                    released.append(request)
                else:
                    created.append(request)
            elif request.claimed:
                released.append(request)
        generations = [request.generation for request in created]
        await connection.execute(
            queries.WRITE_BATCH,
            [uuid.UUID(generation.id) for generation in generations],
            [generation.user_id for generation in generations],
            [generation.image_id for generation in generations],
            [generation.prompt for generation in generations],
            [generation.mode for generation in generations],
            [generation.resolution for generation in generations],
            [generation.duration_s for generation in generations],
            [generation.audio for generation in generations],
            [generation.moments for generation in generations],
            [generation.price_version for generation in generations],
            [_hold_id(request) for request in created],
            [generation.created_at for generation in generations],
            [request.caller_key_id for request in created],
            [request.idempotency_key for request in created],
            [_encoder.encode(generation).decode() for generation in generations],
            [request.caller_key_id for request in released],
            [request.idempotency_key for request in released],
        )
        for request in created:
            request.settle(answer=request.generation)

    def result(self) -> GenerationOut:
        if self.first is not None:
            return self._as_first()
        answer: GenerationOut = super().result()
        return answer

    def _as_first(self) -> GenerationOut:
        assert self.first is not None
        if self.first.fingerprint != self.fingerprint:
            raise IdempotencyKeyReused("this Idempotency-Key was already used for a different request")
        answer: GenerationOut = self.first.result()
        return answer


def _hold_id(request: GenerationRequest) -> int:
    outcome = request.outcome
    assert isinstance(outcome, ledger.Result)
    assert outcome.hold_id is not None
    return outcome.hold_id


async def _replay(connection: ledger.Connection, taken: Sequence[GenerationRequest]) -> None:
    """Requests whose key another request claimed first (and committed): its answer, or a refusal."""
    stored = await idempotency.stored_answers(connection, [request.claim for request in taken])
    for request in taken:
        row = stored.get(request.claim)
        if row is None or row["response_body"] is None:
            # Claimed and released meanwhile (its request was refused): this one may try again.
            request.settle(error=ledger.LedgerUnavailable("the request under this key was refused; send it again"))
            continue
        try:
            answer = idempotency.replayed(
                row, operation=OPERATION, fingerprint=request.fingerprint, answer=GenerationOut
            )
        except IdempotencyKeyReused as reused:
            request.settle(error=reused)
        else:
            request.settle(answer=answer)


def new_generation(
    *,
    generation_id: uuid.UUID,
    user_id: str,
    image_id: str,
    prompt: str,
    quote: pricing.Quote,
    price_version: str,
    now: datetime,
) -> GenerationOut:
    """The generation as it is created: queued, its whole price held, nothing charged."""
    return GenerationOut(
        id=str(generation_id),
        user_id=user_id,
        image_id=image_id,
        prompt=prompt,
        mode=quote.mode,
        resolution=quote.resolution,
        duration_s=quote.duration_s,
        audio=quote.audio,
        moments=quote.moments,
        held=quote.moments,
        charged=0,
        price_version=price_version,
        status="queued",
        error=None,
        video_url=None,
        created_at=now,
        updated_at=now,
    )


class Settlement(ledger.Companion):
    """A generation's end as a companion: its hold captured (a video delivered) or voided (a failure), its
    final status and its job's end, in a batch with other settlements, or nothing if another settler (the
    dispatcher, the sweeper, a second process) got there first. The generations are locked in id order,
    before the ledger locks the users (as a support refund does: generation, then user)."""

    def __init__(
        self,
        operation: ledger.Capture | ledger.Void,
        *,
        generation_id: uuid.UUID,
        video_path: str | None = None,
        video_bytes: int | None = None,
        error: str | None = None,
    ) -> None:
        self.generation_id = generation_id
        self.video_path = video_path
        self.video_bytes = video_bytes
        self.failure = error
        super().__init__(operation)

    @classmethod
    async def prepare(cls, connection: ledger.Connection, companions: Sequence[Settlement]) -> None:
        rows = await connection.fetch(
            queries.LOCK_FOR_SETTLEMENT, sorted({settlement.generation_id for settlement in companions})
        )
        status = {row["id"]: row["status"] for row in rows}

        seen: set[uuid.UUID] = set()
        for settlement in companions:
            # Already settled, or settled by an earlier settlement of this batch: nothing to do but the job.
            if status.get(settlement.generation_id) not in UNSETTLED or settlement.generation_id in seen:
                settlement.settle(answer=False)
            seen.add(settlement.generation_id)

    @classmethod
    async def finish(cls, connection: ledger.Connection, companions: Sequence[Settlement]) -> None:
        succeeded: list[Settlement] = []
        failed: list[Settlement] = []
        for settlement in companions:
            if settlement.settled:
                continue
            if isinstance(settlement.outcome, ledger.LedgerRuleError):
                # The hold is no longer open although the generation is unsettled: settle nothing.
                settlement.settle(error=settlement.outcome)
            elif isinstance(settlement.operation, ledger.Capture):
                succeeded.append(settlement)
            else:
                failed.append(settlement)
        await connection.execute(
            queries.SETTLE_BATCH,
            [settlement.generation_id for settlement in succeeded],
            [settlement.video_path for settlement in succeeded],
            [settlement.video_bytes for settlement in succeeded],
            [settlement.generation_id for settlement in failed],
            [settlement.failure for settlement in failed],
            # Every job ends but those of settlements the ledger refused (they settle nothing).
            [settlement.generation_id for settlement in companions if settlement.error is None],
        )
        for settlement in (*succeeded, *failed):
            settlement.settle(answer=True)


UNSETTLED = frozenset({"queued", "running"})
