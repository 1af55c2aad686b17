"""The one probe of the Hugging Face hub: is it reachable, and if not, why.

Models (``models.loading``) and datasets (``tasks.loading``) both ask here before going to
the hub, so both honour ``HF_ENDPOINT`` (a mirror) and the offline variables the same way,
and neither hangs on a machine without network. This module imports nothing of xstilts.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.error
import urllib.request

PROBE_TIMEOUT_S = 3.0
DEFAULT_ENDPOINT = "https://huggingface.co"
#: environment variables that ask for offline mode (any of them set to a true value), for models
MODEL_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
#: ... and for datasets
DATASETS_OFFLINE_VARS = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
_TRUTHY = {"1", "on", "yes", "true"}


def hub_endpoint() -> str:
    """The hub URL in use: ``HF_ENDPOINT`` or https://huggingface.co."""
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or DEFAULT_ENDPOINT


def offline_variable(variables: tuple[str, ...] = MODEL_OFFLINE_VARS) -> str | None:
    """The first of ``variables`` the user set to a true value (e.g. ``"HF_HUB_OFFLINE=1"``), else None."""
    for var in variables:
        if os.environ.get(var, "").strip().lower() in _TRUTHY:
            return f"{var}={os.environ[var]}"
    return None


def hub_offline() -> bool:
    """True when the user asked for models to stay offline (a :data:`MODEL_OFFLINE_VARS`
    variable, or huggingface_hub's own ``HF_HUB_OFFLINE`` constant)."""
    if offline_variable() is not None:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - huggingface_hub missing or very old
        return False


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether :func:`hub_endpoint` answers within ``timeout`` seconds (any HTTP status counts).

    Runs in a daemon thread so that a stalled DNS lookup cannot block longer than ``timeout``.
    """
    result: list[bool] = []

    def probe() -> None:
        try:
            req = urllib.request.Request(hub_endpoint() + "/api/models?limit=1", method="HEAD")
            with urllib.request.urlopen(req, timeout=timeout):
                result.append(True)
        except urllib.error.HTTPError:
            result.append(True)  # the server answered
        except (urllib.error.URLError, socket.timeout, OSError, ValueError):
            result.append(False)

    thread = threading.Thread(target=probe, name="xstilts-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def hub_offline_reason(variables: tuple[str, ...] = DATASETS_OFFLINE_VARS,
                       timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the hub cannot be used (one of ``variables`` is set, or the endpoint does not
    answer), else None. The default variables are the datasets' ones."""
    var = offline_variable(variables)
    if var is not None:
        return f"{var} is set"
    if not hub_reachable(timeout):
        return f"cannot reach {hub_endpoint()}"
    return None
