"""What a checkout request buys (entitlements.billing.service.pack_or_tier), pure: its refusals name the
field and list the allowed values as plain text."""

from __future__ import annotations

import pytest

import pricing
from entitlements.billing.schemas import CheckoutCreate
from entitlements.billing.service import pack_or_tier
from entitlements.errors import ValidationFailed

CATALOG = pricing.load_catalog()


def test_a_pack_or_a_tier() -> None:
    assert pack_or_tier(CATALOG, CheckoutCreate(pack="pack_1000")) == (CATALOG.pack("pack_1000"), None)
    assert pack_or_tier(CATALOG, CheckoutCreate(tier="ULTIMATE")) == (None, CATALOG.tier("ULTIMATE"))


@pytest.mark.parametrize(("body", "field"), [(CheckoutCreate(), "pack"), (CheckoutCreate(pack="p", tier="t"), "tier")])
def test_exactly_one_of_the_two(body: CheckoutCreate, field: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        pack_or_tier(CATALOG, body)
    assert (refused.value.field, refused.value.detail) == (field, f"{field}: give exactly one of pack or tier")


def test_an_unknown_pack_lists_the_packs() -> None:
    with pytest.raises(ValidationFailed) as refused:
        pack_or_tier(CATALOG, CheckoutCreate(pack="pack_7"))
    assert refused.value.detail == "pack: must be one of pack_1000, pack_5000, pack_12000"
    assert refused.value.extra["allowed"] == ["pack_1000", "pack_5000", "pack_12000"]


@pytest.mark.parametrize("tier", [pricing.FREE_TIER, "GOLD"])
def test_a_tier_that_cannot_be_bought_lists_those_that_can(tier: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        pack_or_tier(CATALOG, CheckoutCreate(tier=tier))
    purchasable = [name for name in pricing.TIER_NAMES if name != pricing.FREE_TIER]
    assert refused.value.detail == "tier: must be one of " + ", ".join(purchasable)
    assert refused.value.extra["allowed"] == purchasable
