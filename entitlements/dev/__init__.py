"""`moments dev`: the whole service on one machine, with nothing installed but this package.

An embedded PostgreSQL keeps its data under `.data/pg` and listens on the same port at every start, and
its URL is written to `.data/database-url`, so the other commands (`moments audit`, `moments keys …`) find
it without DATABASE_URL.
"""

from entitlements.dev.service import (
    DATA_DIR,
    DATABASE_URL_FILE,
    DEV_KEY_FILE,
    DatabaseNotFound,
    database_url,
    run_dev,
)

__all__ = ["DATABASE_URL_FILE", "DATA_DIR", "DEV_KEY_FILE", "DatabaseNotFound", "database_url", "run_dev"]
