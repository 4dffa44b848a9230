"""generation_client: the typed async client of the generation worker API, and the bundled worker.

The worker lives in `generation_client.worker` (imported on demand: the client does not need
Litestar, granian or PyAV).
"""

from generation_client.client import (
    JobNotFound,
    WorkerClient,
    WorkerError,
    WorkerRejected,
    WorkerUnavailable,
)
from generation_client.retry import backoff_delay_s
from generation_client.schemas import FRAME_SIZES, JobRequest, JobState, JobStatus, Resolution

__all__ = [
    "FRAME_SIZES",
    "JobNotFound",
    "JobRequest",
    "JobState",
    "JobStatus",
    "Resolution",
    "WorkerClient",
    "WorkerError",
    "WorkerRejected",
    "WorkerUnavailable",
    "backoff_delay_s",
]
