"""The renderer in process: every resolution's frame size, determinism, cancellation.

The HTTP path renders 480p (tests/integration/generation_client/test_worker.py); these cover the larger
sizes in 1 s clips.
"""

from __future__ import annotations

import threading
from pathlib import Path

import av
import pytest

from generation_client.schemas import FRAME_SIZES, Resolution
from generation_client.worker.render import RenderCancelled, RenderSpec, render_video


@pytest.mark.parametrize("resolution", ["720p", "1080p"])
def test_every_resolution_renders_at_its_frame_size(tmp_path: Path, resolution: Resolution) -> None:
    width, height = FRAME_SIZES[resolution]
    spec = RenderSpec(width=width, height=height, duration_s=1, audio=True, image_id="img", prompt="p", image_path=None)
    size_bytes = render_video(spec, tmp_path / "out.mp4", cancel=threading.Event())
    assert size_bytes == (tmp_path / "out.mp4").stat().st_size
    with av.open(str(tmp_path / "out.mp4")) as container:
        assert container.duration is not None
        assert container.duration / av.time_base == pytest.approx(1.0, abs=0.1)
        video = container.streams.video[0]
        assert (video.codec_context.width, video.codec_context.height) == (width, height)
        assert video.frames == 24
        assert [stream.codec_context.name for stream in container.streams.audio] == ["aac"]
    assert [path.name for path in tmp_path.iterdir()] == ["out.mp4"]


def test_cancelled_render_leaves_nothing_behind(tmp_path: Path) -> None:
    spec = RenderSpec(width=854, height=480, duration_s=4, audio=True, image_id="img", prompt="p", image_path=None)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(RenderCancelled):
        render_video(spec, tmp_path / "out.mp4", cancel=cancel)
    assert list(tmp_path.iterdir()) == []


def test_same_request_renders_the_same_pattern(tmp_path: Path) -> None:
    spec = RenderSpec(width=854, height=480, duration_s=1, audio=False, image_id="img", prompt="p", image_path=None)
    first = render_video(spec, tmp_path / "first.mp4", cancel=threading.Event())
    second = render_video(spec, tmp_path / "second.mp4", cancel=threading.Event())
    assert first == second
    assert (tmp_path / "first.mp4").read_bytes() == (tmp_path / "second.mp4").read_bytes()
