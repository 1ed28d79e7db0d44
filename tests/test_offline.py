"""Offline, every model the stages load says so within seconds, with the offline options.

The Hugging Face hub, torch.hub and the weight URLs are made unreachable for real: their
address points at a closed port on 127.0.0.1 (connection refused) or at a socket that accepts
connections and never answers (a firewall that drops packets). Each test bounds the time to
the message; before the quick reachability check (utils.core.network) the hub client alone
retried for minutes."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import Stopwatch, run_cli_blocked
from tests.http_server import FaultServer
from utils.core.network import unreachable

OFFLINE_OPTIONS = ("--model", "HF_HUB_OFFLINE=1", "`python example.py` with no flags")


def closed_port() -> int:
    """A local port nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A local port that accepts connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


def hub_env(tmp_path: Path, port: int | None = None) -> dict[str, str]:
    """The hub at a closed local port and an empty Hugging Face cache."""
    return {
        "HF_ENDPOINT": f"http://127.0.0.1:{port or closed_port()}",
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "TRACKVERSE_CACHE": str(tmp_path / "trackverse-cache"),
    }


# ------------------------------------------------------------------------ the probe


def test_probe_says_why_a_host_is_unreachable_within_its_timeout():
    port = closed_port()
    with Stopwatch() as watch:
        assert unreachable(f"http://127.0.0.1:{port}/x") == f"connection to 127.0.0.1:{port} refused"
        with silent_port() as silent:
            why = unreachable(f"http://127.0.0.1:{silent}/x", timeout=1.0)
    assert why == f"no answer from 127.0.0.1:{silent} within 1 s"
    assert watch.waited < 5
    with FaultServer() as server:  # any HTTP answer, even 404, means the host is there
        assert unreachable(server.url("/missing.pth")) is None
    assert unreachable("file:///nowhere") is None


# ------------------------------------------------------------------------------ OWLv2


BUILD_OWLV2 = """
import sys, time
from utils.detect.detectors import make_detector
started = time.monotonic()
try:
    make_detector("owlv2", ["cat", "dog"], device="cpu", cache_dir=sys.argv[2], **({"model_id": sys.argv[1]} if sys.argv[1] else {}))
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
else:
    print("BUILT")
print(f"SECONDS {time.monotonic() - started:.1f}")
"""


def build_owlv2(tmp_path: Path, model_id: str = "", **env: str) -> tuple[str, float]:
    """Build OWLv2 in a fresh interpreter (the hub client reads its settings at import); also
    returns the seconds it spent blocked (:func:`run_cli_blocked`: not the CPU work a loaded machine
    stretches)."""
    proc, blocked = run_cli_blocked("-c", BUILD_OWLV2, model_id, tmp_path / "text-cache",
                                    env={**hub_env(tmp_path), **env}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, blocked


def test_owlv2_from_a_hub_id_fails_within_seconds_when_the_hub_refuses(tmp_path):
    out, seconds = build_owlv2(tmp_path)
    assert seconds < 20, out
    assert "DetectorError" in out and "google/owlv2-base-patch16-ensemble" in out
    assert "is unreachable (connection to 127.0.0.1" in out
    for option in OFFLINE_OPTIONS:
        assert option in out


def test_owlv2_fails_within_seconds_when_the_hub_never_answers(tmp_path):
    with silent_port() as port:
        out, seconds = build_owlv2(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{port}")
    assert seconds < 25, out
    assert "DetectorError" in out and "no answer from 127.0.0.1" in out and "HF_HUB_OFFLINE=1" in out


def test_owlv2_with_hf_hub_offline_and_nothing_cached_says_so_at_once(tmp_path):
    out, seconds = build_owlv2(tmp_path, HF_HUB_OFFLINE="1")
    assert seconds < 20, out
    assert "not in the Hugging Face cache" in out and "HF_HUB_OFFLINE is set" in out and "--model" in out


def _cache_like_the_hub(cache: Path, repo_id: str, folder: Path) -> None:
    """Lay out ``folder``'s files as huggingface_hub caches a download of ``repo_id``."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        if f.is_file():
            (snapshot / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


def test_owlv2_cached_weights_load_without_the_hub(tmp_path):
    from tests.tiny_models import save_tiny_owlv2

    _cache_like_the_hub(tmp_path / "hf-cache", "tiny/owlv2", save_tiny_owlv2(tmp_path / "tiny"))
    out, seconds = build_owlv2(tmp_path, "tiny/owlv2")
    assert "BUILT" in out, out
    assert seconds < 60, out


def test_owlv2_missing_local_folder_is_named(tmp_path):
    out, _ = build_owlv2(tmp_path, str(tmp_path / "no-such-folder"))
    assert "DetectorError" in out and "no-such-folder does not exist" in out


# ------------------------------------------------------------------------ example.py


def test_example_without_reachable_weights_stops_within_seconds_naming_the_options(tmp_path):
    proc, blocked = run_cli_blocked("example.py", "--base_dir", tmp_path / "example", "--detector", "owlv2",
                                    env=hub_env(tmp_path), timeout=300)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert blocked < 20
    assert "STOPPED: cannot fetch OWLv2 weights 'google/owlv2-base-patch16-ensemble'" in proc.stderr
    for option in OFFLINE_OPTIONS:
        assert option in proc.stderr
    assert not (tmp_path / "example").exists()  # nothing built before the message
