"""Fail fast without a network.

Fetching hub weights on a machine without network makes huggingface_hub retry for about a minute
(with a warning per retry) before it gives up. One quick connection attempt to the hub tells
whether it is reachable; if not, huggingface_hub is switched to offline mode, so weights already in
the cache still load and missing ones fail at once with one clear error.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


@functools.lru_cache(maxsize=None)
def _reachable(host: str, port: int, timeout: float) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_offline_if_unreachable(timeout: float = 3.0) -> bool:
    """True if the Hugging Face hub cannot be reached (and offline mode is now on)."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return True
    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return False  # a proxy may reach what a direct connection cannot: let the hub client try
    url = urlparse(constants.ENDPOINT)
    if _reachable(url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80), timeout):
        return False
    constants.HF_HUB_OFFLINE = True
    return True
