"""Shared fixtures. The demo model lives in the shared models folder (scripts/test.sh fetches it);
every test gets its own empty SKILLFORGE_HOME so registries and stores never leak between tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import platformdirs

MODELS = Path(os.environ.get("SKILLFORGE_MODELS") or Path(platformdirs.user_data_dir("skillforge")) / "models")
os.environ["SKILLFORGE_MODELS"] = str(MODELS)
DEMO = MODELS / "smollm2-135m"
GEMMA = MODELS / "gemma-3-270m"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh data home per test (index, blobs); models stay shared."""
    h = tmp_path / "home"
    monkeypatch.setenv("SKILLFORGE_HOME", str(h))
    monkeypatch.delenv("SKILLFORGE_DB_URL", raising=False)
    monkeypatch.delenv("SKILLFORGE_STORE", raising=False)
    return h


def _require_demo() -> None:
    if not (DEMO / "config.json").is_file():
        pytest.fail(f"the demo model is missing at {DEMO}; run scripts/test.sh (it fetches it) or skillforge model pull smollm2-135m")


@pytest.fixture(scope="session")
def demo_tokenizer():
    """The demo model's tokenizer (also used by the tiny random models, which share its vocabulary)."""
    _require_demo()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(DEMO))


@pytest.fixture(scope="session")
def demo_lm():
    """The demo model, loaded once per test session (float32 on CPU)."""
    _require_demo()
    from skillforge.model import load_model

    return load_model("smollm2-135m", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def gemma_lm():
    """gemma-3-270m (a real gemma3 model: sliding windows, two RoPE bases, no chat template), loaded once
    per test session (float32 on CPU)."""
    if not (GEMMA / "config.json").is_file():
        pytest.fail(f"gemma-3-270m is missing at {GEMMA}; run scripts/test.sh (it fetches it) or skillforge model pull gemma-3-270m")
    from skillforge.model import load_model

    return load_model("gemma-3-270m", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def skills_dir() -> Path:
    return REPO / "skills"
