"""Make small, real Minari datasets locally in seconds, for the offline quick-start and the tests.

Minari cannot download on a machine without internet, so this writes datasets with Minari's own
API from real Gymnasium environments and honest reference scores (both measured here):

  pendulum    Pendulum-v1 (flat observations). Mixed quality: a scripted energy-pumping swing-up
              controller with noise, the same controller taking random actions half the time, and
              uniformly random actions, one third of the episodes each.
              ref_min = mean return of random actions, ref_max = mean return of the controller.
  pointmaze   PointMaze_UMaze-v3 (dict observations, like AntMaze): a go-to-goal controller that
              ignores walls, with noise, and random actions.
  modes       OneStepModes-v0, defined below: a one-step task whose data holds four action modes
              with different rewards, the best mode the rarest. The right answer is known.

    python make_demo_dataset.py pendulum            # -> Minari id edp/pendulum-mixed-v0
    python make_demo_dataset.py modes --episodes 2000

Datasets go to $MINARI_DATASETS_PATH (default ~/.minari/datasets), where `minari.load_dataset`
and the edp_*.py scripts find them.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import numpy as np
import tyro

DATASET_IDS = {"pendulum": "edp/pendulum-mixed-v0", "pointmaze": "edp/pointmaze-umaze-v0", "modes": "edp/modes-v0"}


# ---- the one-step multi-mode task ----------------------------------------------------------------
class OneStepModesEnv(gym.Env):
    """One step per episode: pick a 2-D action; the reward depends on the nearest of four modes.

    Mode rewards are 0, 1, 2 and 4 (corners in that order); the behaviour data chooses them
    with probabilities 0.4, 0.3, 0.2, 0.1, so the best mode is the rarest in the data.
    """

    MODES = np.array([[0.6, 0.6], [-0.6, 0.6], [-0.6, -0.6], [0.6, -0.6]], dtype=np.float32)
    MODE_REWARDS = np.array([0.0, 1.0, 2.0, 4.0], dtype=np.float32)
    DATA_PROPORTIONS = np.array([0.4, 0.3, 0.2, 0.1])

    def __init__(self):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), {}

    @classmethod
    def nearest_mode(cls, action: np.ndarray) -> np.ndarray:
        return np.linalg.norm(np.asarray(action)[..., None, :] - cls.MODES, axis=-1).argmin(-1)

    def step(self, action):
        mode = int(self.nearest_mode(action))
        return np.zeros(2, np.float32), float(self.MODE_REWARDS[mode]), True, False, {"mode": mode}


gym.register("OneStepModes-v0", entry_point="make_demo_dataset:OneStepModesEnv")


# ---- scripted controllers -----------------------------------------------------------------------
def pendulum_controller(obs: np.ndarray) -> np.ndarray:
    """Energy pumping to the upright energy (15 = 3g/2l), then a PD controller near the top."""
    cos, sin, velocity = obs
    angle = np.arctan2(sin, cos)
    energy = 0.5 * velocity**2 + 15.0 * cos
    if cos > 0.9:
        torque = -8.0 * angle - 1.5 * velocity
    else:
        torque = 2.0 * np.sign((velocity if abs(velocity) > 1e-3 else 1.0) * (16.0 - energy))
    return np.clip(np.array([torque], np.float32), -2.0, 2.0)


def pointmaze_controller(obs: dict) -> np.ndarray:
    direction = obs["desired_goal"] - obs["achieved_goal"]
    return np.clip(2.0 * direction - 0.5 * obs["observation"][2:], -1.0, 1.0).astype(np.float32)


# ---- collection -----------------------------------------------------------------------------------
def run_episode(env: gym.Env, act, seed: int) -> dict:
    observation, _ = env.reset(seed=seed)
    observations, actions, rewards, terminations, truncations = [observation], [], [], [], []
    while True:
        action = act(observation)
        observation, reward, terminated, truncated, _ = env.step(action)
        observations.append(observation)
        actions.append(action)
        rewards.append(reward)
        terminations.append(terminated)
        truncations.append(truncated)
        if terminated or truncated:
            break
    if isinstance(observations[0], dict):
        observations = {key: np.stack([o[key] for o in observations]) for key in observations[0]}
    else:
        observations = np.stack(observations)
    return dict(
        observations=observations,
        actions=np.stack(actions),
        rewards=np.asarray(rewards, np.float64),
        terminations=np.asarray(terminations),
        truncations=np.asarray(truncations),
    )


def behaviour(kind: str, env: gym.Env, rng: np.random.Generator, episode: int):
    """The behaviour policy of one episode of the mixed dataset."""
    random_action = lambda obs: env.action_space.sample()  # noqa: E731
    if kind == "modes":
        def act(obs):
            mode = rng.choice(4, p=OneStepModesEnv.DATA_PROPORTIONS)
            return np.clip(OneStepModesEnv.MODES[mode] + 0.05 * rng.standard_normal(2), -1, 1).astype(np.float32)
        return act
    controller = pendulum_controller if kind == "pendulum" else pointmaze_controller
    low, high = env.action_space.low, env.action_space.high
    quality = episode % 3
    if quality == 0:  # controller plus Gaussian noise
        return lambda obs: np.clip(controller(obs) + 0.4 * (high - low) / 2 * rng.standard_normal(low.shape), low, high).astype(np.float32)
    if quality == 1:  # controller, random half the time
        return lambda obs: controller(obs) if rng.random() < 0.5 else random_action(obs)
    return random_action


def make_env(kind: str) -> gym.Env:
    if kind == "pendulum":
        return gym.make("Pendulum-v1")
    if kind == "pointmaze":
        import gymnasium_robotics  # noqa: F401  (registers PointMaze)

        gym.register_envs(gymnasium_robotics)
        return gym.make("PointMaze_UMaze-v3", continuing_task=False, max_episode_steps=150)
    return gym.make("OneStepModes-v0")


def reference_score(kind: str, env: gym.Env, act, episodes: int, seed: int) -> float:
    return float(np.mean([run_episode(env, act, seed + i)["rewards"].sum() for i in range(episodes)]))


def make_dataset(kind: str, episodes: int, seed: int = 0, overwrite: bool = True) -> str:
    """Collect `episodes` episodes, write them as a Minari dataset and return its id."""
    import minari
    from minari.data_collector import EpisodeBuffer

    dataset_id = DATASET_IDS[kind]
    if dataset_id in minari.list_local_datasets():
        if not overwrite:
            return dataset_id
        minari.delete_dataset(dataset_id)
    env = make_env(kind)
    env.action_space.seed(seed)
    rng = np.random.default_rng(seed)
    buffers = [
        EpisodeBuffer(id=i, seed=seed + i, **run_episode(env, behaviour(kind, env, rng, i), seed + i))
        for i in range(episodes)
    ]
    # reference scores measured here: random actions, and the scripted controller / the best mode
    random_score = reference_score(kind, env, lambda obs: env.action_space.sample(), 20, 10_000 + seed)
    if kind == "modes":
        best = OneStepModesEnv.MODES[OneStepModesEnv.MODE_REWARDS.argmax()]
        expert_score = reference_score(kind, env, lambda obs: best, 5, 20_000 + seed)
    else:
        controller = pendulum_controller if kind == "pendulum" else pointmaze_controller
        expert_score = reference_score(kind, env, controller, 20, 20_000 + seed)
    try:
        minari.create_dataset_from_buffers(
            dataset_id=dataset_id,
            buffer=buffers,
            env=env,
            eval_env=env.spec,
            author="EDP reference implementation (make_demo_dataset.py)",
            author_email="none",
            code_permalink="make_demo_dataset.py",
            algorithm_name=f"scripted-{kind}-mixed",
            ref_min_score=random_score,
            ref_max_score=expert_score,
            description=__doc__.split("\n\n")[1],
        )
    except BaseException:
        # a creation that fails half-way leaves a broken folder behind: remove it
        from minari.storage import get_dataset_path

        shutil.rmtree(get_dataset_path(dataset_id), ignore_errors=True)
        raise
    return dataset_id


@dataclass
class Args:
    kind: tyro.conf.Positional[Literal["pendulum", "pointmaze", "modes"]]
    """which dataset to make"""
    episodes: int = 60
    """number of episodes to collect"""
    seed: int = 0
    """seed of the environment and the behaviour policy"""


if __name__ == "__main__":
    args = tyro.cli(Args)
    dataset_id = make_dataset(args.kind, args.episodes, args.seed)
    print(f"wrote Minari dataset {dataset_id} to {os.environ.get('MINARI_DATASETS_PATH', '~/.minari/datasets')}")
    sys.exit(0)
