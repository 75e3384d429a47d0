"""Whether the Hugging Face hub can be reached, asked once per command.

On a machine without it, huggingface_hub and datasets retry each request for about 20 s and log a
warning per retry before failing; neither library tells "offline" from "slow" on its own. When the
hub's host does not resolve (and no proxy is configured), :func:`offline_if_unreachable` sets
``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` before those libraries are imported, so they read their
caches and fail at once on what is not there.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

_TRUE = ("1", "true", "yes", "on")
_PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_reachable() -> bool:
    """Not HF_HUB_OFFLINE, and the hub's host resolves (or a proxy is set, which resolves it for us)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE:
        return False
    if any(os.environ.get(k) for k in _PROXIES):
        return True
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def offline_if_unreachable() -> None:
    """Set the libraries' offline switches when the hub cannot be reached (a user's own setting, even 0, wins)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip() or hub_reachable():
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    if not os.environ.get("HF_DATASETS_OFFLINE", "").strip():
        os.environ["HF_DATASETS_OFFLINE"] = "1"
