"""The paper's own tasks on their real environments: observations, evaluation environments and scores."""

import gymnasium as gym
import gymnasium_robotics
import mujoco
import numpy as np
import pytest
import torch

import edp_td3

gym.register_envs(gymnasium_robotics)
KITCHEN_TASKS = ["microwave", "kettle", "light switch", "slide cabinet"]  # kitchen-complete (D4RL)
# minari-dataset-generation-scripts scripts/D4RL/kitchen: how Minari collected the kitchen data
KITCHEN_COLLECTION = dict(remove_task_when_completed=False, terminate_on_tasks_completed=False)


def test_kitchen_observations_flatten_to_the_59_d_state():
    """Regression: FrankaKitchen-v1's goals are dicts of per-task arrays, which crashed flattening."""
    env = gym.make("FrankaKitchen-v1", tasks_to_complete=KITCHEN_TASKS)
    observation, _ = env.reset(seed=0)
    flat = edp_td3.flatten_observation(observation)
    assert flat.shape == (59,) and flat.dtype == np.float32
    np.testing.assert_array_equal(flat, observation["observation"].astype(np.float32))
    vector = gym.vector.SyncVectorEnv([lambda: gym.make("FrankaKitchen-v1", tasks_to_complete=KITCHEN_TASKS)] * 2)
    batch, _ = vector.reset(seed=0)
    assert edp_td3.flatten_observation(batch).shape == (2, 59)
    vector.close()


def test_antmaze_and_other_dicts_flatten_deterministically():
    antmaze = dict(observation=np.arange(27.0), achieved_goal=np.array([5.0, 6.0]), desired_goal=np.array([9.0, 9.0]))
    np.testing.assert_array_equal(edp_td3.flatten_observation(antmaze), np.r_[5.0, 6.0, np.arange(27.0)])  # D4RL's 29
    nested = dict(b=np.array([1.0]), a=dict(d=np.array([2.0, 3.0]), c=np.array([4.0])))
    np.testing.assert_array_equal(edp_td3.flatten_observation(nested), [4.0, 2.0, 3.0, 1.0])  # keys sorted, recursively


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

    make_env = edp_td3.env_maker(kitchen_spec(**KITCHEN_COLLECTION), "kitchen")
    assert make_env().spec.kwargs | edp_td3.D4RL_KITCHEN_EVAL == make_env().spec.kwargs
    statistics = dict(observation_mean=np.zeros(59, np.float32), observation_std=np.ones(59, np.float32),
                      observation_clip=np.inf, action_low=-np.ones(9, np.float32), action_high=np.ones(9, np.float32))
    evaluator = edp_td3.Evaluator(lambda: MicrowaveOpenAtReset(make_env()), 2, 0, statistics, "kitchen",
                                  edp_td3.D4RL_REFERENCE["kitchen"], "cpu")
    result = evaluator(lambda state: torch.zeros(len(state), 9))
    evaluator.close()
    assert result["return"] == 1.0 and result["normalized_score"] == pytest.approx(25.0)


def test_locomotion_files_are_evaluated_on_the_v4_models():
    for robot, env_id in [("hopper", "Hopper-v4"), ("halfcheetah", "HalfCheetah-v4"), ("walker2d", "Walker2d-v4")]:
        assert edp_td3.TASKS[f"{robot}-medium-replay"].env_id == env_id


def test_eval_env_flag_takes_registered_ids_only(tmp_path, capsys):
    assert edp_td3.main(["--env", "hopper-medium", "--dataset-path", str(tmp_path / "x.hdf5"), "--eval-env",
                         "Hopper-v5", "--run-dir", str(tmp_path / "run")]) == 2  # the file is checked first
    with pytest.raises(edp_td3.UsageError, match="did you mean Hopper-v"):
        edp_td3.registered_env_maker("Hoper-v5")
