"""The paper's own tasks on their real environments: observations, evaluation environments and scores."""

import gymnasium as gym
import gymnasium_robotics
import mujoco
import numpy as np
import pytest
import torch

import edp_td3
import tasks
from test_scripts import resolve

gym.register_envs(gymnasium_robotics)
KITCHEN_TASKS = ["microwave", "kettle", "light switch", "slide cabinet"]  # kitchen-complete (D4RL)
# minari-dataset-generation-scripts scripts/D4RL/kitchen: how Minari collected the kitchen data
KITCHEN_COLLECTION = dict(remove_task_when_completed=False, terminate_on_tasks_completed=False)


def test_kitchen_observations_flatten_to_the_59_d_state():
    """Regression: FrankaKitchen-v1's goals are dicts of per-task arrays, which crashed flattening."""
    env = gym.make("FrankaKitchen-v1", tasks_to_complete=KITCHEN_TASKS)
    observation, _ = env.reset(seed=0)
    flat = tasks.flatten_observation(observation)
    assert flat.shape == (59,) and flat.dtype == np.float32
    np.testing.assert_array_equal(flat, observation["observation"].astype(np.float32))
    vector = gym.vector.SyncVectorEnv([lambda: gym.make("FrankaKitchen-v1", tasks_to_complete=KITCHEN_TASKS)] * 2)
    batch, _ = vector.reset(seed=0)
    assert tasks.flatten_observation(batch).shape == (2, 59)
    vector.close()


def test_antmaze_and_other_dicts_flatten_deterministically():
    antmaze = dict(observation=np.arange(27.0), achieved_goal=np.array([5.0, 6.0]), desired_goal=np.array([9.0, 9.0]))
    np.testing.assert_array_equal(tasks.flatten_observation(antmaze), np.r_[5.0, 6.0, np.arange(27.0)])  # D4RL's 29
    nested = dict(b=np.array([1.0]), a=dict(d=np.array([2.0, 3.0]), c=np.array([4.0])))
    np.testing.assert_array_equal(tasks.flatten_observation(nested), [4.0, 2.0, 3.0, 1.0])  # keys sorted, recursively


class MicrowaveOpenAtReset(gym.Wrapper):
    """A scripted rollout: the microwave is opened at reset and stays open for the whole episode."""

    def reset(self, **kwargs):
        observation, info = self.env.reset(**kwargs)
        unwrapped = self.env.unwrapped
        unwrapped.data.qpos[22] = -0.75  # kitchen_env.py OBS_ELEMENT_GOALS["microwave"]
        mujoco.mj_forward(unwrapped.model, unwrapped.data)
        return observation, info


def kitchen_spec(**kwargs):
    return gym.envs.registration.EnvSpec("FrankaKitchen-v1", entry_point=gym.spec("FrankaKitchen-v1").entry_point,
                                         max_episode_steps=40, kwargs=dict(tasks_to_complete=KITCHEN_TASKS, **kwargs))


def test_kitchen_scores_each_task_once_as_d4rl():
    """One task done and held for 40 steps is 1 of 4 tasks: score 25. In the env Minari collected with,
    that task pays on every step (return 40, 'score' 1000); the evaluation env counts it once."""
    collection = MicrowaveOpenAtReset(gym.make(kitchen_spec(**KITCHEN_COLLECTION)))
    collection.reset(seed=0)
    collected_return = sum(collection.step(np.zeros(9, np.float32))[1] for _ in range(40))
    assert collected_return == 40.0  # the training rewards count completed tasks at every step

    make_env = tasks.env_maker(kitchen_spec(**KITCHEN_COLLECTION), "kitchen", None)
    assert make_env().spec.kwargs | tasks.D4RL_KITCHEN_EVAL == make_env().spec.kwargs
    statistics = dict(observation_mean=np.zeros(59, np.float32), observation_std=np.ones(59, np.float32),
                      observation_clip=np.inf, action_low=-np.ones(9, np.float32), action_high=np.ones(9, np.float32))
    from evaluation import Evaluator

    evaluator = Evaluator(lambda: MicrowaveOpenAtReset(make_env()), 2, 0, statistics, "kitchen",
                                  tasks.d4rl_score(tasks.D4RL_REFERENCE["kitchen"]), "cpu")
    result = evaluator(lambda state: torch.zeros(len(state), 9))
    evaluator.close()
    assert result["return"] == 1.0 and result["normalized_score"] == pytest.approx(25.0)


def test_eval_env_flag_picks_the_evaluation_env_and_takes_registered_ids_only(replicas, tmp_path, capsys):
    config = edp_td3.Args(env="hopper-medium", dataset_path=replicas["hopper"])
    assert tasks.load_data(config, tasks.TASKS["hopper-medium"]).make_env().spec.id == "Hopper-v4"
    data = tasks.load_data(edp_td3.Args(env="hopper-medium", dataset_path=replicas["hopper"], eval_env="Hopper-v5"),
                           tasks.TASKS["hopper-medium"])
    assert data.make_env().spec.id == "Hopper-v5" and data.card["eval_env"] == "Hopper-v5"
    assert edp_td3.main(["--env", "hopper-medium", "--dataset-path", replicas["hopper"], "--eval-env", "Hoper-v5",
                         "--run-dir", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "did you mean Hopper-v" in error, error


# -- every task family x every script, end to end on the replicas (conftest.py `replicas`) ---------------
from test_scripts import SCRIPTS, run_and_check  # noqa: E402


D4RL_INFOS = {"hopper": (-20.272305, 3234.3), "pen": (96.262799, 3076.8331017826877)}  # d4rl/infos.py:139, 229; 117, 207


def d4rl_score(robot, episode_return):
    low, high = D4RL_INFOS[robot]  # typed from D4RL, not read from tasks.py (issue 27)
    return 100 * (episode_return - low) / (high - low)


FAMILIES = {  # family: (task, observation dims, check of one evaluation's score against the domain's definition)
    "kitchen": ("kitchen-complete", 59, lambda e: e["normalized_score"] == pytest.approx(25 * e["return"])
                and e["return"] <= 4 and e["episode_length"] <= 280),
    "adroit": ("pen-human", 45, lambda e: e["normalized_score"] == pytest.approx(d4rl_score("pen", e["return"]))
               and e["episode_length"] <= 100),  # D4RL's pen horizon (Minari's data: 200-step episodes), or the drop
    "antmaze": ("antmaze-umaze", 29, lambda e: e["normalized_score"] == pytest.approx(100 * e["success_rate"])
                and e["episode_length"] == 700),
    "locomotion": ("hopper-medium", 11, lambda e: e["normalized_score"] == pytest.approx(d4rl_score("hopper", e["return"]))
                   and e["episode_length"] <= 1000),
}
DOMAIN_PRESETS = {"edp_td3": dict(antmaze=dict(reward_transform="antmaze", max_q_backup=False), kitchen=dict(eta=0.005)),
                  "edp_crr": dict(antmaze=dict(reward_transform="antmaze"), adroit=dict(reward_transform="minmax")),
                  "edp_iql": dict(antmaze=dict(reward_transform="antmaze-iql", expectile=0.9))}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("script", SCRIPTS)
def test_every_task_family_runs_end_to_end_on_its_replica(script, family, replicas, tmp_path):
    task, observation_dim, score_is_defined_right = FAMILIES[family]
    flags = ["--dataset-path", replicas["hopper"]] if family == "locomotion" else []
    result = run_and_check(script, task, tmp_path / "run", 10, 10, *flags)
    config = result["config"]
    assert config["domain"] == family
    for key, value in DOMAIN_PRESETS[script].get(family, {}).items():
        assert config[key] == value, key
    evaluation, = result["evaluations"]
    assert score_is_defined_right(evaluation), evaluation
    checkpoint = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=True)
    assert checkpoint["statistics"]["observation_mean"].shape == (observation_dim,)


def test_antmaze_rewards_are_relabelled_to_the_evaluation_goal(replicas):
    """The replica's collection goals differ from the evaluation goal, as in Minari's data: the training
    rewards must say whether the ant is within reach of the evaluation goal, not of the collection goal."""
    import minari

    data = tasks.load_minari(tasks.TASKS["antmaze-umaze"], edp_td3.Args(env="antmaze-umaze"))
    dataset = minari.load_dataset(replicas["antmaze-umaze"])
    env = gym.make(dataset._eval_env_spec)
    goal = env.unwrapped.maze.unique_goal_locations[0]
    env.close()
    reached = np.concatenate([np.linalg.norm(e.observations["achieved_goal"][1:] - goal, axis=-1) <= 0.5  # D4RL's
                              for e in dataset.iterate_episodes()])
    raw = np.concatenate([e.rewards for e in dataset.iterate_episodes()])
    assert 0 < reached.sum() < len(reached) and (raw != reached).any()  # the test can tell the two apart
    np.testing.assert_array_equal(data.rewards, reached.astype(np.float32))
    np.testing.assert_array_equal(goal, [4.0, -4.0])  # Minari's umaze eval map: goal cell (3, 3)


def test_a_paper_task_reads_the_newest_local_version(replicas):
    """D4RL/antmaze/umaze-v1 is what Minari publishes; a later -v2 held locally is read instead."""
    import shutil

    from minari.storage import get_dataset_path

    assert tasks.newest_local_version("D4RL/antmaze/umaze-v1") == "D4RL/antmaze/umaze-v1"
    shutil.copytree(get_dataset_path("D4RL/antmaze/umaze-v1"), get_dataset_path("D4RL/antmaze/umaze-v2"))
    try:
        assert tasks.newest_local_version("D4RL/antmaze/umaze-v1") == "D4RL/antmaze/umaze-v2"
        data = tasks.load_minari(tasks.TASKS["antmaze-umaze"], edp_td3.Args(env="antmaze-umaze"))
        assert data.card["dataset"]["id"] == "D4RL/antmaze/umaze-v2"
    finally:
        shutil.rmtree(get_dataset_path("D4RL/antmaze/umaze-v2"))


# -- D4RL's horizons and terminals (issue: scores on the paper's scale) -----------------------------------
# max_episode_steps of D4RL's registered envs, typed from D4RL's source (Farama-Foundation/D4RL @ 89141a6)
D4RL_MAX_EPISODE_STEPS = {
    **{f"{robot}-{quality}": 1000 for robot in ("hopper", "halfcheetah", "walker2d")  # d4rl/gym_mujoco/__init__.py:13
       for quality in ("medium", "medium-replay", "medium-expert")},
    "antmaze-umaze": 700, "antmaze-umaze-diverse": 700,  # d4rl/locomotion/__init__.py:325-327, 342-344
    "antmaze-medium-play": 1000, "antmaze-medium-diverse": 1000,  # :359-361, 376-378
    "antmaze-large-play": 1000, "antmaze-large-diverse": 1000,  # :410-412, 393-395
    "pen-human": 100, "pen-cloned": 100,  # d4rl/hand_manipulation_suite/__init__.py:11 MAX_STEPS["pen"]
    "kitchen-complete": 280, "kitchen-partial": 280, "kitchen-mixed": 280,  # d4rl/kitchen/__init__.py:6-8, 19-21, 33-35
}


def test_every_paper_task_has_d4rls_horizon():
    assert {name: task.horizon for name, task in tasks.TASKS.items()} == D4RL_MAX_EPISODE_STEPS


@pytest.mark.parametrize("task", ["pen-human", "kitchen-complete", "antmaze-umaze"])
def test_evaluation_episodes_end_at_d4rls_horizon_and_the_flag_overrides_it(task, replicas):
    own = {"pen-human": 200, "kitchen-complete": 280, "antmaze-umaze": 700}[task]  # Minari's specs
    for flags, steps in [({}, D4RL_MAX_EPISODE_STEPS[task]), (dict(eval_max_steps=0), own), (dict(eval_max_steps=7), 7)]:
        data = tasks.load_data(edp_td3.Args(env=task, **flags), tasks.TASKS[task])
        env = data.make_env()
        env.reset(seed=0)
        length, done = 0, False
        while not done:
            _, _, terminated, truncated, _ = env.step(np.zeros(env.action_space.shape, np.float32))
            length, done = length + 1, terminated or truncated
        env.close()
        assert env.spec.max_episode_steps == steps and length <= steps
        if task == "pen-human":  # the pen never ends early with zero actions: the horizon ends it
            assert length == steps


def test_a_pen_run_records_d4rls_horizon_and_the_task_card(replicas, tmp_path):
    from test_scripts import run_and_check

    result = run_and_check("edp_td3", "pen-human", tmp_path / "run", 5, 5)
    card = result["task"]
    assert card["max_episode_steps"] == 100 and result["evaluations"][0]["episode_length"] <= 100  # or the pen fell
    assert card["dataset"]["id"] == "D4RL/pen/human-v2" and card["dataset"]["replica"] is True
    assert card["eval_env"] == "AdroitHandPen-v1" and card["preset"] == "paper"
    assert "96.262799" in card["score"] and "minmax" in card["reward"] and card["terminals"]


def test_antmaze_goal_transitions_are_terminal_as_in_d4rls_data(replicas):
    """D4RL relabelled AntMaze with terminal = reward (scripts/generation/relabel_antmaze_rewards.py:31, 36)."""
    data = tasks.load_minari(tasks.TASKS["antmaze-umaze"], edp_td3.Args(env="antmaze-umaze"))
    assert 0 < data.rewards.sum() < len(data.rewards)
    np.testing.assert_array_equal(data.dones, data.rewards)
    kept = tasks.load_minari(tasks.TASKS["antmaze-umaze"], edp_td3.Args(env="antmaze-umaze", terminals="dataset"))
    assert kept.dones.sum() == 0 and (kept.rewards == data.rewards).all()  # Minari's: never terminal (continuing_task)


def test_kitchen_demonstrations_end_terminal_as_in_d4rls_data(replicas):
    """D4RL's kitchen data marks each demonstration's last step terminal (generate_kitchen_datasets.py:101)."""
    import minari

    lengths = [len(episode.actions) for episode in minari.load_dataset(replicas["kitchen-complete"]).iterate_episodes()]
    data = tasks.load_minari(tasks.TASKS["kitchen-complete"], edp_td3.Args(env="kitchen-complete"))
    np.testing.assert_array_equal(np.flatnonzero(data.dones), np.cumsum(lengths) - 1)
    kept = tasks.load_minari(tasks.TASKS["kitchen-complete"], edp_td3.Args(env="kitchen-complete", terminals="dataset"))
    assert kept.dones.sum() == 0


@pytest.mark.parametrize("task", ["antmaze-umaze", "pen-human", "kitchen-complete"])
def test_the_replicas_spaces_are_the_evaluation_envs(task, replicas, capsys):
    """Minari's recorded spaces equal the evaluation env's: no space warning on the paper's datasets."""
    config = edp_td3.Args(env=task, device="cpu", normalize_obs="off", action_clip=1.0, reward_transform="none")
    tasks.prepare_data(config, tasks.TASKS[task])
    assert "warning" not in capsys.readouterr().err
