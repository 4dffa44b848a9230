"""Renders the bundled worker's videos: a real H.264/AAC MP4, a slow zoom and pan over a still image.

Synchronous and CPU-bound: the app runs it in a worker thread. Memory stays bounded whatever the
duration: one source image (at most `ZOOM_MAX` times the output size) and one frame at a time.
"""

from __future__ import annotations

import colorsys
import hashlib
import math
import os
import secrets
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Final

import av
import numpy as np
import numpy.typing as npt

from generation_client.worker.files import fsync_directory, partial_path

FRAMES_PER_SECOND: Final = 24
AUDIO_SAMPLE_RATE_HZ: Final = 48_000
# One AAC frame: the encoder takes exactly this many samples per frame (the last may be shorter).
AUDIO_FRAME_SAMPLES: Final = 1024
# The camera moves between showing the whole source (zoom 1) and ZOOM_MAX times closer. The source
# is prepared at ZOOM_MAX times the output size, so the closest view is still one source pixel per
# output pixel.
ZOOM_MAX: Final = 1.2
# A decoded source image larger than this (in pixels) is refused rather than allowed to take
# gigabytes of memory: 50 MP is well above any camera photo a user uploads.
IMAGE_PIXELS_MAX: Final = 50_000_000
IMAGE_EXTENSIONS: Final = (".png", ".jpg", ".jpeg")
# libx264 "ultrafast": measured on this 2-core machine at 1080p, 3.4x the frames per second of
# "veryfast" (53 vs 16) for files about 3x larger (~1 MB per 4 s at 1080p), and render time is what
# limits a worker under a benchmark. crf 23 is x264's default quality. No B-frames: plays anywhere.
X264_OPTIONS: Final = {"preset": "ultrafast", "crf": "23"}
AUDIO_BIT_RATE_BPS: Final = 128_000
# Per voice, in full scale: four voices stay below -6 dBFS, a soft background chord.
AUDIO_VOICE_AMPLITUDE: Final = 0.08
AUDIO_FADE_S_MAX: Final = 0.5

RgbImage = npt.NDArray[np.uint8]
Samples = npt.NDArray[np.float32]


class RenderError(Exception):
    """A render that cannot succeed for this job (bad source image); `code` is the job's error."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


class RenderCancelled(Exception):
    """The worker is shutting down; the partial file has been removed."""


@dataclass(frozen=True, kw_only=True)
class RenderSpec:
    width: int
    height: int
    duration_s: int
    audio: bool
    image_id: str
    prompt: str
    # The source image; None renders a pattern derived from `image_id`.
    image_path: Path | None

    def __post_init__(self) -> None:
        assert self.width > 0
        assert self.width % 2 == 0, "yuv420p needs an even width"
        assert self.height > 0
        assert self.height % 2 == 0, "yuv420p needs an even height"
        assert self.duration_s > 0


def find_source_image(image_dir: Path | None, image_id: str) -> Path | None:
    """`image_dir/<image_id>.png|.jpg|.jpeg`, the first that is a file; None if there is none."""
    if image_dir is None:
        return None
    # image_id is validated at the API edge (no separators, no leading dot): it cannot leave image_dir.
    assert "/" not in image_id
    assert not image_id.startswith(".")
    for extension in IMAGE_EXTENSIONS:
        candidate = image_dir / f"{image_id}{extension}"
        if candidate.is_file():
            return candidate
    return None


def render_video(spec: RenderSpec, destination: Path, *, cancel: threading.Event) -> int:
    """Render `spec` into `destination` atomically; returns the file's size in bytes.

    The MP4 is written to a temporary file in the same directory, fsynced, and renamed over
    `destination`, so a reader (or a crash) never sees half a video. Checks `cancel` between frames.
    """
    temporary = partial_path(destination, secrets.token_hex(8))
    try:
        _encode(spec, temporary, cancel)
        with temporary.open("rb") as file:
            os.fsync(file.fileno())
        os.replace(temporary, destination)
        fsync_directory(destination.parent)
        return destination.stat().st_size
    finally:
        temporary.unlink(missing_ok=True)


def _encode(spec: RenderSpec, path: Path, cancel: threading.Event) -> None:
    source = _load_source(spec)
    motion = _Motion.for_spec(spec)
    chord = _Chord.for_prompt(spec.prompt) if spec.audio else None
    frame_count = spec.duration_s * FRAMES_PER_SECOND
    sample_count = spec.duration_s * AUDIO_SAMPLE_RATE_HZ
    # faststart moves the index to the front so that players can start before the download ends.
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        video = container.add_stream("libx264", rate=FRAMES_PER_SECOND, options=dict(X264_OPTIONS))
        video.width = spec.width
        video.height = spec.height
        video.pix_fmt = "yuv420p"
        audio = None
        if chord is not None:
            audio = container.add_stream("aac", rate=AUDIO_SAMPLE_RATE_HZ, layout="stereo")
            audio.bit_rate = AUDIO_BIT_RATE_BPS
        samples_sent = 0
        for index in range(frame_count):
            if cancel.is_set():
                raise RenderCancelled
            frame = _video_frame(source, motion, index, frame_count, spec.width, spec.height)
            # pts counts frames (time base 1/24 s): exactly frame_count frames of 1/24 s each make the
            # stream exactly duration_s long.
            frame.pts = index
            container.mux(video.encode(frame))
            if audio is not None and chord is not None:
                # Keep the audio up with the video so that the muxer interleaves without buffering.
                samples_due = min(sample_count, (index + 1) * AUDIO_SAMPLE_RATE_HZ // FRAMES_PER_SECOND)
                while samples_sent < samples_due:
                    length = min(AUDIO_FRAME_SAMPLES, sample_count - samples_sent)
                    container.mux(audio.encode(chord.frame(samples_sent, length, sample_count)))
                    samples_sent += length
        container.mux(video.encode(None))
        if audio is not None:
            assert samples_sent == sample_count
            container.mux(audio.encode(None))


def _video_frame(
    source: RgbImage, motion: _Motion, index: int, frame_count: int, width: int, height: int
) -> av.VideoFrame:
    progress = index / (frame_count - 1) if frame_count > 1 else 1.0
    left, top, crop_width, crop_height = motion.window(progress, source.shape[1], source.shape[0])
    # A view of the source, wrapped without a copy (from_ndarray would copy 9 MB per 1080p frame);
    # swscale then crops, scales and converts to yuv420p in one pass, in C.
    window = source[top : top + crop_height, left : left + crop_width]
    return av.VideoFrame.from_numpy_buffer(window, format="rgb24").reformat(
        width=width, height=height, format="yuv420p", interpolation="BILINEAR"
    )


@dataclass(frozen=True)
class _Motion:
    """The camera path: zoom in or out between 1 and ZOOM_MAX while the centre drifts."""

    zoom_in: bool
    start_x: float
    start_y: float
    end_x: float
    end_y: float

    @classmethod
    def for_spec(cls, spec: RenderSpec) -> _Motion:
        digest = hashlib.sha256(f"motion\n{spec.image_id}\n{spec.prompt}".encode()).digest()
        fractions = [byte / 255 for byte in digest[1:5]]
        return cls(
            zoom_in=digest[0] % 2 == 0,
            start_x=fractions[0],
            start_y=fractions[1],
            end_x=fractions[2],
            end_y=fractions[3],
        )

    def window(self, progress: float, source_width: int, source_height: int) -> tuple[int, int, int, int]:
        """(left, top, width, height) of the source shown at `progress` (0..1) through the clip."""
        eased = progress * progress * (3.0 - 2.0 * progress)  # smoothstep: no jolt at either end
        zoom = 1.0 + (ZOOM_MAX - 1.0) * (eased if self.zoom_in else 1.0 - eased)
        crop_width = min(source_width, round(source_width / zoom))
        crop_height = min(source_height, round(source_height / zoom))
        centre_x = self.start_x + (self.end_x - self.start_x) * eased
        centre_y = self.start_y + (self.end_y - self.start_y) * eased
        left = round(centre_x * (source_width - crop_width))
        top = round(centre_y * (source_height - crop_height))
        return left, top, crop_width, crop_height


def _source_size(width: int, height: int) -> tuple[int, int]:
    return math.ceil(width * ZOOM_MAX), math.ceil(height * ZOOM_MAX)


def _load_source(spec: RenderSpec) -> RgbImage:
    source_width, source_height = _source_size(spec.width, spec.height)
    if spec.image_path is None:
        return _pattern(spec.image_id, source_width, source_height)
    return _decode_image(spec.image_path, source_width, source_height)


def _decode_image(path: Path, width: int, height: int) -> RgbImage:
    """The first frame of `path`, cropped to the output's aspect ratio (centred) and scaled to fit."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise RenderError("image_unreadable", f"{path.name} has no image")
            frame = next(container.decode(video=0), None)
            if frame is None:
                raise RenderError("image_unreadable", f"{path.name} has no image")
            if frame.width * frame.height > IMAGE_PIXELS_MAX:
                raise RenderError(
                    "image_too_large",
                    f"{path.name} is {frame.width}x{frame.height}, over {IMAGE_PIXELS_MAX} pixels",
                )
            # Crop first (a numpy view, no copy) so that swscale only scales what will be shown.
            pixels: RgbImage = np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)
    except av.FFmpegError as error:
        raise RenderError("image_unreadable", f"{path.name}: {error}") from error
    image_height, image_width = pixels.shape[:2]
    if image_width * height > width * image_height:
        crop_width, crop_height = max(1, round(image_height * width / height)), image_height
    else:
        crop_width, crop_height = image_width, max(1, round(image_width * height / width))
    left = (image_width - crop_width) // 2
    top = (image_height - crop_height) // 2
    cropped = np.ascontiguousarray(pixels[top : top + crop_height, left : left + crop_width])
    scaled = av.VideoFrame.from_ndarray(cropped, format="rgb24").reformat(
        width=width, height=height, format="rgb24", interpolation="BICUBIC"
    )
    result: RgbImage = np.asarray(scaled.to_ndarray(format="rgb24"), dtype=np.uint8)
    return result


# The pattern is smooth, so it is computed at 1/PATTERN_DOWNSCALE of its size and scaled up by
# swscale: 16 times less float arithmetic (0.4 s → 0.03 s at 1080p), no visible difference.
PATTERN_DOWNSCALE: Final = 4


def _pattern(image_id: str, width: int, height: int) -> RgbImage:
    """A smooth, colourful, deterministic picture of `width` x `height`."""
    small = _pattern_pixels(image_id, max(2, width // PATTERN_DOWNSCALE), max(2, height // PATTERN_DOWNSCALE))
    scaled = av.VideoFrame.from_ndarray(small, format="rgb24").reformat(
        width=width, height=height, format="rgb24", interpolation="BICUBIC"
    )
    result: RgbImage = np.asarray(scaled.to_ndarray(format="rgb24"), dtype=np.uint8)
    return result


def _pattern_pixels(image_id: str, width: int, height: int) -> RgbImage:
    """Stripes and rings blending four hues derived from `image_id`."""
    digest = hashlib.sha256(f"pattern\n{image_id}".encode()).digest()
    base_hue = digest[0] / 255
    palette = [
        np.array(colorsys.hsv_to_rgb((base_hue + offset) % 1.0, 0.55 + digest[1 + i] / 600, 0.95), np.float32)
        for i, offset in enumerate((0.0, 0.18, 0.42, 0.66))
    ]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[np.newaxis, :]
    y = np.linspace(0.0, height / width, height, dtype=np.float32)[:, np.newaxis]
    stripe_x, stripe_y = 1.0 + digest[6] / 64, 1.0 + digest[7] / 64
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (stripe_x * x + stripe_y * y) + digest[8] / 40)
    centre_x, centre_y = digest[9] / 255, digest[10] / 255 * height / width
    rings = 0.5 + 0.5 * np.cos(2 * np.pi * (2.0 + digest[11] / 50) * np.hypot(x - centre_x, y - centre_y))
    image = np.zeros((height, width, 3), np.float32)
    for weight, colour in (
        ((1 - stripes) * (1 - rings), palette[0]),
        (stripes * (1 - rings), palette[1]),
        ((1 - stripes) * rings, palette[2]),
        (stripes * rings, palette[3]),
    ):
        image += weight[:, :, np.newaxis] * colour
    result: RgbImage = np.clip(image * 255.0, 0.0, 255.0).astype(np.uint8)
    return result


@dataclass(frozen=True)
class _Chord:
    """A soft sustained chord whose root and colour come from the prompt: same prompt, same sound."""

    frequencies_hz: tuple[float, ...]
    pans: tuple[float, ...]
    tremolo_hz: float

    @classmethod
    def for_prompt(cls, prompt: str) -> _Chord:
        digest = hashlib.sha256(f"chord\n{prompt}".encode()).digest()
        root = 45 + digest[0] % 12  # MIDI A2..G#3
        third = 3 if digest[1] % 2 else 4  # minor or major
        notes = (root, root + third, root + 7, root + 12)
        return cls(
            frequencies_hz=tuple(440.0 * 2 ** ((note - 69) / 12) for note in notes),
            pans=tuple(0.2 + 0.6 * byte / 255 for byte in digest[2:6]),
            tremolo_hz=0.15 + digest[6] / 255 * 0.35,
        )

    def frame(self, start: int, length: int, total: int) -> av.AudioFrame:
        """Samples [start, start + length) of a `total`-sample clip, as one stereo fltp frame."""
        # Time from the absolute sample index: phases continue across frames, no clicks at the seams.
        time_s = (start + np.arange(length, dtype=np.float64)) / AUDIO_SAMPLE_RATE_HZ
        duration_s = total / AUDIO_SAMPLE_RATE_HZ
        fade_s = min(AUDIO_FADE_S_MAX, duration_s / 4)
        envelope = np.minimum(1.0, np.minimum(time_s, duration_s - time_s) / fade_s).clip(0.0, 1.0)
        envelope *= 1.0 + 0.2 * np.sin(2 * np.pi * self.tremolo_hz * time_s)
        left = np.zeros(length, np.float64)
        right = np.zeros(length, np.float64)
        for frequency_hz, pan in zip(self.frequencies_hz, self.pans, strict=True):
            voice = AUDIO_VOICE_AMPLITUDE * np.sin(2 * np.pi * frequency_hz * time_s)
            left += voice * (1.0 - pan)
            right += voice * pan
        samples: Samples = (np.stack([left, right]) * envelope).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="stereo")
        frame.sample_rate = AUDIO_SAMPLE_RATE_HZ
        frame.time_base = Fraction(1, AUDIO_SAMPLE_RATE_HZ)
        frame.pts = start
        return frame
