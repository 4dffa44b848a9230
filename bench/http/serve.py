"""`python -m bench.http.serve TARGET PORT WORKERS THREADS`: one server process of the HTTP benchmark,
started through the same function as `moments serve`."""

from __future__ import annotations

import sys

from entitlements.cli import serve_asgi

if __name__ == "__main__":
    target, port, workers, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    serve_asgi(target, host="127.0.0.1", port=port, workers=workers, runtime_threads=threads)
