"""`python -m bench.webhooks`: the outgoing-webhook benchmark alone."""

from __future__ import annotations

import sys

from bench.webhooks.run import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
