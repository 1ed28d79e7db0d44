"""Polite, crash-safe video downloads with yt-dlp's Python API (step 1).

Failures are classified (:func:`classify_failure`): permanent ones (private, removed, 404, no
mp4 format) are not worth retrying; transient ones (429, 5xx, timeouts, resets, "not a bot")
are retried with backoff and jitter, and rate-limit answers in a row pause the rank
(:class:`RateLimitGuard`). A host that refuses the connection or whose name does not resolve
is not waited on (the item fails, transient), and the same host doing so for a few items in a
row stops the rank (:class:`DownloadSession`). A download counts only once the final mp4 is
complete and decodes: yt-dlp writes to a temporary name beside the target, the result is
verified, then renamed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.core.config import option
from utils.core.errors import ItemError, SystemicError, UsageError
from utils.core.io import commit_temp, remove_temps_of, temp_path_for
from utils.core.network import host_of
from utils.core.video import VideoError, probe_video, read_frames
from utils.ingest.failures import NETWORK_CATEGORIES, DownloadFailed, Failure, classify_failure, clean_message
from utils.ingest.pacing import Backoff, Pacer, RateLimitGuard

log = logging.getLogger(__name__)


DEFAULT_URL_TEMPLATE = "https://www.youtube.com/watch?v={yid}"
# 720p, 480p, 360p, 1080p video-only H.264 mp4 (the original TrackVerse's choice), then
# fallbacks for sites without YouTube's format ids. ``?`` lets formats of unknown height pass.
DEFAULT_FORMAT = (
    "136/135/134/137"
    "/bv*[ext=mp4][vcodec^=avc1][height<=?1080]"
    "/bv*[ext=mp4][height<=?1080]"
    "/bv*[ext=mp4]"
)



# ----------------------------------------------------------------------- verification


class WrongContainerError(VideoError):
    """A decodable video in another container than the one asked for."""


def verify_video(path: str | os.PathLike, container: str | None = "mp4") -> float:
    """Check that a downloaded file is a whole, decodable video: it opens (as ``container``,
    when given), its first frame decodes, and so does a frame in its last second. Returns its
    duration (seconds); raises VideoError otherwise."""
    info = probe_video(path, decode_check=True)
    if container is not None:
        import av

        with av.open(str(path)) as opened:
            names = opened.format.name.split(",")
        if container not in names:
            raise WrongContainerError(f"{path}: is {names[0]}, not {container}")
    if info.duration <= 0:
        raise VideoError(f"{path}: zero duration")
    tail_start = max(0.0, info.duration - 1.0)
    if next(read_frames(path, start=tail_start, size=(16, 16)), None) is None:
        raise VideoError(f"{path}: no frame decodes in its last second (truncated?)")
    return info.duration


# --------------------------------------------------------------------------- download


@dataclass
class DownloadResult:
    path: Path
    bytes: int
    duration: float
    format_id: str
    attempts: int
    seconds: float


class _YtdlpLogger:
    """Routes yt-dlp's output to logging; keeps the last error for the journal."""

    def __init__(self, yid: str):
        self.yid = yid
        self.last_error: str | None = None

    def debug(self, msg: str) -> None:
        log.debug("[yt-dlp %s] %s", self.yid, msg)

    def info(self, msg: str) -> None:
        log.debug("[yt-dlp %s] %s", self.yid, msg)

    def warning(self, msg: str) -> None:
        log.info("[yt-dlp %s] %s", self.yid, msg)

    def error(self, msg: str) -> None:
        self.last_error = clean_message(msg)
        log.debug("[yt-dlp %s] %s", self.yid, msg)


class VideoDownloader:
    """Downloads one video per call into its final path, politely and atomically.

    ``retries`` is the number of extra attempts for transient failures within one call;
    inside each attempt yt-dlp also resumes a broken transfer (up to twice, with the same
    backoff) before giving up.
    """

    def __init__(
        self,
        url_template: str = DEFAULT_URL_TEMPLATE,
        format: str = DEFAULT_FORMAT,  # noqa: A002 (yt-dlp's name)
        cookiefile: str | os.PathLike | None = None,
        retries: int = 5,
        backoff: Backoff | None = None,
        socket_timeout: float = 30.0,
        pacer: Pacer | None = None,
        guard: RateLimitGuard | None = None,
        sleep: Callable[[float], None] = time.sleep,
        extra_options: dict[str, Any] | None = None,
    ):
        if "{yid}" not in url_template:
            raise ValueError(f"URL template {url_template!r} has no {{yid}}")
        self.url_template = url_template
        self.format = format
        self.cookiefile = str(cookiefile) if cookiefile else None
        self.retries = max(0, retries)
        self.backoff = backoff or Backoff()
        self.socket_timeout = socket_timeout
        self.pacer = pacer or Pacer(0.0)
        self.guard = guard or RateLimitGuard(sleep=sleep)
        self._sleep = sleep
        self.extra_options = dict(extra_options or {})

    def url(self, yid: str) -> str:
        return self.url_template.replace("{yid}", yid)

    def _options(self, outtmpl: str, logger: _YtdlpLogger) -> dict[str, Any]:
        def sleep_fn(n: int = 0, **_: Any) -> float:  # yt-dlp calls it as f(n=attempt)
            return self.backoff.delay(n)

        options: dict[str, Any] = {
            "format": self.format,
            "outtmpl": {"default": outtmpl},
            "logger": logger,
            "quiet": True,
            "no_warnings": False,
            "noprogress": True,
            "noplaylist": True,
            "ignoreerrors": False,
            "overwrites": True,
            "continuedl": True,
            "updatetime": False,
            # yt-dlp resumes a broken transfer itself; the outer loop retries the rest
            "retries": min(self.retries, 2),
            "fragment_retries": self.retries,
            "extractor_retries": min(self.retries, 3),
            "retry_sleep_functions": {"http": sleep_fn, "fragment": sleep_fn, "extractor": sleep_fn},
            "socket_timeout": self.socket_timeout,
            "color": {"stdout": "no_color", "stderr": "no_color"},
            # YouTube's player needs a JavaScript runtime (and the yt-dlp-ejs package)
            "js_runtimes": {"deno": {}, "node": {}, "bun": {}},
        }
        if self.cookiefile:
            options["cookiefile"] = self.cookiefile
        options.update(self.extra_options)
        return options

    def download(self, yid: str, target: str | os.PathLike) -> DownloadResult:
        """Download ``yid`` to ``target`` (an ``.mp4`` path). Raises DownloadFailed."""
        import yt_dlp

        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_temps_of(target)  # a killed run's .part / .ytdl / unverified files
        stem = temp_path_for(target, suffix="")  # .<yid>.mp4.tmp-<host>-<pid>-<rand>
        outtmpl = str(stem).replace("%", "%%") + ".%(ext)s"
        started = time.time()
        attempt = 0
        try:
            while True:
                attempt += 1
                self.pacer.wait()
                logger = _YtdlpLogger(yid)
                try:
                    with yt_dlp.YoutubeDL(self._options(outtmpl, logger)) as ydl:
                        info = ydl.extract_info(self.url(yid), download=True)
                    path, format_id = self._downloaded_file(info)
                    duration = self._verify(path)
                except _Retryable as exc:
                    failure, reason = exc.failure, exc.reason
                except yt_dlp.utils.DownloadError as exc:
                    reason = clean_message(exc.msg or logger.last_error or str(exc))
                    failure = classify_failure(reason, exc.exc_info[1] if exc.exc_info else None)
                else:
                    size = path.stat().st_size
                    commit_temp(path, target)
                    self.guard.success()
                    return DownloadResult(target, size, duration, format_id, attempt, time.time() - started)
                if failure.rate_limited:  # counted across items; may pause the rank
                    self.guard.rate_limited(reason)
                # a bad file is tried once more (a server glitch), then it is the content; a host
                # that refuses outright (or has no address) is not waited on: a re-run retries it
                limit = min(1, self.retries) if failure.category == "corrupt" else self.retries
                if failure.unreachable:
                    limit = 0
                if not failure.transient or attempt > limit:
                    if failure.category == "corrupt":
                        failure = Failure("corrupt", False)
                    if attempt > 1:
                        reason = f"{reason} (after {attempt} attempts)"
                    raise DownloadFailed(reason, failure, attempt)
                delay = self.backoff.delay(attempt - 1)
                log.info("%s: %s [%s, transient]; retry %d/%d in %.1f s",
                         yid, reason, failure.category, attempt, self.retries, delay)
                self._sleep(delay)
        finally:
            remove_temps_of(target)

    @staticmethod
    def _downloaded_file(info: dict[str, Any] | None) -> tuple[Path, str]:
        if not info:
            raise _Retryable("yt-dlp returned no information", Failure("download_error", True))
        if info.get("_type") == "playlist" or info.get("entries") is not None:
            raise _Retryable("the URL is a playlist, not one video", Failure("unsupported_url", False))
        downloads = info.get("requested_downloads") or []
        if not downloads or not downloads[0].get("filepath"):
            raise _Retryable("yt-dlp reported no downloaded file", Failure("download_error", True))
        path = Path(downloads[0]["filepath"])
        if not path.is_file():
            raise _Retryable(f"yt-dlp reported {path.name}, which does not exist", Failure("download_error", True))
        ext = downloads[0].get("ext") or path.suffix.lstrip(".")
        if ext != "mp4":
            raise _Retryable(f"format {info.get('format_id')} is {ext}, not mp4", Failure("no_format", False))
        return path, str(info.get("format_id") or downloads[0].get("format_id") or "")

    @staticmethod
    def _verify(path: Path) -> float:
        try:
            return verify_video(path)
        except VideoError as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            if isinstance(exc, WrongContainerError):
                raise _Retryable(f"the server sent no mp4: {exc}", Failure("no_format", False)) from exc
            # The transfer was complete (yt-dlp checks the length), so the content is bad:
            # retried within this call in case the server glitched, then permanent.
            raise _Retryable(f"downloaded file does not decode: {exc}", Failure("corrupt", True)) from exc


class _Retryable(Exception):
    def __init__(self, reason: str, failure: Failure):
        super().__init__(reason)
        self.reason = reason
        self.failure = failure


# ------------------------------------------------- what every downloading stage shares


DOWNLOAD_GROUP = "download (yt-dlp)"


def check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    """UsageError naming the flag ``--name`` unless ``value`` is positive (or zero, if allowed)."""
    if value < 0 or (value == 0 and not allow_zero):
        raise UsageError(f"--{name} must be {'>= 0' if allow_zero else 'positive'}, got {value}")


@dataclass(frozen=True, kw_only=True)
class DownloadOptions:
    """How videos are fetched (download_videos.py, download_tracks.py)."""

    url_template: str = option(DEFAULT_URL_TEMPLATE, group=DOWNLOAD_GROUP,
                               help="URL of a video, {yid} replaced by the id: any URL yt-dlp supports")
    cookiefile: str | None = option(None, group=DOWNLOAD_GROUP,
                                    help="Netscape-format cookies (e.g. of a logged-in browser session) for yt-dlp")
    format: str = option(DEFAULT_FORMAT, group=DOWNLOAD_GROUP,
                         help="yt-dlp format selector (default: 720p/480p/360p/1080p video-only mp4, "
                              "YouTube ids 136/135/134/137, then the best mp4 video up to 1080p)")
    download_retries: int = option(5, group=DOWNLOAD_GROUP,
                                   help="extra attempts for a transient failure (429, 5xx, timeout, reset) in one run")
    backoff_base: float = option(5.0, group=DOWNLOAD_GROUP,
                                 help="first retry waits about this long (s); each next one twice as long, with jitter")
    backoff_max: float = option(300.0, group=DOWNLOAD_GROUP, help="longest wait between retries (s)")
    socket_timeout: float = option(30.0, group=DOWNLOAD_GROUP, help="seconds without data = timeout")
    sleep_interval: float = option(0.0, group=DOWNLOAD_GROUP,
                                   help="pace limit: at least this many seconds (x random 1-1.5) between downloads of "
                                        "this rank; 5-10 keeps a YouTube session under its rate limit")
    rate_limit_pause_after: int = option(3, group=DOWNLOAD_GROUP,
                                         help="rate-limit answers in a row after which the rank pauses")
    rate_limit_pause: float = option(600.0, group=DOWNLOAD_GROUP,
                                     help="first rate-limit pause (s); it doubles while answers stay rate limits")
    rate_limit_pause_max: float = option(3600.0, group=DOWNLOAD_GROUP, help="longest rate-limit pause (s)")

    def validate(self) -> None:
        """UsageError for bad download settings (before any work or submission)."""
        if "{yid}" not in self.url_template:
            raise UsageError(f"--url_template {self.url_template!r} must contain {{yid}}")
        if self.cookiefile is not None and not Path(self.cookiefile).is_file():
            raise UsageError(f"--cookiefile {self.cookiefile} does not exist")
        for name in ("backoff_base", "backoff_max", "socket_timeout", "rate_limit_pause", "rate_limit_pause_max"):
            check_positive(name, getattr(self, name))
        for name in ("download_retries", "sleep_interval"):
            check_positive(name, getattr(self, name), allow_zero=True)
        if self.rate_limit_pause_after < 1:
            raise UsageError(f"--rate_limit_pause_after must be at least 1, got {self.rate_limit_pause_after}")


UNREACHABLE_STOP_AFTER = 3  # downloads in a row that could not reach the same host: systemic
_HOST_IN_MESSAGE = (
    re.compile(r"host='([^']+)', port=(\d+)"),  # urllib3 / requests
    re.compile(r"[Ff]ailed to resolve '([^']+)'()"),
)


class DownloadSession:
    """One rank's downloader (built from the flags) plus what it learns across items: a
    failure becomes an ``ItemError`` with yt-dlp's reason and category; a ``SystemicError``
    stops the rank when the same host refused connections or had no address for
    ``UNREACHABLE_STOP_AFTER`` items in a row (a wrong ``--url_template``, a server down), or
    after many network failures of any kind in a row (``--max_consecutive_errors``)."""

    def __init__(self, options: DownloadOptions, max_network_failures: int = 25,
                 notify: Callable[[str], None] | None = None, unreachable_stop_after: int = UNREACHABLE_STOP_AFTER):
        notify = notify or _notifier()
        self.url_template = options.url_template
        self.downloader = VideoDownloader(
            url_template=options.url_template, format=options.format, cookiefile=options.cookiefile,
            retries=options.download_retries, backoff=Backoff(options.backoff_base, options.backoff_max),
            socket_timeout=options.socket_timeout, pacer=Pacer(options.sleep_interval),
            guard=RateLimitGuard(options.rate_limit_pause_after, options.rate_limit_pause,
                                 options.rate_limit_pause_max, notify=notify),
        )
        self.max_network_failures = max(1, max_network_failures)
        self.network_failures_in_a_row = 0
        self.unreachable_stop_after = max(1, min(unreachable_stop_after, self.max_network_failures))
        self.unreachable_host: str | None = None
        self.unreachable_in_a_row = 0
        if "youtube.com" in options.url_template or "youtu.be" in options.url_template:
            warning = _js_runtime_warning()
            if warning:
                notify(f"WARNING: {warning}")

    def _failing_host(self, item: str, reason: str) -> str:
        """The host a refusal or failed name lookup was about: named in the message when it is,
        else the host of the item's URL."""
        for pattern in _HOST_IN_MESSAGE:
            found = pattern.search(reason)
            if found:
                return f"{found.group(1)}:{found.group(2)}" if found.group(2) else found.group(1)
        return host_of(self.downloader.url(item))

    def _unreachable(self, item: str, exc: DownloadFailed) -> None:
        host = self._failing_host(item, exc.reason)
        self.unreachable_in_a_row = self.unreachable_in_a_row + 1 if host == self.unreachable_host else 1
        self.unreachable_host = host
        if self.unreachable_in_a_row < self.unreachable_stop_after:
            return
        n, template = self.unreachable_in_a_row, self.url_template
        if exc.category == "dns":
            message = (f"{host}: its name did not resolve for {n} downloads in a row (last: {item}: {exc.reason}). "
                       f"Check the host name in --url_template ({template!r}) and this machine's network and DNS.")
        else:
            message = (f"{host} refused the connection for {n} downloads in a row (last: {item}: {exc.reason}). "
                       f"Check --url_template ({template!r}): is the server up and listening there?")
        raise SystemicError(message) from exc

    def fetch(self, item: str, target: str | os.PathLike) -> DownloadResult:
        """Download ``item`` to ``target`` or raise ItemError / SystemicError."""
        try:
            result = self.downloader.download(item, target)
        except DownloadFailed as exc:
            if exc.failure.unreachable:
                self._unreachable(item, exc)
            else:
                self.unreachable_in_a_row, self.unreachable_host = 0, None
            if exc.category in NETWORK_CATEGORIES:
                self.network_failures_in_a_row += 1
                if self.network_failures_in_a_row >= self.max_network_failures:
                    raise SystemicError(
                        f"{self.network_failures_in_a_row} downloads in a row failed with network errors "
                        f"(last: {item}: {exc.reason}); is the network (or the server) down?"
                    ) from exc
            else:
                self.network_failures_in_a_row = 0
            raise ItemError(exc.reason, transient=exc.transient, category=exc.category) from exc
        self.network_failures_in_a_row = 0
        self.unreachable_in_a_row, self.unreachable_host = 0, None
        return result

def _js_runtime_warning() -> str | None:
    """What is missing for yt-dlp to read YouTube's player (a JS runtime, yt-dlp-ejs)."""
    import shutil

    from yt_dlp.dependencies import yt_dlp_ejs

    missing = []
    if not any(shutil.which(name) for name in ("deno", "node", "bun")):
        missing.append("a JavaScript runtime (deno, or node / bun)")
    if yt_dlp_ejs is None:
        missing.append("the yt-dlp-ejs package (pip install 'yt-dlp[default]')")
    if not missing:
        return None
    return ("yt-dlp needs " + " and ".join(missing) + " to solve YouTube's player challenges; without "
            "them some or all formats are missing and downloads fail with 'Requested format is not available'")

def _notifier() -> Callable[[str], None]:
    """Messages the user must see even without logging: through tqdm, to stderr."""
    import sys

    from tqdm import tqdm

    def notify(message: str) -> None:
        tqdm.write(message, file=sys.stderr)

    return notify
