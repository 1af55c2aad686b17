"""Shared test set-up: no network, deterministic, a per-session cache dir unless one is given."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "2")
# tokenizers load from their files, not from snapshots earlier sessions left in the cache
# (tests/test_tokenizer_snapshots.py turns them on, with a cache of its own)
os.environ.setdefault("XSTILTS_TOKENIZER_SNAPSHOTS", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real benchmark data beside the checkout; tests that need it skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tokenizer():
    """The real XLM-R fast tokenizer (250,002 pieces), as shipped offline."""
    from tests.helpers import xlmr_tokenizer

    return xlmr_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random-weight XLM-R-shaped encoder + the real XLM-R tokenizer, saved once per session."""
    from tests.helpers import tiny_encoder_dir

    return tiny_encoder_dir(tmp_path_factory.mktemp("tiny-xlmr"))


@pytest.fixture(autouse=True)
def _isolated_catalog():
    """No test leaks a user catalog into the tests after it: loading one also exports
    ``XSTILTS_CATALOG`` for worker processes, so both are undone here. Tasks registered in
    Python (a module's fixture may register one for all its tests) are left alone."""
    from xstilts.tasks.catalog import CATALOG_ENV, reset_catalog, user_catalogs

    before = os.environ.get(CATALOG_ENV)
    yield
    changed = os.environ.get(CATALOG_ENV) != before
    if before is None:
        os.environ.pop(CATALOG_ENV, None)
    else:
        os.environ[CATALOG_ENV] = before
    if changed or user_catalogs():
        reset_catalog()


@pytest.fixture
def clean_catalog(monkeypatch: pytest.MonkeyPatch):
    """The packaged catalog only, before and after the test, whatever XSTILTS_CATALOG says
    (for tests that load user catalogs themselves)."""
    from xstilts.tasks.catalog import CATALOG_ENV, reset_catalog

    monkeypatch.delenv(CATALOG_ENV, raising=False)
    reset_catalog()
    yield
    monkeypatch.delenv(CATALOG_ENV, raising=False)
    reset_catalog()
