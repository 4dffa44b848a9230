"""A user's tier (admin override) and entitlements."""

from __future__ import annotations

from litestar import Controller, get, put
from litestar.params import JSONBody

from entitlements.http import Catalog, Pool, PriceTable, UserIdPath
from entitlements.tiers import service
from entitlements.tiers.schemas import EntitlementsOut, SubscriptionOut, SubscriptionSet


class TiersController(Controller):
    tags = ["tiers"]

    @put(
        "/v1/users/{user_id:str}/subscription",
        operation_id="setSubscription",
        summary="Set a user's tier by hand (Stripe normally sets it)",
        opt={"roles": ("admin",)},
    )
    async def set_subscription(
        self, pool: Pool, user_id: UserIdPath, data: JSONBody[SubscriptionSet]
    ) -> SubscriptionOut:
        return await service.set_manual_tier(pool, user_id, data.tier)

    @get(
        "/v1/users/{user_id:str}/entitlements",
        operation_id="getEntitlements",
        summary="A user's tier, balance, and whether they may generate a video now",
        opt={"roles": ("service", "support")},
    )
    async def get_entitlements(
        self,
        read_pool: Pool,
        catalog: Catalog,
        price_table: PriceTable,
        user_id: UserIdPath,
    ) -> EntitlementsOut:
        # The replica when fresh (entitlements/reads.py): creating a generation checks again on the primary.
        return await service.entitlements(read_pool, catalog, price_table, user_id)
