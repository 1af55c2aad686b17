"""The one hub probe honours HF_ENDPOINT (a mirror) and the offline variables, for models and datasets alike."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from xstilts import hub


class _Answer(BaseHTTPRequestHandler):
    def do_HEAD(self):  # noqa: N802 (http.server's name)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def online(monkeypatch):
    for var in (*hub.MODEL_OFFLINE_VARS, *hub.DATASETS_OFFLINE_VARS):
        monkeypatch.setenv(var, "0")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return monkeypatch


def test_probe_asks_the_endpoint_in_hf_endpoint(online):
    server = HTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        online.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}/")
        assert hub.hub_endpoint() == f"http://127.0.0.1:{server.server_port}"
        assert hub.hub_reachable(timeout=2) is True  # any HTTP answer counts
        assert hub.hub_offline_reason(timeout=2) is None
    finally:
        server.shutdown()
        server.server_close()


def test_unreachable_endpoint_and_offline_variables_are_reasons(online):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    online.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert hub.hub_offline_reason(timeout=0.5) == f"cannot reach http://127.0.0.1:{port}"
    online.setenv("HF_DATASETS_OFFLINE", "1")
    assert hub.hub_offline_reason() == "HF_DATASETS_OFFLINE=1 is set"
    assert hub.hub_offline() is False  # datasets' variable does not make models offline
    online.setenv("TRANSFORMERS_OFFLINE", "yes")
    assert hub.hub_offline() is True


def test_tasks_and_models_use_the_one_probe():
    from xstilts.models import loading as model_loading
    from xstilts.tasks import loading as task_loading

    assert task_loading.hub_offline_reason is hub.hub_offline_reason
    assert model_loading.hub_reachable is hub.hub_reachable and model_loading.hub_endpoint is hub.hub_endpoint
