"""Content filters: verdict rules on controlled scores, the real architectures with random or
controlled weights, weight fetching and caching, and the stage end to end with filters on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import Stopwatch, run_cli, run_cli_blocked
from tests.http_server import FaultServer
from utils.core.layout import DatasetLayout
from utils.ingest.filters import (
    CARTOON_CLASS,
    AestheticScorer,
    CartoonClassifier,
    FilterSettings,
    WeightsError,
    WeightSource,
    _fetch,
    apply_filters,
    resolve_weights,
    rethreshold,
    sample_segment_frames,
    verdict,
)
from utils.ingest.scenes import SegmentCandidate, plan_segments
from utils.records.segments import read_segments
from utils.runner.journal import read_journals

ON = FilterSettings(cartoon=True, aesthetics=True, min_aesthetic_score=4.0)


# ---------------------------------------------------------------- verdicts (pure)


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ({"frames": 16, "cartoon_logits": [0.1, 2.0], "aesthetic_score": 5.2}, None),
        ({"frames": 16, "cartoon_logits": [2.0, 0.1], "aesthetic_score": 5.2}, "cartoon"),
        ({"frames": 16, "cartoon_logits": [-3.0, -3.5], "aesthetic_score": 5.2}, "cartoon"),  # wins, though < 0
        ({"frames": 16, "cartoon_logits": [0.5, 0.5], "aesthetic_score": 5.2}, None),  # a tie does not win
        ({"frames": 16, "cartoon_logits": [0.1, 2.0], "aesthetic_score": 3.99}, "low_aesthetics"),
        ({"frames": 16, "cartoon_logits": [0.1, 2.0], "aesthetic_score": 4.0}, None),  # threshold inclusive
        ({"frames": 16, "cartoon_logits": [2.0, 0.1], "aesthetic_score": 1.0}, "cartoon"),  # first rule wins
        ({"frames": 0, "cartoon_logits": None, "aesthetic_score": None}, "no_frames"),
    ],
)
def test_verdict_on_controlled_scores(scores, expected):
    assert CARTOON_CLASS == 0
    assert verdict(scores, ON) == expected


def test_filters_that_are_off_never_drop():
    scores = {"frames": 16, "cartoon_logits": [9.0, 0.0], "aesthetic_score": 0.0}
    assert verdict(scores, FilterSettings(cartoon=False, aesthetics=False)) is None
    assert verdict(scores, FilterSettings(cartoon=False, aesthetics=True)) == "low_aesthetics"
    assert verdict(scores, FilterSettings(cartoon=True, aesthetics=False)) == "cartoon"
    assert verdict(scores, FilterSettings(min_aesthetic_score=-1.0, cartoon=False)) is None


class _FixedCartoon:
    def __init__(self, logits):
        self.logits_value, self.calls = np.asarray(logits, np.float32), []

    def logits(self, frames):
        self.calls.append(len(frames))
        return np.tile(self.logits_value, (len(frames), 1))


class _FixedAesthetic:
    def __init__(self, per_segment):
        self.values, self.calls = list(per_segment), []

    def scores(self, frames):
        self.calls.append(len(frames))
        return np.full(len(frames), self.values[len(self.calls) - 1], np.float32)


def test_apply_filters_scores_every_length_kept_segment_and_keeps_both_scores(synthetic_video):
    candidates = plan_segments(synthetic_video.scene_spans(), 0, synthetic_video.duration, min_len=3.6)
    cartoon, aesthetic = _FixedCartoon([3.0, 1.0]), _FixedAesthetic([5.0, 4.5])
    apply_filters(synthetic_video.path, candidates, ON, cartoon=cartoon, aesthetic=aesthetic)
    # the 3.52 s scene was dropped for its length and never scored
    assert [c.reason for c in candidates] == ["cartoon", "too_short", "cartoon"]
    assert cartoon.calls == aesthetic.calls == [8, 9]  # 2 fps over 4.0 s, then over 4.48 s (start frame incl.)
    first = candidates[0].scores
    assert first["cartoon_logits"] == [3.0, 1.0] and first["aesthetic_score"] == 5.0  # kept for re-thresholding
    assert candidates[1].scores == {}


def test_frames_come_from_the_first_seconds_of_the_segment(synthetic_video):
    frames = sample_segment_frames(synthetic_video.path, 4.0, 7.52, fps=2, seconds=1.0)
    assert len(frames) == 2 and frames[0].shape == (240, 320, 3)


def test_rethreshold_from_sidecar_without_recomputing():
    record = {
        "filters": {"cartoon": True, "aesthetics": True, "min_aesthetic_score": 4.0},
        "segments": [
            {"start": 0.0, "end": 4.0, "reason": None, "scores": {"frames": 8, "cartoon_logits": [0, 1], "aesthetic_score": 4.5}},
            {"start": 4.0, "end": 5.0, "reason": "too_short", "scores": {}},
            {"start": 5.0, "end": 9.0, "reason": "low_aesthetics",
             "scores": {"frames": 8, "cartoon_logits": [0, 1], "aesthetic_score": 3.5}},
            {"start": 9.0, "end": 20.0, "reason": "cartoon",
             "scores": {"frames": 8, "cartoon_logits": [2, 1], "aesthetic_score": 6.0}},
        ],
    }
    assert rethreshold(record) == [(0.0, 4.0)]  # as made
    assert rethreshold(record, min_aesthetic_score=3.0) == [(0.0, 4.0), (5.0, 9.0)]
    assert rethreshold(record, min_aesthetic_score=5.0, cartoon=False) == [(9.0, 20.0)]
    assert rethreshold(record, cartoon=False, aesthetics=False) == [(0.0, 4.0), (5.0, 9.0), (9.0, 20.0)]
    record["filters"]["aesthetics"] = False
    del record["segments"][0]["scores"]["aesthetic_score"]
    with pytest.raises(ValueError, match="no aesthetic_score"):
        rethreshold(record, aesthetics=True)


# ------------------------------------------------------ real architectures, controlled


def _resnet_weights(path: Path, fc_bias: tuple[float, float] | None = None, prefix: str = "") -> Path:
    """A ResNet-18 2-class state dict with random weights; with ``fc_bias``, a zero fc layer
    whose output is exactly that bias (controlled logits through the real network)."""
    from torchvision.models import resnet18

    torch.manual_seed(3)
    model = resnet18(weights=None)
    model.fc = torch.nn.Linear(512, 2)
    if fc_bias is not None:
        with torch.no_grad():
            model.fc.weight.zero_()
            model.fc.bias.copy_(torch.tensor(fc_bias))
    torch.save({prefix + k: v for k, v in model.state_dict().items()}, path)
    return path


def _head_weights(path: Path, bias: float | None = None) -> Path:
    torch.manual_seed(4)
    head = torch.nn.Linear(768, 1)
    if bias is not None:
        with torch.no_grad():
            head.weight.zero_()
            head.bias.fill_(bias)
    torch.save(head.state_dict(), path)
    return path


def test_cartoon_classifier_runs_the_real_resnet18(tmp_path, synthetic_video):
    frames = sample_segment_frames(synthetic_video.path, 0.0, 4.0, fps=1, seconds=3)
    random_model = CartoonClassifier(str(_resnet_weights(tmp_path / "r.pth")), device="cpu", batch_size=2)
    logits = random_model.logits(frames)
    assert logits.shape == (3, 2) and np.isfinite(logits).all()
    # DataParallel-style "module." keys load too; controlled logits pass through unchanged
    controlled = CartoonClassifier(str(_resnet_weights(tmp_path / "c.pth", (1.5, -0.5), "module.")), device="cpu")
    np.testing.assert_allclose(controlled.logits(frames), [[1.5, -0.5]] * 3, atol=1e-6)
    assert controlled.logits([]).shape == (0, 2)
    assert CartoonClassifier("random", device="cpu").logits(frames[:1]).shape == (1, 2)


def test_wrong_or_missing_weights_are_clear_errors(tmp_path):
    _head_weights(tmp_path / "head.pth")
    with pytest.raises(WeightsError, match="do not fit a 2-class ResNet-18"):
        CartoonClassifier(str(tmp_path / "head.pth"), device="cpu")
    with pytest.raises(WeightsError, match="not a file, an http"):
        CartoonClassifier(str(tmp_path / "absent.pth"), device="cpu")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(WeightsError, match="cannot be read"):
        CartoonClassifier(str(tmp_path / "junk.pth"), device="cpu")
    # the aesthetic head is loaded the same way: a head for other embeddings is refused by name
    torch.save(torch.nn.Linear(512, 1).state_dict(), tmp_path / "head512.pth")
    from utils.ingest.filters import _frozen_module

    with pytest.raises(WeightsError, match=r"aesthetic head weights .*head512.pth do not fit Linear\(768, 1\)"):
        _frozen_module(lambda: torch.nn.Linear(768, 1), 1, tmp_path / "head512.pth", "aesthetic head", "Linear(768, 1)")
    head = _frozen_module(lambda: torch.nn.Linear(768, 1), 1, _head_weights(tmp_path / "h.pth", bias=2.0),
                          "aesthetic head", "Linear(768, 1)")
    assert not head.training and float(head.bias.detach()) == 2.0


def test_aesthetic_scorer_runs_clip_vit_l14_with_random_weights(tmp_path, synthetic_video):
    frames = sample_segment_frames(synthetic_video.path, 0.0, 4.0, fps=0.5, seconds=4)  # 2 frames
    scorer = AestheticScorer("random", str(_head_weights(tmp_path / "h.pth", bias=5.25)), device="cpu")
    assert scorer.visual.output_dim == 768
    assert sum(p.numel() for p in scorer.visual.parameters()) > 300_000_000  # ViT-L/14, not a toy
    seen = []
    controlled = scorer.head

    class Recorder(torch.nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return controlled(x)

    scorer.head = Recorder()
    # a zero head with bias 5.25 scores exactly 5.25 whatever the embedding
    np.testing.assert_allclose(scorer.scores(frames), [5.25, 5.25], atol=1e-5)
    [embeddings] = seen  # what the head saw: L2-normalised CLIP embeddings, one per frame
    assert embeddings.shape == (2, 768) and torch.isfinite(embeddings).all()
    np.testing.assert_allclose(embeddings.norm(dim=-1).numpy(), [1.0, 1.0], atol=1e-5)
    assert not torch.allclose(embeddings[0], embeddings[1])  # different frames, different embeddings


# -------------------------------------------------------------------- weight files


def test_known_weights_are_fetched_once_verified_and_cached(tmp_path):
    payload = b"pretend weights" * 100
    blob = hashlib.sha1(b"blob %d\0" % len(payload) + payload).hexdigest()
    with FaultServer() as server:
        url = server.add("/w/model.pth", payload)
        source = WeightSource("model.pth", (server.url("/w/missing.pth"), url),
                              sha256=hashlib.sha256(payload).hexdigest(), git_blob_sha1=blob)
        path = _fetch(source, tmp_path / "cache", "test")
        assert path.read_bytes() == payload and path.parent == tmp_path / "cache"
        assert _fetch(source, tmp_path / "cache", "test") == path
        assert len(server.requests_for("/w/model.pth")) == 1  # cached: fetched once
        bad = WeightSource("other.pth", (url,), sha256="0" * 64)
        with pytest.raises(WeightsError, match="sha256 mismatch"):
            _fetch(bad, tmp_path / "cache", "test")
        assert not (tmp_path / "cache" / "other.pth").exists()
        by_url = resolve_weights(url, "test", tmp_path / "cache")
        assert by_url.read_bytes() == payload
    with pytest.raises(WeightsError, match="cannot fetch test weights"):
        _fetch(WeightSource("x.pth", ("http://127.0.0.1:9/none.pth",)), tmp_path / "cache", "test")
    assert resolve_weights("random", "test") is None


# ------------------------------------------------------------------- the stage


def _serve_and_run(tmp_path, server, video, *args):
    server.add("/v/filtAAAAAAA.mp4", video)
    (tmp_path / "ids.txt").write_text("filtAAAAAAA\n")
    return run_cli("download_videos.py", "--base_dir", tmp_path / "db", "--yid_index_fn", tmp_path / "ids.txt",
                   "--url_template", server.url_template("/v/{yid}.mp4"), "--device", "cpu", *args)


@pytest.mark.slow  # a subprocess builds CLIP ViT-L/14: 30-60 s on 2 busy shared cores
def test_stage_with_both_filters_end_to_end(tmp_path, synthetic_video):
    """Real ResNet-18 and CLIP ViT-L/14 (random weights, controlled heads) inside the stage."""
    cartoon = _resnet_weights(tmp_path / "cartoon.pth", fc_bias=(-1.0, 1.0))  # never a cartoon
    head = _head_weights(tmp_path / "head.pth", bias=4.5)  # aesthetic 4.5 >= 4.0
    with FaultServer() as server:
        proc = _serve_and_run(tmp_path, server, synthetic_video.path,
                              "--cartoon_weights", cartoon, "--aesthetics_clip_weights", "random",
                              "--aesthetics_head_weights", head, "--filter_fps", "0.5", "--filter_seconds", "2")
    assert proc.returncode == 0, proc.stderr
    layout = DatasetLayout(tmp_path / "db")
    assert read_segments(layout.video_segments("filtAAAAAAA")) == [(0.0, 4.0), (4.0, 7.52), (7.52, 12.0)]
    sidecar = json.loads(layout.video_sidecar("filtAAAAAAA", "segm-scores").read_text())
    assert sidecar["filters"]["cartoon"] and sidecar["filters"]["aesthetics"]
    assert sidecar["filters"]["clip_weights"] == "random"
    for segment in sidecar["segments"]:
        assert segment["scores"]["frames"] == 1
        assert segment["scores"]["cartoon_logits"] == [-1.0, 1.0]
        assert segment["scores"]["aesthetic_score"] == pytest.approx(4.5, abs=1e-4)
    # users re-threshold from the sidecar, nothing recomputed
    assert rethreshold(layout.video_sidecar("filtAAAAAAA", "segm-scores"), min_aesthetic_score=5.0) == []


def test_stage_cartoon_filter_drops_everything_and_the_empty_file_still_marks_done(tmp_path, synthetic_video):
    cartoon = _resnet_weights(tmp_path / "cartoon.pth", fc_bias=(2.0, 0.0))  # always a cartoon
    with FaultServer() as server:
        proc = _serve_and_run(tmp_path, server, synthetic_video.path, "--cartoon_weights", cartoon,
                              "--skip_aesthetics_filter")
        assert proc.returncode == 0, proc.stderr
        layout = DatasetLayout(tmp_path / "db")
        segm = layout.video_segments("filtAAAAAAA")
        assert segm.exists() and segm.read_text() == ""
        sidecar = json.loads(layout.video_sidecar("filtAAAAAAA", "segm-scores").read_text())
        assert [s["reason"] for s in sidecar["segments"]] == ["cartoon"] * 3
        assert all(s["scores"]["frames"] > 0 and "aesthetic_score" not in s["scores"] for s in sidecar["segments"])
        again = _serve_and_run(tmp_path, server, synthetic_video.path, "--cartoon_weights", cartoon,
                               "--skip_aesthetics_filter")
        assert again.returncode == 0 and "0 done, 1 skipped" in again.stderr


def test_missing_filter_weights_stop_the_rank_with_a_clear_message(tmp_path, synthetic_video):
    with FaultServer() as server:
        proc = _serve_and_run(tmp_path, server, synthetic_video.path, "--cartoon_weights", tmp_path / "none.pth",
                              "--skip_aesthetics_filter")
    assert proc.returncode == 3, proc.stderr
    assert "cartoon classifier weights" in proc.stderr and "none.pth" in proc.stderr
    assert not server.requests  # nothing downloaded before the models are there
    assert any(r["event"] == "systemic" for r in read_journals(tmp_path / "db" / "logs" / "download_videos"))


def test_candidate_record_shape():
    c = SegmentCandidate(0.0, 600.0, 0.0, 700.0, scores={"frames": 1})
    assert c.as_record() == {"start": 0.0, "end": 600.0, "scene_start": 0.0, "scene_end": 700.0,
                             "reason": None, "scores": {"frames": 1}, "kept": True, "trimmed": True}


# ------------------------------------------------------------------- offline: said within seconds


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_weights_whose_hosts_do_not_answer_fail_within_seconds_naming_the_flags(tmp_path):
    import socket

    with socket.socket() as silent:  # accepts connections, never answers: a firewall dropping packets
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        urls = (f"http://127.0.0.1:{_closed_port()}/w/head.pth", f"http://127.0.0.1:{silent.getsockname()[1]}/w/head.pth")
        watch = Stopwatch()
        with pytest.raises(WeightsError) as info:  # fetch_verified alone waited 60 s on the silent one
            _fetch(WeightSource("head.pth", urls), tmp_path / "cache", "aesthetic head")
        assert watch.waited < 15
    message = str(info.value)
    assert "cannot fetch aesthetic head weights head.pth: no host answers" in message
    assert "refused" in message and "no answer from" in message
    assert "--aesthetics_head_weights FILE" in message and "--skip_aesthetics_filter" in message
    assert str(tmp_path / "cache" / "head.pth") in message


def test_clip_openai_weights_offline_fail_fast_or_come_from_the_hub_cache(tmp_path, monkeypatch):

    from huggingface_hub import constants

    from utils.ingest import filters

    monkeypatch.setattr(filters, "hub_endpoint", lambda: f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(filters, "hub_offline", lambda: False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    watch = Stopwatch()
    with pytest.raises(WeightsError) as info:
        filters.resolve_clip_weights("openai")
    assert watch.waited < 10
    message = str(info.value)
    assert "is unreachable (connection to 127.0.0.1" in message
    assert "--aesthetics_clip_weights FILE" in message and "--skip_aesthetics_filter" in message
    with pytest.raises(WeightsError):  # the scorer itself says the same, before building anything
        AestheticScorer("openai", "random", device="cpu")
    # the checkpoint in the Hugging Face cache (as `hf download` leaves it) is used without the hub
    revision = "0" * 40
    repo = tmp_path / "hf-cache" / f"models--{filters.CLIP_HUB_REPO.replace('/', '--')}"
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "snapshots" / revision / "open_clip_model.safetensors").write_bytes(b"weights")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    assert filters.resolve_clip_weights("openai") == str(repo / "snapshots" / revision / "open_clip_model.safetensors")
    assert filters.resolve_clip_weights("random") is None


def test_default_filters_offline_stop_the_rank_within_seconds(tmp_path):
    """download_videos.py with its default filters on a machine whose weight hosts refuse."""

    (tmp_path / "ids.txt").write_text("filtAAAAAAA\n")
    port = _closed_port()
    proc, blocked = run_cli_blocked("download_videos.py", "--base_dir", tmp_path / "db", "--yid_index_fn",
                                    tmp_path / "ids.txt", "--url_template", f"http://127.0.0.1:{port}/{{yid}}.mp4",
                                    "--cartoon_weights", f"http://127.0.0.1:{port}/cartoon.pth",
                                    env={"TRACKVERSE_CACHE": str(tmp_path / "cache")}, timeout=300)
    assert proc.returncode == 3, proc.stderr
    assert blocked < 20
    assert "STOPPED: cannot fetch cartoon classifier weights" in proc.stderr
    assert "--cartoon_weights FILE" in proc.stderr and "--skip_cartoon_filter" in proc.stderr
