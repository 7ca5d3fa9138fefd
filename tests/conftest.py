"""Shared fixtures: the trained synthetic CNN (trained once and cached), Hydra composition."""
from __future__ import annotations

from typing import List, Optional

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test reaches the network: model downloads are off (a test of the download path
    monkeypatches the download itself); subprocesses inherit the setting."""
    monkeypatch.setenv("SALBENCH_OFFLINE", "1")


@pytest.fixture(scope="session")
def synthetic_bundle():
    """The synthetic-shapes CNN (trains on first use, ~2 min on 2 cores; cached afterwards)."""
    from salbench.models import create_model

    return create_model("synthetic_cnn")


@pytest.fixture(scope="session")
def compose_config():
    """compose(overrides, config_name="config") through Hydra's compose API, schemas registered."""
    from hydra import compose, initialize_config_dir

    from salbench.harness.cli import config_dir
    from salbench.harness.schema import register_schemas

    register_schemas()

    def _compose(overrides: Optional[List[str]] = None, config_name: str = "config"):
        register_schemas()  # names registered since (a plugin's) become options too
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides or [])

    return _compose
