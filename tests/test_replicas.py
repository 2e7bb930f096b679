"""Structural replicas of the paper's Minari datasets and the D4RL-format locomotion HDF5 files.

The expected values are written out here from Minari's generation scripts
(github.com/Farama-Foundation/minari-dataset-generation-scripts: scripts/D4RL/kitchen/create_franka_dataset.py,
scripts/D4RL/adroit/recreate_adroit_pen.py, scripts/D4RL/antmaze/create_antmaze_dataset.py) and from
gymnasium_robotics' own maze maps, not read back from make_demo_dataset, so a wrong constant there fails.
"""

import os
import subprocess
import sys
import time
import warnings

import h5py
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KITCHEN_TASKS = {"complete": ["microwave", "kettle", "light switch", "slide cabinet"],
                 "partial": ["microwave", "kettle", "light switch", "slide cabinet"],
                 "mixed": ["microwave", "kettle", "bottom burner", "light switch"]}
KITCHEN_STEPS = {"complete": 280, "partial": 450, "mixed": 450}
KITCHEN_TASK_DIMS = {"microwave": 1, "kettle": 7, "light switch": 2, "slide cabinet": 1, "bottom burner": 2}
ANTMAZE_ENV_IDS = {"umaze": "AntMaze_UMaze-v4", "umaze-diverse": "AntMaze_UMaze-v4", "medium-play": "AntMaze_Medium-v4",
                   "medium-diverse": "AntMaze_Medium_Diverse_GR-v4", "large-play": "AntMaze_Large-v4",
                   "large-diverse": "AntMaze_Large_Diverse_GR-v4"}
UMAZE_COLLECTION_MAP = [[1, 1, 1, 1, 1], [1, "g", 0, 0, 1], [1, 1, 1, 0, 1], [1, "r", 0, 0, 1], [1, 1, 1, 1, 1]]
SUCCESS_RADIUS = 0.45  # gymnasium_robotics maze_v4.compute_reward, sparse
KITCHEN_THRESHOLD = 0.3  # gymnasium_robotics franka_kitchen BONUS_THRESH
def collection_map(name):
    from gymnasium_robotics.envs.maze import maps

    return {"umaze": UMAZE_COLLECTION_MAP, "umaze-diverse": maps.U_MAZE, "medium-play": maps.MEDIUM_MAZE,
            "medium-diverse": maps.MEDIUM_MAZE_DIVERSE_GR, "large-play": maps.LARGE_MAZE,
            "large-diverse": maps.LARGE_MAZE_DIVERSE_GR}[name]


@pytest.fixture
def minari_path(replicas):
    """The replicas of conftest.py, built once per session beside the demo datasets."""
    return os.environ["MINARI_DATASETS_PATH"]


def load(task):
    import minari

    from make_demo_dataset import REPLICA_IDS

    return minari.load_dataset(REPLICA_IDS[task])


def eval_env_spec(dataset):
    """The stored evaluation env spec, None when the dataset has none (Minari then evaluates on env_spec)."""
    from gymnasium.envs.registration import EnvSpec

    spec = dataset.storage.metadata.get("eval_env_spec")
    return None if spec is None else EnvSpec.from_json(spec)


def recover_eval_env(dataset):
    with warnings.catch_warnings():  # kitchen and pen: no separate eval env, as the real datasets
        warnings.simplefilter("ignore")
        return dataset.recover_environment(eval_env=True)


def check_marked_and_scored(dataset, ref_scores):
    metadata = dataset.storage.metadata
    assert metadata["algorithm_name"].startswith("replica")
    assert "replica" in metadata["description"] and "NOT the real data" in metadata["description"]
    assert (metadata["ref_min_score"], metadata["ref_max_score"]) == pytest.approx(ref_scores)


def check_resets_and_steps(env):
    observation, _ = env.reset(seed=0)
    assert env.observation_space.contains(observation)
    for _ in range(3):
        observation, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert env.observation_space.contains(observation) and np.isfinite(reward)
    env.close()


def test_replica_ids_name_the_real_minari_datasets():
    from make_demo_dataset import REPLICA_IDS

    expected = {**{f"kitchen-{q}": f"D4RL/kitchen/{q}-v2" for q in KITCHEN_TASKS},
                **{f"pen-{q}": f"D4RL/pen/{q}-v2" for q in ["human", "cloned"]},
                **{f"antmaze-{m}": f"D4RL/antmaze/{m}-v1" for m in ANTMAZE_ENV_IDS}}
    assert REPLICA_IDS == expected


@pytest.mark.parametrize("quality", list(KITCHEN_TASKS))
def test_kitchen_specs_match_the_generation_script(quality):
    from make_demo_dataset import REPLICAS

    env = REPLICAS[f"kitchen-{quality}"].make_env()
    assert env.spec.id == "FrankaKitchen-v1" and env.spec.max_episode_steps == KITCHEN_STEPS[quality]
    assert env.spec.kwargs == dict(remove_task_when_completed=False, terminate_on_tasks_completed=False,
                                   tasks_to_complete=KITCHEN_TASKS[quality])
    env.close()


@pytest.mark.parametrize("task", ["kitchen-complete", "kitchen-mixed"])
def test_kitchen_replica_structure(minari_path, task):
    quality = task.split("-")[1]
    dataset = load(task)
    spec = dataset.spec.env_spec
    assert spec.id == "FrankaKitchen-v1" and spec.max_episode_steps == KITCHEN_STEPS[quality]
    assert spec.kwargs == dict(remove_task_when_completed=False, terminate_on_tasks_completed=False,
                               tasks_to_complete=KITCHEN_TASKS[quality])
    assert eval_env_spec(dataset) is None  # the script gives none: evaluation uses the same spec
    space = dataset.observation_space
    assert set(space.spaces) == {"observation", "achieved_goal", "desired_goal"}
    assert space["observation"].shape == (59,) and dataset.action_space.shape == (9,)
    for key in ["achieved_goal", "desired_goal"]:
        assert {task: box.shape for task, box in space[key].spaces.items()} == \
            {task: (KITCHEN_TASK_DIMS[task],) for task in KITCHEN_TASKS[quality]}
    check_marked_and_scored(dataset, (0.0, 4.0))
    eval_env = recover_eval_env(dataset)
    assert eval_env.spec.kwargs == spec.kwargs
    check_resets_and_steps(eval_env)


def test_kitchen_rewards_count_the_tasks_in_their_goal_state_at_every_step(minari_path):
    """remove_task_when_completed=False: r_t = number of target tasks within 0.3 of their goal after step t,
    paid again at every step (an episode's return is not 'tasks done out of 4')."""
    dataset = load("kitchen-complete")
    returns = []
    for episode in dataset.iterate_episodes():
        obs = episode.observations
        recomputed = sum((np.linalg.norm(obs["achieved_goal"][task][1:] - obs["desired_goal"][task][1:], axis=-1)
                          < KITCHEN_THRESHOLD).astype(float) for task in KITCHEN_TASKS["complete"])
        np.testing.assert_array_equal(episode.rewards, recomputed)
        assert not episode.terminations.any() and episode.truncations[-1] and not episode.truncations[:-1].any()
        assert episode.observations["observation"].shape == (len(episode.rewards) + 1, 59)
        assert episode.infos["ctrl"].shape == (len(episode.rewards) + 1, 9)
        returns.append(episode.rewards.sum())
    assert max(returns) > 4  # a task kept done pays at every step


def test_pen_replica_structure(minari_path):
    dataset = load("pen-human")
    spec = dataset.spec.env_spec
    assert spec.id == "AdroitHandPen-v1" and spec.max_episode_steps == 200
    assert spec.kwargs == {"reward_type": "dense"}  # the registered default; the script passes no kwargs
    assert eval_env_spec(dataset) is None
    assert dataset.observation_space.shape == (45,) and dataset.action_space.shape == (24,)
    check_marked_and_scored(dataset, (96.262799, 3076.8331))
    for episode in dataset.iterate_episodes():
        assert not episode.terminations.any() and episode.truncations[-1]  # AdroitHandPen-v1 never terminates
        assert episode.infos["success"].shape == (len(episode.rewards) + 1,)
    check_resets_and_steps(recover_eval_env(dataset))


@pytest.mark.parametrize("maze", list(ANTMAZE_ENV_IDS))
def test_antmaze_specs_match_the_generation_script(maze):
    """Collection env and eval env of all six: ids, kwargs, time limits, one r and one g cell in the eval map
    and, except the umazes (whose eval map is the mirror image), the same walls as the collection map."""
    from make_demo_dataset import REPLICAS

    replica = REPLICAS[f"antmaze-{maze}"]
    env = replica.make_env()
    assert env.spec.id == ANTMAZE_ENV_IDS[maze]
    assert env.spec.max_episode_steps == (700 if maze.startswith("umaze") else 1000)
    assert env.spec.kwargs == dict(maze_map=collection_map(maze), reward_type="sparse", continuing_task=True,
                                   reset_target=False)
    eval_spec = replica.eval_env_spec(env)
    eval_map = np.array(eval_spec.kwargs["maze_map"], dtype=object)
    assert (eval_map == "r").sum() == 1 and (eval_map == "g").sum() == 1
    size = maze.split("-")[0]  # EVAL_ENV_MAPS of the script: reset cell, goal cell
    assert [tuple(np.argwhere(eval_map == c)[0]) for c in "rg"] == \
        {"umaze": [(1, 3), (3, 3)], "medium": [(1, 1), (6, 6)], "large": [(1, 1), (7, 9)]}[size]
    assert {k: v for k, v in eval_spec.kwargs.items() if k != "maze_map"} == \
        {k: v for k, v in env.spec.kwargs.items() if k != "maze_map"}
    walls, eval_walls = np.array(collection_map(maze), dtype=object) == 1, eval_map == 1
    assert (walls == eval_walls).all() != maze.startswith("umaze")
    if maze.startswith("umaze"):
        assert (walls == eval_walls[:, ::-1]).all()
    env.close()


@pytest.mark.parametrize("maze", ["umaze", "medium-diverse"])
def test_antmaze_replica_structure_and_goals(minari_path, maze):
    dataset = load(f"antmaze-{maze}")
    spec, eval_spec = dataset.spec.env_spec, eval_env_spec(dataset)
    assert spec.id == eval_spec.id == ANTMAZE_ENV_IDS[maze]
    assert spec.max_episode_steps == eval_spec.max_episode_steps == (700 if maze == "umaze" else 1000)
    assert spec.kwargs == dict(maze_map=collection_map(maze), reward_type="sparse", continuing_task=True,
                               reset_target=False)
    assert eval_spec.kwargs["continuing_task"] is True and eval_spec.kwargs["reset_target"] is False
    space = dataset.observation_space
    assert {key: box.shape for key, box in space.spaces.items()} == \
        {"observation": (27,), "achieved_goal": (2,), "desired_goal": (2,)}
    assert dataset.action_space.shape == (8,)
    check_marked_and_scored(dataset, (0.0, 1.0))

    eval_env = recover_eval_env(dataset)
    maze_obj = eval_env.unwrapped.maze
    assert len(maze_obj.unique_goal_locations) == 1
    eval_goal = maze_obj.unique_goal_locations[0]  # the G cell centre; each eval reset adds U(-1, 1) noise per axis
    check_resets_and_steps(eval_env)

    raw_ones = relabelled_ones = 0
    for episode in dataset.iterate_episodes():
        obs = episode.observations
        goal, achieved = obs["desired_goal"], obs["achieved_goal"]
        assert np.allclose(goal, goal[0])  # reset_target=False: one goal per episode
        assert np.linalg.norm(goal[0] - eval_goal) > 2.0  # never the evaluation goal
        # r_t is 1 within 0.45 of the episode's goal, measured at the NEXT observation
        np.testing.assert_array_equal(
            episode.rewards, (np.linalg.norm(achieved[1:] - goal[:-1], axis=-1) <= SUCCESS_RADIUS).astype(float))
        np.testing.assert_array_equal(episode.infos["success"][1:], episode.rewards > 0)
        np.testing.assert_allclose(episode.infos["goal"], goal)
        assert not episode.terminations.any() and episode.truncations[-1]
        raw_ones += int(episode.rewards.sum())
        relabelled_ones += int((np.linalg.norm(achieved[1:] - eval_goal, axis=-1) <= SUCCESS_RADIUS).sum())
    assert raw_ones > 0 and relabelled_ones > 0


def test_antmaze_collection_goals_vary_by_episode_on_diverse_maps(minari_path):
    goals = [ep.observations["desired_goal"][0] for ep in load("antmaze-medium-diverse").iterate_episodes()]
    assert len(goals) == 3 and max(np.linalg.norm(g - goals[0]) for g in goals) > 0


@pytest.mark.parametrize("robot, obs_dim, act_dim", [("hopper", 11, 3), ("halfcheetah", 17, 6), ("walker2d", 17, 6)])
def test_d4rl_hdf5_replica(replicas, robot, obs_dim, act_dim):
    with h5py.File(replicas[robot], "r") as file:
        data = {key: file[key][:] for key in file.keys()}
        assert "NOT the real data" in file.attrs["description"]
    assert set(data) == {"observations", "next_observations", "actions", "rewards", "terminals", "timeouts"}
    n = len(data["rewards"])
    assert data["observations"].shape == data["next_observations"].shape == (n, obs_dim)
    assert data["actions"].shape == (n, act_dim) and data["rewards"].shape == data["terminals"].shape == (n,)
    for key in ["observations", "next_observations", "actions", "rewards"]:
        assert data[key].dtype == np.float32
    assert data["terminals"].dtype == data["timeouts"].dtype == bool
    ends = data["terminals"] | data["timeouts"]
    assert not (data["terminals"] & data["timeouts"]).any() and ends[-1] and ends.sum() == 2  # 2 episodes
    np.testing.assert_array_equal(data["next_observations"][:-1][~ends[:-1]], data["observations"][1:][~ends[:-1]])
    lengths = np.diff(np.concatenate([[-1], np.flatnonzero(ends)]))
    np.testing.assert_array_equal(data["timeouts"][ends], lengths == 100)  # time limit = max_steps here
    if robot == "halfcheetah":
        assert not data["terminals"].any()  # halfcheetah never falls
    if robot == "hopper":
        assert data["terminals"].any()  # random actions fall within 100 steps


def test_failed_creation_leaves_no_dataset_folder(minari_path, monkeypatch):
    import minari
    from minari.dataset._storages.hdf5_storage import HDF5Storage
    from minari.storage import get_dataset_path

    from make_demo_dataset import make_replica

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(HDF5Storage, "update_episodes", fail)  # after the folder and metadata are written
    with pytest.raises(RuntimeError, match="disk full"):  # a dataset the session's replicas do not hold
        make_replica("kitchen-partial", episodes=1, max_steps=5)
    assert not os.path.exists(get_dataset_path("D4RL/kitchen/partial-v2"))
    assert "D4RL/kitchen/partial-v2" not in minari.list_local_datasets()


def test_failed_hdf5_leaves_no_file(tmp_path, monkeypatch):
    import make_demo_dataset

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(h5py.File, "create_dataset", fail)
    path = tmp_path / "hopper.hdf5"
    with pytest.raises(RuntimeError):
        make_demo_dataset.make_d4rl_hdf5("hopper", str(path), episodes=1, max_steps=5)
    assert os.listdir(tmp_path) == []


def test_cli_parses_replica_and_hdf5_kinds():
    import tyro

    from make_demo_dataset import Args

    args = tyro.cli(Args, args=["kitchen-complete", "--episodes", "2", "--max-steps", "30"])
    assert (args.kind, args.episodes, args.max_steps) == ("kitchen-complete", 2, 30)
    args = tyro.cli(Args, args=["hopper", "--path", "hopper-replica.hdf5"])
    assert (args.kind, args.path) == ("hopper", "hopper-replica.hdf5")
    with pytest.raises(SystemExit):
        tyro.cli(Args, args=["kitchen-everything"])


def test_cli_writes_an_hdf5_file(tmp_path):
    path = tmp_path / "walker.hdf5"
    command = [sys.executable, os.path.join(ROOT, "make_demo_dataset.py"), "walker2d", "--path", str(path),
               "--episodes", "1", "--max-steps", "20"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with h5py.File(path, "r") as file:
        assert file["observations"].shape[1] == 17 and len(file["rewards"]) <= 20
