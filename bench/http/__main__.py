"""`python -m bench.http`: the HTTP benchmark alone."""

from __future__ import annotations

import sys

from bench.http.run import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
