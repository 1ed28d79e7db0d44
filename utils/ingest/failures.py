"""What a failed download was: yt-dlp's messages and exceptions classified (:func:`classify_failure`)
into permanent failures (private, removed, 404, no mp4 format: not worth retrying) and transient ones
(429, 5xx, timeouts, resets, "not a bot": retried with backoff), by HTTP status where there is one."""

from __future__ import annotations

import socket
from dataclasses import dataclass

# --------------------------------------------------------------------- classification


@dataclass(frozen=True)
class Failure:
    """How a failed download is treated: its category and whether a retry may succeed."""

    category: str
    transient: bool

    @property
    def rate_limited(self) -> bool:
        return self.category == "rate_limited"

    @property
    def unreachable(self) -> bool:
        """The host refused the connection or its name did not resolve: nothing was asked of
        it, and waiting a little will not change that (no back-off; systemic when it repeats)."""
        return self.category in UNREACHABLE


# (category, transient, lower-case fragments of yt-dlp's message). Order matters: YouTube
# words its session rate limit "Video unavailable. This content isn't available, try again
# later", so rate limits are matched before "unavailable".
_MESSAGE_RULES: tuple[tuple[str, bool, tuple[str, ...]], ...] = (
    ("rate_limited", True, (
        "too many requests", "http error 429", "not a bot", "rate-limited", "rate limited",
        "rate limit", "try again later", "captcha",
    )),
    ("private", False, ("private video", "this video is private", "video is private")),
    ("age_restricted", False, (
        "confirm your age", "age-restricted", "age restricted", "inappropriate for some users",
    )),
    ("geo_restricted", False, (
        "not made this video available in your country", "not available in your country",
        "blocked it in your country", "geo restrict", "geo-restrict", "from your location",
    )),
    ("members_only", False, ("members-only", "members only", "join this channel")),
    ("removed", False, (
        "has been removed", "account associated with this video has been terminated",
        "no longer available", "copyright", "violating youtube", "video has been deleted",
    )),
    ("upcoming", True, ("premieres in", "live event will begin", "this live event", "is upcoming")),
    ("no_format", False, (
        "requested format is not available", "no video formats found", "drm protected",
    )),
    ("unsupported_url", False, ("unsupported url", "is not a valid url")),
    ("unavailable", False, (
        "video unavailable", "this video is unavailable", "is not available", "does not exist",
    )),
    ("connection_refused", True, ("connection refused", "errno 111", "[errno 61]", "actively refused")),
    ("dns", True, (
        "name or service not known", "nodename nor servname", "name resolution", "failed to resolve",
        "getaddrinfo failed", "no address associated with hostname", "errno -2]", "errno -3]", "errno -5]",
        "errno 11001", "errno 8]",
    )),
    ("timeout", True, ("timed out", "timeout")),
    ("network", True, (
        "connection reset", "connection aborted", "remote end closed",
        "incompleteread", "incomplete read", "bytes read", "more expected", "content too short",
        "did not get any data blocks", "downloaded file is empty",
        "network is unreachable", "no route to host", "broken pipe", "eof occurred",
        "unable to connect", "ssl", "connection broken", "errno 104",
    )),
)
# Failures that say nothing about the item: the host refused, or its name did not resolve.
UNREACHABLE = ("connection_refused", "dns")
NETWORK_CATEGORIES = (*UNREACHABLE, "timeout", "network")  # words that an HTTP answer in the chain outranks

_PERMANENT_HTTP = {400: "bad_request", 401: "unauthorized", 404: "not_found", 410: "removed", 451: "removed"}


def _cause_chain(exc: BaseException | None) -> list[BaseException]:
    """An exception and its causes: yt-dlp's ``cause`` / ``exc_info``, then Python's."""
    chain: list[BaseException] = []
    while exc is not None and all(exc is not seen for seen in chain):
        chain.append(exc)
        following = getattr(exc, "cause", None)
        if following is None:
            info = getattr(exc, "exc_info", None)
            following = info[1] if info else None
        exc = following or exc.__cause__ or exc.__context__
    return chain


def _http_statuses(exc: BaseException | None) -> list[int]:
    """HTTP status codes anywhere in an exception's cause chain."""
    return [e.status for e in _cause_chain(exc) if isinstance(getattr(e, "status", None), int)]


def _status_from_message(text: str) -> int | None:
    marker = "http error "
    at = text.find(marker)
    if at < 0:
        return None
    digits = text[at + len(marker):at + len(marker) + 3]
    return int(digits) if digits.isdigit() else None


def classify_failure(message: str, exc: BaseException | None = None) -> Failure:
    """Category and transience of a failed download, from yt-dlp's message and exception."""
    text = message.lower().replace("\u2019", "'")
    statuses = _http_statuses(exc)
    status = statuses[0] if statuses else _status_from_message(text)
    if status == 429:
        return Failure("rate_limited", True)
    if status is None:  # typed causes first: the words of a refusal vary by platform and library
        chain = _cause_chain(exc)
        if any(isinstance(e, ConnectionRefusedError) for e in chain):
            return Failure("connection_refused", True)
        if any(isinstance(e, socket.gaierror) for e in chain):
            return Failure("dns", True)
    for category, transient, fragments in _MESSAGE_RULES:
        if category in NETWORK_CATEGORIES and status is not None:
            break  # an HTTP answer is more telling than the words around it
        if any(fragment in text for fragment in fragments):
            return Failure(category, transient)
    if status is not None:
        if status in _PERMANENT_HTTP:
            return Failure(_PERMANENT_HTTP[status], False)
        if status == 408:
            return Failure("timeout", True)
        if status >= 500:
            return Failure("server_error", True)
        if status == 403:
            # YouTube answers 403 to expired stream URLs and throttled sessions: retry.
            return Failure("forbidden", True)
        if 400 <= status < 500:
            return Failure(f"http_{status}", False)
    for category, transient, fragments in _MESSAGE_RULES:
        if category in NETWORK_CATEGORIES and any(f in text for f in fragments):
            return Failure(category, transient)
    return Failure("download_error", True)


def clean_message(message: str) -> str:
    """yt-dlp's message without its ``ERROR:`` prefix and colour codes, on one line."""
    text = " ".join(str(message).split())
    for prefix in ("ERROR:", "error:"):
        if text.startswith(prefix):
            text = text[len(prefix):].strip()
    return text.replace("\x1b[0;31m", "").replace("\x1b[0m", "")


class DownloadFailed(Exception):
    """A download that did not produce a verified mp4; ``reason`` is yt-dlp's own message."""

    def __init__(self, reason: str, failure: Failure, attempts: int = 1):
        super().__init__(reason)
        self.reason = reason
        self.failure = failure
        self.attempts = attempts

    @property
    def transient(self) -> bool:
        return self.failure.transient

    @property
    def category(self) -> str:
        return self.failure.category


