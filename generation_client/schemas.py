"""The wire types of the generation worker API, shared by the client and the bundled worker.

One definition for both sides keeps them from drifting apart: the worker decodes `JobRequest` at its
edge (bounds and unknown fields checked by msgspec), the client encodes the same type.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

# Job and image ids become URL path segments and file names on the worker (`<id>.mp4`,
# `IMAGE_DIR/<image_id>.png`): unreserved URL characters only, never a leading dot (no `..`, no hidden
# files), so no id can escape its directory or need percent-encoding. UUIDs, ULIDs and `gen_…` fit.
# `(?!\n)`: Python's `$` also matches before a final newline, which would let "abc\n" through.
ID_PATTERN: Final = r"^[A-Za-z0-9_][A-Za-z0-9._~-]*$(?!\n)"
ID_LENGTH_MAX: Final = 200
PROMPT_LENGTH_MAX: Final = 5_000
DURATION_S_MIN: Final = 1
DURATION_S_MAX: Final = 60

JobId = Annotated[str, msgspec.Meta(min_length=1, max_length=ID_LENGTH_MAX, pattern=ID_PATTERN)]
Resolution = Literal["480p", "720p", "1080p"]
JobState = Literal["queued", "running", "succeeded", "failed"]

# Output frame size per resolution, (width, height). 16:9 with both sides even, as yuv420p needs
# (854 rather than the exact 853.3 for 480p).
FRAME_SIZES: Final[dict[Resolution, tuple[int, int]]] = {
    "480p": (854, 480),
    "720p": (1280, 720),
    "1080p": (1920, 1080),
}


class JobRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A render request. `id` is the idempotency key: the same id always names the same video."""

    id: JobId
    image_id: JobId
    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=PROMPT_LENGTH_MAX)]
    resolution: Resolution
    duration_s: Annotated[int, msgspec.Meta(ge=DURATION_S_MIN, le=DURATION_S_MAX)]
    audio: bool


class JobStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A job as the worker reports it.

    Unknown fields are tolerated (unlike in requests) so that a newer worker may add fields without
    breaking older clients.
    """

    id: str
    status: JobState
    error: str | None
    width: int
    height: int
    duration_s: int
    audio: bool
    bytes: int | None
