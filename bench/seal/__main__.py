"""`python -m bench.seal`: the seal benchmark alone."""

from __future__ import annotations

import sys

from bench.seal.run import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
