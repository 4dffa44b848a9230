"""The catalog: subscription tiers and moment packs, with their Stripe price ids, as data."""

import functools
import tomllib
from pathlib import Path
from typing import Annotated, Literal, get_args

import msgspec

CATALOG_PATH = Path(__file__).parent / "catalog.toml"
# The tiers there are: the one definition every request, response and table column follows.
TierName = Literal["FREE", "PREMIUM", "ULTIMATE"]
TIER_NAMES: tuple[TierName, ...] = get_args(TierName)
# Users without a subscription are on this tier; it is granted, never bought.
FREE_TIER: TierName = "FREE"
# No allowance or pack is this large: a bigger number is a typo (an extra zero or two).
CATALOG_MOMENTS_MAX = 10_000_000

NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1)]
# ISO 4217, lower case as Stripe writes it.
CurrencyCode = Annotated[str, msgspec.Meta(pattern="^[a-z]{3}$(?!\n)")]


class InvalidCatalog(Exception):
    """The catalog file is missing, malformed or inconsistent."""


class Tier(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: TierName
    monthly_allowance_moments: Annotated[int, msgspec.Meta(ge=0, le=CATALOG_MOMENTS_MAX)]
    video_allowed: bool
    # None for a tier that cannot be bought (FREE); then price_cents is 0.
    stripe_price_id: NonEmptyStr | None = None
    price_cents: Annotated[int, msgspec.Meta(ge=0)]
    currency: CurrencyCode


class Pack(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: NonEmptyStr
    moments: Annotated[int, msgspec.Meta(ge=1, le=CATALOG_MOMENTS_MAX)]
    stripe_price_id: NonEmptyStr
    price_cents: Annotated[int, msgspec.Meta(ge=1)]
    currency: CurrencyCode


# dict=True gives the frozen struct a __dict__ for its cached lookup indices (never encoded).
class Catalog(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, dict=True):
    tiers: tuple[Tier, ...]
    packs: tuple[Pack, ...]

    @functools.cached_property
    def _tiers_by_name(self) -> dict[str, Tier]:
        return {tier.name: tier for tier in self.tiers}

    @functools.cached_property
    def _packs_by_id(self) -> dict[str, Pack]:
        return {pack.id: pack for pack in self.packs}

    @functools.cached_property
    def _tiers_by_price_id(self) -> dict[str, Tier]:
        return {tier.stripe_price_id: tier for tier in self.tiers if tier.stripe_price_id is not None}

    @functools.cached_property
    def _packs_by_price_id(self) -> dict[str, Pack]:
        return {pack.stripe_price_id: pack for pack in self.packs}

    def tier(self, name: str) -> Tier | None:
        return self._tiers_by_name.get(name)

    def pack(self, id: str) -> Pack | None:
        return self._packs_by_id.get(id)

    def tier_by_price_id(self, price_id: str) -> Tier | None:
        return self._tiers_by_price_id.get(price_id)

    def pack_by_price_id(self, price_id: str) -> Pack | None:
        return self._packs_by_price_id.get(price_id)


def load_catalog(path: Path | None = None) -> Catalog:
    """Load and validate the catalog (default: `pricing/catalog.toml`)."""
    path = CATALOG_PATH if path is None else path
    try:
        with path.open("rb") as file:
            catalog = msgspec.convert(tomllib.load(file), Catalog)
    except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError) as error:
        raise InvalidCatalog(f"{path.name}: {error}") from error

    def refuse(problem: str) -> InvalidCatalog:
        return InvalidCatalog(f"{path.name}: {problem}")

    # A Stripe webhook names only a price id: it must lead to exactly one tier or pack.
    price_ids = [tier.stripe_price_id for tier in catalog.tiers if tier.stripe_price_id is not None]
    price_ids += [pack.stripe_price_id for pack in catalog.packs]
    for what, values in (
        ("tier name", [str(tier.name) for tier in catalog.tiers]),
        ("pack id", [pack.id for pack in catalog.packs]),
        ("stripe_price_id", price_ids),
    ):
        duplicates = sorted({value for value in values if values.count(value) > 1})
        if duplicates:
            raise refuse(f"{what} {duplicates[0]!r} appears more than once")

    for tier in catalog.tiers:
        if (tier.stripe_price_id is None) != (tier.price_cents == 0):
            raise refuse(f"tier {tier.name!r}: a tier has a stripe_price_id exactly when price_cents > 0")
    free = catalog.tier(FREE_TIER)
    if free is None:
        raise refuse(f"there is no {FREE_TIER!r} tier")
    if free.video_allowed:
        raise refuse(f"tier {FREE_TIER!r} must not allow video")
    if free.stripe_price_id is not None:
        raise refuse(f"tier {FREE_TIER!r} cannot be bought: it must have no stripe_price_id")
    return catalog
