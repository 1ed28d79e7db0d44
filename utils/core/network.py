"""Is a download host there? One quick question before a loader that would otherwise retry
for minutes (huggingface_hub backs off on every file it looks up, torch.hub and urllib wait
up to their long timeouts), so that a machine without network hears so within seconds.

    why = unreachable("https://huggingface.co")     # None: it answered
    if why:
        raise SomeError(f"... the hub is unreachable ({why}); offline options: ...")

Any HTTP answer, even an error status, means the host is there (the loader then reports what
is wrong with the file itself). Proxies come from the usual environment variables (urllib's
rules). ``file://`` and other non-HTTP addresses are never probed.
"""

from __future__ import annotations

import http.client
import os
import socket
import threading
import urllib.error
import urllib.request
from urllib.parse import urlsplit

__all__ = ["PROBE_TIMEOUT", "hub_cache_dir", "hub_endpoint", "hub_offline", "host_of", "unreachable"]

PROBE_TIMEOUT = 5.0  # seconds for a host to answer a HEAD request (name lookup included)
_DEFAULT_HUB = "https://huggingface.co"
_TRUE = {"1", "on", "yes", "true"}


def host_of(url: str) -> str:
    """``host`` or ``host:port`` of ``url`` (the address as a person reads it)."""
    parts = urlsplit(url)
    host = parts.hostname or url
    return f"{host}:{parts.port}" if parts.port else host


def _why(exc: BaseException, url: str, timeout: float) -> str:
    while isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {urlsplit(url).hostname}: {exc.strerror or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection to {host_of(url)} refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer from {host_of(url)} within {timeout:g} s"
    if isinstance(exc, urllib.error.URLError):
        return f"{host_of(url)}: {exc.reason}"
    return f"{host_of(url)}: {getattr(exc, 'strerror', None) or exc}"


def unreachable(url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when the server of ``url`` answers a HEAD request within ``timeout`` seconds (any
    HTTP status counts), else why not in a few words (``cannot resolve huggingface.co: Name or
    service not known``, ``connection to 127.0.0.1:9 refused``, ``no answer ... within 5 s``).
    The whole question, name lookup included, is bounded by ``timeout`` (plus a second)."""
    if not url.lower().startswith(("http://", "https://")):
        return None
    answer: list[str | None] = []

    def ask() -> None:
        request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "trackverse-probe"})
        try:
            with urllib.request.urlopen(request, timeout=timeout):  # noqa: S310 (http(s) only, checked above)
                pass
        except urllib.error.HTTPError:  # an answer: the host is there
            answer.append(None)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            answer.append(_why(exc, url, timeout))
        else:
            answer.append(None)

    thread = threading.Thread(target=ask, name="trackverse-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)  # a name lookup ignores the socket timeout: bound it here
    if thread.is_alive() or not answer:
        return f"no answer from {host_of(url)} within {timeout:g} s"
    return answer[0]


def hub_endpoint() -> str:
    """The Hugging Face hub address the hub client uses (``HF_ENDPOINT``, read when it loads)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return os.environ.get("HF_ENDPOINT", _DEFAULT_HUB).rstrip("/")
    return str(constants.ENDPOINT).rstrip("/")


def hub_offline() -> bool:
    """Whether the hub client was told never to touch the network (``HF_HUB_OFFLINE=1`` or
    ``TRANSFORMERS_OFFLINE=1``)."""
    if any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir() -> str:
    """Where the hub client caches downloads (``HF_HUB_CACHE``, else ``HF_HOME/hub``), for messages."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return "$HF_HUB_CACHE, else $HF_HOME/hub"
    return str(constants.HF_HUB_CACHE)
