"""Small real Minari datasets, made once per test session in a temporary folder (no network)."""

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # Minari cannot download here: fail at once instead of timing out
os.environ["WANDB_SILENT"] = "true"


@pytest.fixture(scope="session")
def datasets(tmp_path_factory):
    os.environ["MINARI_DATASETS_PATH"] = str(tmp_path_factory.mktemp("minari"))
    from make_demo_dataset import make_dataset

    return {kind: make_dataset(kind, episodes) for kind, episodes in [("pendulum", 4), ("pointmaze", 3), ("modes", 1000)]}
