"""`python -m generation_client.worker --port 8100 …`: run the bundled worker.

Flags override the WORKER_* environment variables, which override the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from generation_client.worker.app import serve
from generation_client.worker.settings import WorkerSettings

HOST_DEFAULT = "127.0.0.1"
PORT_DEFAULT = 8100


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m generation_client.worker", description=__doc__)
    parser.add_argument("--host", default=HOST_DEFAULT)
    parser.add_argument("--port", type=int, default=PORT_DEFAULT)
    parser.add_argument("--video-dir", type=Path, help="WORKER_VIDEO_DIR")
    parser.add_argument("--image-dir", type=Path, help="IMAGE_DIR")
    parser.add_argument("--failure-rate", type=float, help="WORKER_FAILURE_RATE, 0..1")
    parser.add_argument("--latency-ms", type=int, help="WORKER_LATENCY_MS")
    parser.add_argument("--hang-rate", type=float, help="WORKER_HANG_RATE, 0..1")
    parser.add_argument("--max-concurrent-renders", type=int, help="WORKER_MAX_CONCURRENT_RENDERS")
    parser.add_argument("--seed", type=int, help="WORKER_SEED")
    parser.add_argument("--active-jobs-max", type=int, help="WORKER_ACTIVE_JOBS_MAX")
    arguments = parser.parse_args(argv)
    overrides: dict[str, Any] = {
        name: value for name, value in vars(arguments).items() if name not in ("host", "port") and value is not None
    }
    try:
        settings = dataclasses.replace(WorkerSettings.from_env(), **overrides)
    except ValueError as error:
        parser.error(str(error))
    serve(arguments.host, arguments.port, settings)


if __name__ == "__main__":
    main()
