"""Where a configured path points: a local path relative to the config's directory, or a
Hugging Face hub id, and whether the hub can be reached now. The one place for these checks
(config validation, the data readers and the eval runner all use them)."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".arrow", ".csv", ".png", ".jpg")


def resolve_path(path: str | Path, base_dir: str | Path) -> Path:
    """``path`` with ``~`` expanded; a relative path is taken relative to ``base_dir``."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(base_dir) / p


def is_hub_id(path: str) -> bool:
    """"owner/name" that is not a missing local file (``data/train.jsonl`` is not a hub id)."""
    return bool(HUB_ID.match(path)) and Path(path).suffix.lower() not in FILE_SUFFIXES


HUB_FORMATS = ("auto", "hf", "text_math")  # source formats that can read a hub dataset


def hub_source(path: str, fmt: str, base_dir: str | Path) -> bool:
    """Whether a data source's ``path`` names a Hugging Face hub dataset: there is no such
    local path (relative to ``base_dir``), it has the ``owner/name`` form, and its ``fmt`` can
    read from the hub."""
    return (fmt in HUB_FORMATS and is_hub_id(path)
            and not resolve_path(path, base_dir).exists())


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be used now (offline mode, no route), or None.

    Offline mode is the environment (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``) or
    ``huggingface_hub``'s own flag when that is already imported (it reads the environment once,
    at import). Behind a proxy nothing is probed (a direct connection would fail; the hub client
    goes through the proxy), so the answer is None."""
    import sys

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None and getattr(hub, "HF_HUB_OFFLINE", False):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY")):
        return None
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError as e:
        return f"{url.hostname} unreachable ({e})"
    return None
