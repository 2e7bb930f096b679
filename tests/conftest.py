"""Small real Minari datasets, made once per test session in a temporary folder (no network)."""

import atexit
import os
import shutil
import tempfile

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # Minari cannot download here: fail at once instead of timing out
os.environ["WANDB_SILENT"] = "true"
# D4RL's files (d4rl_files.py): never D4RL's host nor the user's folder; a test serving a replica sets its own mirror
os.environ["D4RL_DATASET_DIR"] = tempfile.mkdtemp(prefix="edp-tests-d4rl-")
atexit.register(shutil.rmtree, os.environ["D4RL_DATASET_DIR"], True)
os.environ["EDP_D4RL_MIRROR"] = "http://127.0.0.1:9"  # the discard port: nothing listens, refused at once


@pytest.fixture(scope="session")
def datasets(tmp_path_factory):
    os.environ["MINARI_DATASETS_PATH"] = str(tmp_path_factory.mktemp("minari"))
    from make_demo_dataset import make_dataset

    return {kind: make_dataset(kind, episodes) for kind, episodes in [("pendulum", 4), ("pointmaze", 3), ("modes", 1000)]}


# Structural replicas of the paper's datasets, small enough for CI (make_demo_dataset.make_replica)
REPLICA_BUILDS = {"kitchen-complete": dict(episodes=3, max_steps=40), "kitchen-mixed": dict(episodes=1, max_steps=10),
                  "pen-human": dict(episodes=3, max_steps=50), "pen-cloned": dict(episodes=2, max_steps=80), "antmaze-umaze": dict(episodes=3, max_steps=60),
                  "antmaze-medium-diverse": dict(episodes=3, max_steps=60)}


@pytest.fixture(scope="session")
def replicas(datasets, tmp_path_factory):
    """Paper task -> Minari id of its replica (in the demo datasets' folder); robot -> a D4RL-format HDF5 file."""
    from make_demo_dataset import make_d4rl_hdf5, make_replica

    files = tmp_path_factory.mktemp("d4rl")
    built = {task: make_replica(task, **kwargs) for task, kwargs in REPLICA_BUILDS.items()}
    return built | {robot: make_d4rl_hdf5(robot, str(files / f"{robot}.hdf5"), episodes=2, max_steps=100)
                    for robot in ("hopper", "halfcheetah", "walker2d")}
