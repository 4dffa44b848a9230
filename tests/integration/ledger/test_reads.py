"""The ledger's small reads for other packages: the reference of the transaction under a key."""

from __future__ import annotations

import asyncpg
import msgspec

import ledger as L


async def test_reference_of_names_who_wrote_a_key_inside_or_outside_a_transaction(pool: asyncpg.Pool) -> None:
    async with L.Ledger(pool) as led:
        credit = L.Credit(
            key="k1", user_id="u1", actor="test", reference="evt_1", amount=5, kind="purchase", category="paid"
        )
        await led.submit(credit)
        await led.submit(L.Credit(key="k2", user_id="u1", actor="test", amount=5, kind="purchase", category="paid"))
        assert await led.reference_of("k1") == "evt_1"
        assert await led.reference_of("k2") is None  # written without a reference
        assert await led.reference_of("k3") is None  # never written
        async with pool.acquire() as connection, connection.transaction():
            # The same key for another request is refused; the read says who used it first.
            other = msgspec.structs.replace(credit, reference="evt_2")
            (refused,) = await led.execute_in(connection, [other])
            assert isinstance(refused, L.IdempotencyConflict)
            assert await led.reference_of("k1", connection=connection) == "evt_1"
