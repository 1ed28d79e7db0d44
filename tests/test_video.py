"""Video I/O: sampling at exact timestamps, probing bad files, writing clips."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import shared_video
from utils.core.video import VideoError, VideoWriter, keyframe_times, probe_video, read_frames, scaled_size
from utils.testing.synthetic import SceneSpec, make_synthetic_video


def assert_on_grid(frames, fps, start, src_fps):
    """Each sample is the source frame nearest its target (within half a source frame)."""
    times = [f.time for f in frames]
    assert times == sorted(set(times))  # strictly increasing, no frame twice
    for f in frames:
        target = start + round((f.time - start) * fps) / fps
        assert abs(f.time - target) <= 0.5 / src_fps + 1e-3, (f.time, target)  # 1 ms: mp4 time bases


@pytest.mark.parametrize("video_fixture", ["synthetic_video", "sparse_keyframe_video"])
@pytest.mark.parametrize(("start", "end"), [(0.0, 2.0), (1.37, 3.1), (8.0, 12.0)])
def test_samples_at_requested_timestamps(video_fixture, start, end, request):
    video = request.getfixturevalue(video_fixture)
    frames = list(read_frames(video.path, fps=16, start=start, end=end))
    assert_on_grid(frames, 16, start, video.fps)
    # 16 targets per second, source at 25 fps: every target gets its own frame
    expected = int(np.ceil((min(end, video.duration) - start) * 16 - 1e-9))
    assert abs(len(frames) - expected) <= 1
    assert all(start - 0.5 / video.fps <= f.time < end for f in frames)
    assert [f.index for f in frames] == list(range(len(frames)))


def test_sampled_frame_is_the_frame_at_its_timestamp(synthetic_video):
    """Content check: the object's ground-truth box at the returned time is where it is drawn."""
    frames = list(read_frames(synthetic_video.path, fps=4, start=0.6, end=3.5))
    all_frames = {round(f.time, 4): f.image for f in read_frames(synthetic_video.path)}
    for frame in frames:
        reference = all_frames[round(frame.time, 4)]
        diff = np.abs(frame.image.astype(int) - reference.astype(int)).mean()
        assert diff < 1.0


def test_seek_into_a_file_with_one_keyframe_decodes_forward(sparse_keyframe_video, synthetic_video):
    assert keyframe_times(sparse_keyframe_video.path) == [0.0]
    a = list(read_frames(sparse_keyframe_video.path, fps=10, start=9.0, end=10.0))
    b = list(read_frames(synthetic_video.path, fps=10, start=9.0, end=10.0))
    assert [f.time for f in a] == [f.time for f in b]
    assert a[0].time == pytest.approx(9.0, abs=0.02)


def test_resize_longer_side(synthetic_video):
    frame = next(read_frames(synthetic_video.path, fps=1, max_side=160))
    assert frame.image.shape == (120, 160, 3) and frame.image.dtype == np.uint8
    assert scaled_size(1280, 720, 480) == (480, 270)
    assert scaled_size(720, 1280, 480) == (270, 480)
    assert scaled_size(320, 240, 480) == (320, 240)  # never upscaled


def test_every_frame_without_fps(synthetic_video):
    frames = list(read_frames(synthetic_video.path, start=1.0, end=2.0))
    assert len(frames) == 25
    assert frames[0].time == pytest.approx(1.0)


def test_rate_above_source_gives_each_source_frame_once(synthetic_video):
    frames = list(read_frames(synthetic_video.path, fps=60, start=0, end=1))
    assert len(frames) == 25


def test_real_video_vtest():
    path = shared_video("vtest.avi")
    info = probe_video(path)
    assert (info.width, info.height) == (768, 576)
    assert info.fps == pytest.approx(10, abs=0.01)
    frames = list(read_frames(path, fps=16, start=40.0, end=43.0, max_side=480))
    assert_on_grid(frames, 16, 40.0, 10)
    assert len(frames) == 30  # 10 fps source: each source frame once
    assert frames[0].image.shape == (360, 480, 3)
    assert frames[0].time == pytest.approx(40.0, abs=0.05)


def test_real_video_box_mp4_few_keyframes():
    path = shared_video("box.mp4")
    info = probe_video(path)
    frames = list(read_frames(path, fps=16, start=7.3, end=8.3))
    assert_on_grid(frames, 16, 7.3, info.fps)
    assert len(frames) == 16


# ------------------------------------------------------------------------- bad input


def test_probe_reports_bad_files_by_name(tmp_path, synthetic_video):
    with pytest.raises(VideoError, match="missing.mp4: no such file"):
        probe_video(tmp_path / "missing.mp4")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 100)
    with pytest.raises(VideoError, match="notes.mp4"):
        probe_video(text)
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(VideoError, match="empty.mp4: empty file"):
        probe_video(empty)
    truncated = tmp_path / "truncated.mp4"
    data = synthetic_video.path.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])  # the moov atom (at the end) is lost
    with pytest.raises(VideoError, match="truncated.mp4"):
        probe_video(truncated)
    with pytest.raises(VideoError, match="truncated.mp4"):
        list(read_frames(truncated, fps=16))


def test_audio_only_file_has_no_video_stream(tmp_path):
    import av

    path = tmp_path / "audio.m4a"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for _ in range(10):
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with pytest.raises(VideoError, match="audio.m4a: has no video stream"):
        probe_video(path)


# ---------------------------------------------------------------------------- writing


def test_writer_keyframe_interval_and_frames(tmp_path):
    path = tmp_path / "clip.mp4"
    rng = np.random.default_rng(0)
    with VideoWriter(path, 64, 48, fps=30, keyframe_interval=0.5) as writer:
        for _ in range(90):
            writer.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    info = probe_video(path)
    assert (info.width, info.height, info.num_frames) == (64, 48, 90)
    assert info.fps == pytest.approx(30)
    assert keyframe_times(path) == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])


def test_writer_at_ntsc_rate(tmp_path):
    path = tmp_path / "ntsc.mp4"
    with VideoWriter(path, 32, 32, fps=29.97, keyframe_interval=0.5) as writer:
        for i in range(60):
            writer.write(np.full((32, 32, 3), i * 4, np.uint8))
    info = probe_video(path)
    assert info.fps == pytest.approx(29.97, abs=0.01)
    gaps = np.diff(keyframe_times(path))
    assert np.allclose(gaps, 15 / 29.97, atol=0.01)


def test_writer_leaves_nothing_on_error(tmp_path):
    path = tmp_path / "clip.mp4"
    with pytest.raises(RuntimeError), VideoWriter(path, 32, 32, fps=10) as writer:
        writer.write(np.zeros((32, 32, 3), np.uint8))
        raise RuntimeError("decoder died")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="even"):
        VideoWriter(path, 33, 32, fps=10)
    with pytest.raises(ValueError, match="no frames"), VideoWriter(path, 32, 32, fps=10):
        pass
    assert list(tmp_path.iterdir()) == []


def test_synthetic_ground_truth_matches_pixels(tmp_path):
    video = make_synthetic_video(tmp_path / "v.mp4", scenes=[SceneSpec(1.0)], fps=10)
    assert video.boxes == [] and video.num_frames == 10 and video.cut_times == []
    v = make_synthetic_video(tmp_path / "w.mp4")
    assert v.cut_times == [4.0, 7.52]
    # the short-lived cup (1 s) and the others: identities are unique across scenes
    spans = {i: (b[0].time, b[-1].time, b[0].class_name) for i, b in v.identities().items()}
    assert len(spans) == 5
    assert spans[3][2] == "cup" and spans[3][1] - spans[3][0] < 1.1


def test_yuv_planes_of_full_range_frames_are_brought_to_the_limited_range():
    """AV1 / VP9 decoders mark full range on yuv420p frames (H.264's use yuvj420p): either way
    the planes come out in the limited range that H.264 clips are written in."""
    import av

    from utils.core.video import FULL_RANGE, Yuv420Image

    for fmt, full in (("yuv420p", True), ("yuvj420p", False), ("yuv420p", False)):
        frame = av.VideoFrame(64, 32, fmt)
        for plane, value in zip(frame.planes, (255, 128, 128), strict=True):
            np.frombuffer(plane, np.uint8)[:] = value
        np.frombuffer(frame.planes[0], np.uint8).reshape(32, -1)[:, :32] = 0
        if full:
            frame.color_range = FULL_RANGE
        image = Yuv420Image.from_frame(frame)
        if fmt == "yuv420p" and not full:  # already limited range: the frame's own memory, untouched
            assert image.y.max() == 255 and image.y.min() == 0 and not image.y.flags.owndata
        else:
            assert image.y[:, 40:].max() == 235 and image.y[:, :24].min() == 16, fmt
        assert image.u.shape == (16, 32) and abs(int(image.u.mean()) - 128) <= 1


def test_writer_colour_tags_hold_for_rgb_and_yuv_pictures(tmp_path):
    """A stream tagged BT.709 reads back as the colours written, whether given RGB or YUV."""
    from utils.core.video import ColorTags, Yuv420Image

    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[:, :32] = (220, 30, 40)
    rgb[:, 32:] = (30, 200, 90)
    for kind in ("rgb", "yuv"):
        path = tmp_path / f"{kind}.mp4"
        with VideoWriter(path, 64, 64, 25, crf=5, color=ColorTags(1, 1, 1)) as writer:
            for _ in range(5):
                if kind == "rgb":
                    writer.write(rgb)
                else:
                    import av

                    bt709 = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p", dst_colorspace=1)
                    writer.write_yuv(Yuv420Image.from_frame(bt709))
        back = next(read_frames(path)).image.astype(int)
        assert np.abs(back[8:-8, 4:24] - rgb[8:-8, 4:24]).max() <= 4, kind
        assert np.abs(back[8:-8, 40:60] - rgb[8:-8, 40:60]).max() <= 4, kind
