"""load_catalog(): the published tiers and packs, their lookups, and the refusals."""

from pathlib import Path

import pytest

from pricing import FREE_TIER, Catalog, InvalidCatalog, Pack, Tier, load_catalog
from pricing.catalog import CATALOG_PATH

FREE = """[[tiers]]
name = "FREE"
monthly_allowance_moments = 0
video_allowed = false
price_cents = 0
currency = "usd"
"""
PREMIUM = """[[tiers]]
name = "PREMIUM"
monthly_allowance_moments = 3000
video_allowed = true
stripe_price_id = "price_premium_monthly"
price_cents = 1999
currency = "usd"
"""
PACK = """[[packs]]
id = "pack_1000"
moments = 1000
stripe_price_id = "price_pack_1000"
price_cents = 999
currency = "usd"
"""
VALID = FREE + PREMIUM + PACK


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def test_published_tiers(catalog: Catalog) -> None:
    assert catalog.tiers == (
        Tier(
            name="FREE",
            monthly_allowance_moments=0,
            video_allowed=False,
            stripe_price_id=None,
            price_cents=0,
            currency="usd",
        ),
        Tier(
            name="PREMIUM",
            monthly_allowance_moments=3000,
            video_allowed=True,
            stripe_price_id="price_premium_monthly",
            price_cents=1999,
            currency="usd",
        ),
        Tier(
            name="ULTIMATE",
            monthly_allowance_moments=10000,
            video_allowed=True,
            stripe_price_id="price_ultimate_monthly",
            price_cents=4999,
            currency="usd",
        ),
    )


def test_published_packs(catalog: Catalog) -> None:
    assert catalog.packs == (
        Pack(id="pack_1000", moments=1000, stripe_price_id="price_pack_1000", price_cents=999, currency="usd"),
        Pack(id="pack_5000", moments=5000, stripe_price_id="price_pack_5000", price_cents=3999, currency="usd"),
        Pack(
            id="pack_12000",
            moments=12000,
            stripe_price_id="price_pack_12000",
            price_cents=7999,
            currency="usd",
        ),
    )


def test_lookups(catalog: Catalog) -> None:
    premium = catalog.tier("PREMIUM")
    assert premium is not None
    assert premium.monthly_allowance_moments == 3000
    assert catalog.tier(FREE_TIER) == catalog.tiers[0]
    assert catalog.tier_by_price_id("price_ultimate_monthly") == catalog.tier("ULTIMATE")
    pack = catalog.pack("pack_5000")
    assert pack is not None
    assert pack.moments == 5000
    assert catalog.pack_by_price_id("price_pack_12000") == catalog.pack("pack_12000")


def test_lookups_of_unknown_keys_return_none(catalog: Catalog) -> None:
    assert catalog.tier("premium") is None
    assert catalog.pack("pack_1") is None
    # A pack's price id is not a tier's, and the other way round.
    assert catalog.tier_by_price_id("price_pack_1000") is None
    assert catalog.pack_by_price_id("price_premium_monthly") is None
    assert catalog.tier_by_price_id("") is None


def refusal(tmp_path: Path, text: str) -> str:
    path = tmp_path / "catalog.toml"
    path.write_text(text)
    with pytest.raises(InvalidCatalog) as caught:
        load_catalog(path)
    return str(caught.value)


def edited(old: str, new: str, text: str = VALID) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def test_the_valid_text_loads(tmp_path: Path) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(VALID)
    catalog = load_catalog(path)
    assert [tier.name for tier in catalog.tiers] == ["FREE", "PREMIUM"]
    assert [pack.id for pack in catalog.packs] == ["pack_1000"]


def test_the_published_file_starts_with_the_valid_tiers() -> None:
    assert FREE + "\n" + PREMIUM in CATALOG_PATH.read_text()


def test_refuses_a_catalog_without_free(tmp_path: Path) -> None:
    assert refusal(tmp_path, PREMIUM + PACK) == "catalog.toml: there is no 'FREE' tier"


def test_refuses_free_with_video(tmp_path: Path) -> None:
    message = refusal(tmp_path, edited("video_allowed = false", "video_allowed = true"))
    assert message == "catalog.toml: tier 'FREE' must not allow video"


def test_refuses_free_with_a_price(tmp_path: Path) -> None:
    message = refusal(tmp_path, edited("price_cents = 0\n", 'price_cents = 500\nstripe_price_id = "price_free"\n'))
    assert message == "catalog.toml: tier 'FREE' cannot be bought: it must have no stripe_price_id"


def test_refuses_duplicate_tier_names(tmp_path: Path) -> None:
    assert "tier name 'FREE' appears more than once" in refusal(tmp_path, VALID + FREE)


def test_refuses_duplicate_pack_ids(tmp_path: Path) -> None:
    again = edited('stripe_price_id = "price_pack_1000"', 'stripe_price_id = "price_pack_other"', PACK)
    assert "pack id 'pack_1000' appears more than once" in refusal(tmp_path, VALID + again)


def test_refuses_a_stripe_price_id_shared_by_a_tier_and_a_pack(tmp_path: Path) -> None:
    message = refusal(tmp_path, edited('"price_pack_1000"', '"price_premium_monthly"'))
    assert "stripe_price_id 'price_premium_monthly' appears more than once" in message


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("moments = 1000", "moments = 0"),
        ("moments = 1000", "moments = -1000"),
        ("moments = 1000", "moments = 1000.0"),
        ("moments = 1000", "moments = true"),
        ("moments = 1000", "moments = 100000000000"),
        ("price_cents = 999", "price_cents = 0"),
        ('stripe_price_id = "price_pack_1000"\n', ""),
        ('stripe_price_id = "price_pack_1000"', 'stripe_price_id = ""'),
        ('currency = "usd"\n', 'currency = "USD"\n'),
    ],
)
def test_refuses_a_bad_pack(tmp_path: Path, old: str, new: str) -> None:
    message = refusal(tmp_path, FREE + PREMIUM + edited(old, new, PACK))
    assert message.startswith("catalog.toml: ")
    assert "$.packs[0]" in message


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("monthly_allowance_moments = 3000", "monthly_allowance_moments = -1"),
        ("monthly_allowance_moments = 3000", "monthly_allowance_moments = 3000.5"),
        ("video_allowed = true", 'video_allowed = "yes"'),
        ("price_cents = 1999", "price_cents = -1"),
        ('currency = "usd"', 'currency = "dollars"'),
        ('name = "PREMIUM"', 'name = ""'),
        ('name = "PREMIUM"', 'nam = "PREMIUM"'),
    ],
)
def test_refuses_a_bad_tier(tmp_path: Path, old: str, new: str) -> None:
    message = refusal(tmp_path, FREE + edited(old, new, PREMIUM) + PACK)
    assert message.startswith("catalog.toml: ")
    assert "$.tiers[1]" in message


def test_refuses_a_priced_tier_without_a_stripe_price_id(tmp_path: Path) -> None:
    message = refusal(tmp_path, edited('stripe_price_id = "price_premium_monthly"\n', ""))
    assert "tier 'PREMIUM': a tier has a stripe_price_id exactly when price_cents > 0" in message


def test_refuses_a_stripe_price_id_on_a_tier_without_a_price(tmp_path: Path) -> None:
    message = refusal(tmp_path, edited("price_cents = 1999", "price_cents = 0"))
    assert "tier 'PREMIUM': a tier has a stripe_price_id exactly when price_cents > 0" in message


def test_refuses_unknown_top_level_keys_and_a_missing_file(tmp_path: Path) -> None:
    assert "unknown field `bundles`" in refusal(tmp_path, VALID + "bundles = []\n")
    with pytest.raises(InvalidCatalog, match=r"missing\.toml"):
        load_catalog(tmp_path / "missing.toml")
