"""`python -m bench.ledger`: the ledger benchmark alone."""

from __future__ import annotations

import sys

from bench.ledger.run import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
