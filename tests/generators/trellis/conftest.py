"""Tiny TRELLIS checkpoints written once per session, and a generator loaded from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from ai_engine.generators.trellis.pipeline import TrellisGenerator
from tests.generators.trellis.tiny import write_tiny_trellis


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models_dir = tmp_path_factory.mktemp("trellis_models")
    write_tiny_trellis(models_dir, seed=0)
    return models_dir


@pytest.fixture(scope="session")
def tiny_generator(tiny_models_dir: Path) -> TrellisGenerator:
    return TrellisGenerator.load(models_dir=tiny_models_dir, device="cpu")
