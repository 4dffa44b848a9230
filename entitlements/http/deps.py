"""What handlers are given by name: the composition root (`app.py`) provides each of these."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import asyncpg
from litestar.di import NamedDependency

import ledger
import pricing
from entitlements.http.params import Window
from entitlements.keys import Caller, KeyCache
from entitlements.settings import Settings

Pool: TypeAlias = NamedDependency[asyncpg.Pool]
LedgerService: TypeAlias = NamedDependency[ledger.Ledger]
Catalog: TypeAlias = NamedDependency[pricing.Catalog]
PriceTable: TypeAlias = NamedDependency[pricing.PriceTable]
AppSettings: TypeAlias = NamedDependency[Settings]
AuditChecks: TypeAlias = NamedDependency[Sequence[ledger.ExtraCheck]]
TheCaller: TypeAlias = NamedDependency[Caller]
KeyCacheOfProcess: TypeAlias = NamedDependency[KeyCache]
IdempotencyKey: TypeAlias = NamedDependency[str]
PageLimit: TypeAlias = NamedDependency[int]
TimeWindow: TypeAlias = NamedDependency[Window]
