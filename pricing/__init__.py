"""Prices as data: the versioned price table, quotes against its grid, and the tier/pack catalog.

Pure: no I/O beyond reading this package's own data files.
"""

from pricing.catalog import FREE_TIER, TIER_NAMES, Catalog, InvalidCatalog, Pack, Tier, TierName, load_catalog
from pricing.price_table import (
    CELL_MOMENTS_MAX,
    Cell,
    InvalidPriceTable,
    ModeGrid,
    PriceTable,
    current_table,
    load_tables,
    parse_table,
)
from pricing.quotes import InvalidQuoteRequest, Quote, quote

__all__ = [
    "CELL_MOMENTS_MAX",
    "FREE_TIER",
    "TIER_NAMES",
    "Catalog",
    "Cell",
    "InvalidCatalog",
    "InvalidPriceTable",
    "InvalidQuoteRequest",
    "ModeGrid",
    "Pack",
    "PriceTable",
    "Quote",
    "Tier",
    "TierName",
    "current_table",
    "load_catalog",
    "load_tables",
    "parse_table",
    "quote",
]
