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

Structural replicas of the paper's Minari datasets (`make_replica`, ids in REPLICA_IDS): a few
random-action episodes written under the REAL dataset id, with the environment id, kwargs, time
limit and evaluation environment Minari's generation scripts used
(github.com/Farama-Foundation/minari-dataset-generation-scripts), the same spaces, reward /
termination / truncation semantics and reference scores. They are NOT the real data: use them to
test loading, preprocessing and evaluation code offline. Marked by algorithm_name "replica/...".

  kitchen-{complete,partial,mixed}   D4RL/kitchen/*-v2   FrankaKitchen-v1
  pen-{human,cloned}                 D4RL/pen/*-v2       AdroitHandPen-v1
  antmaze-{umaze,umaze-diverse,medium-play,medium-diverse,large-play,large-diverse}
                                     D4RL/antmaze/*-v1   AntMaze_*-v4 (+ eval env with one r and one g cell)

    python make_demo_dataset.py kitchen-complete --episodes 3 --max-steps 50
    python make_demo_dataset.py antmaze-umaze    # -> D4RL/antmaze/umaze-v1

D4RL-format HDF5 replicas for locomotion (`make_d4rl_hdf5`; Minari holds no D4RL -v2 locomotion
data): random actions on the Gymnasium -v4 env, keys observations, next_observations, actions,
rewards (float32), terminals (falls) and timeouts (the time limit, 1000 unless --max-steps) (bool).

    python make_demo_dataset.py hopper --path hopper-replica.hdf5 --episodes 3

Datasets go to $MINARI_DATASETS_PATH (default ~/.minari/datasets), where `minari.load_dataset`
and the edp_*.py scripts find them. Nothing is deleted before its replacement exists: a dataset is
written in a temporary folder and swapped in at the end; replacing an existing one (or an HDF5 file)
needs --overwrite, and one this file did not make is never replaced.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional

import gymnasium as gym
import numpy as np
import tyro

from errors import UsageError

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
def stack(items: list):
    """Stack a list of (possibly nested dict) observations into arrays with a leading time axis."""
    if isinstance(items[0], dict):
        return {key: stack([item[key] for item in items]) for key in items[0]}
    return np.stack(items)


def run_episode(env: gym.Env, act, seed: int, options: Optional[dict] = None, max_steps: Optional[int] = None,
                after_reset: Optional[Callable] = None, record_info: Optional[Callable] = None) -> dict:
    """One episode as Minari episode-buffer fields (observations have T + 1 entries).

    max_steps cuts the episode there as a time limit would (last truncation True unless it terminated);
    after_reset(env) may change the reset state and returns the new first observation;
    record_info(env, observation, info) returns the step's stored infos (T + 1 entries, reset first).
    """
    observation, info = env.reset(seed=seed, options=options)
    if after_reset is not None:
        observation = after_reset(env)
    observations, actions, rewards, terminations, truncations = [observation], [], [], [], []
    infos = [record_info(env, observation, info)] if record_info else None
    while True:
        action = act(observation)
        observation, reward, terminated, truncated, info = env.step(action)
        observations.append(observation)
        actions.append(action)
        rewards.append(reward)
        terminations.append(terminated)
        truncations.append(truncated or (not terminated and len(actions) == max_steps))
        if infos is not None:
            infos.append(record_info(env, observation, info))
        if terminations[-1] or truncations[-1]:
            break
    return dict(
        observations=stack(observations),
        actions=np.stack(actions),
        rewards=np.asarray(rewards, np.float64),
        terminations=np.asarray(terminations),
        truncations=np.asarray(truncations),
        **({"infos": stack(infos)} if infos is not None else {}),
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


AUTHOR = "EDP reference implementation (make_demo_dataset.py)"  # marks the datasets this file wrote


class Refused(UsageError):
    """Bad input, or a file this script did not make in the way: one line, exit code 2, nothing touched."""


def datasets_root(writable: bool = True) -> str:
    """The Minari datasets folder ($MINARI_DATASETS_PATH, else ~/.minari/datasets), made if need be (Minari makes it at
    every look-up, with a traceback when it cannot) and, if asked, writable; one line (Refused) when it is not."""
    root = os.environ.get("MINARI_DATASETS_PATH") or os.path.join(os.path.expanduser("~"), ".minari", "datasets")
    where = "MINARI_DATASETS_PATH" if os.environ.get("MINARI_DATASETS_PATH") else "Minari's default folder"
    if os.path.exists(root) and not os.path.isdir(root):
        raise Refused(f"the Minari datasets folder {root} ({where}) is a file, not a folder")
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as error:
        raise Refused(f"the Minari datasets folder {root} ({where}) cannot be made ({error.strerror or error}); set"
                      " MINARI_DATASETS_PATH to a folder that exists or can be made") from None
    try:
        if writable:
            tempfile.TemporaryFile(dir=root).close()
    except OSError as error:
        raise Refused(f"cannot write to the Minari datasets folder {root} ({where}: {error.strerror or error}); set"
                      " MINARI_DATASETS_PATH to a writable folder") from None
    return root


def _exists(dataset_id: str) -> bool:
    """Whether a local dataset of this id exists (one this file made). A dataset it did not make (a real download
    under the same id) is never touched: Refused."""
    import minari
    from minari.storage import get_dataset_path

    datasets_root()
    path = get_dataset_path(dataset_id)
    if not os.path.exists(path):
        return False
    try:
        author = minari.load_dataset(dataset_id).storage.metadata.get("author")  # Minari keeps a set of names
    except Exception:  # unreadable: not provably ours either
        author = None
    if author not in (AUTHOR, {AUTHOR}, [AUTHOR]):
        raise Refused(f"{path} holds a dataset that make_demo_dataset.py did not make (a real download?); it is left"
                      " as it is. Point MINARI_DATASETS_PATH at a folder of its own for replicas")
    return True


def swap_in(new: str, target: str):
    """Put the folder `new` at `target`. An existing `target` is renamed aside first and deleted only once `new` is
    in place (a failed rename puts it back); SIGINT and SIGTERM wait for the two renames."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    aside = None
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        if os.path.lexists(target):
            aside = tempfile.mkdtemp(prefix=".replaced-", dir=os.path.dirname(target))
            os.rename(target, os.path.join(aside, "dataset"))
        try:
            os.rename(new, target)
        except BaseException:
            if aside is not None:
                os.rename(os.path.join(aside, "dataset"), target)
            raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def write_dataset(dataset_id: str, buffers: list, env: gym.Env, eval_env, **metadata) -> None:
    """minari.create_dataset_from_buffers into a temporary folder beside the datasets, then swapped in: a creation
    that fails or is stopped half-way leaves the existing dataset (if any) as it was, and no partial one."""
    import minari
    from minari.storage import get_dataset_path

    root = datasets_root()
    staging = tempfile.mkdtemp(prefix=".make_demo_dataset-", dir=root)
    previous = os.environ.get("MINARI_DATASETS_PATH")
    try:
        os.environ["MINARI_DATASETS_PATH"] = staging
        try:
            with warnings.catch_warnings():  # the real kitchen and pen datasets have no eval env either
                warnings.filterwarnings("ignore", message="`eval_env` is set to None")
                minari.create_dataset_from_buffers(
                    dataset_id=dataset_id, buffer=buffers, env=env, eval_env=eval_env,
                    author=AUTHOR, author_email="none",
                    code_permalink="make_demo_dataset.py", **metadata)
        finally:
            if previous is None:
                del os.environ["MINARI_DATASETS_PATH"]
            else:
                os.environ["MINARI_DATASETS_PATH"] = previous
        namespace = os.path.dirname(dataset_id)
        if namespace:  # Minari's namespace_metadata.json, where the real folder has none yet
            made = os.path.join(staging, namespace, "namespace_metadata.json")
            kept = os.path.join(root, namespace, "namespace_metadata.json")
            if os.path.exists(made) and not os.path.exists(kept):
                os.makedirs(os.path.dirname(kept), exist_ok=True)
                shutil.copy(made, kept)
        swap_in(os.path.join(staging, dataset_id), str(get_dataset_path(dataset_id)))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def make_dataset(kind: str, episodes: int, seed: int = 0, overwrite: bool = True) -> str:
    """Collect `episodes` episodes, write them as a Minari dataset and return its id."""
    from minari.data_collector import EpisodeBuffer

    dataset_id = DATASET_IDS[kind]
    if _exists(dataset_id) and not overwrite:  # kept as it is
        return dataset_id
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
    write_dataset(dataset_id, buffers, env, env.spec, algorithm_name=f"scripted-{kind}-mixed",
                  ref_min_score=random_score, ref_max_score=expert_score, description=__doc__.split("\n\n")[1])
    return dataset_id


def make_on_first_use(dataset_id: str) -> bool:
    """An offline demo dataset (an id of DATASET_IDS) made where it is missing, with one line saying so; runs that
    start together make it once (a lock in the datasets folder). The edp_*.py scripts call this instead of a
    download: the demos exist nowhere to download."""
    import fcntl

    from minari.storage import get_dataset_path

    kind = next(kind for kind, name in DATASET_IDS.items() if name == dataset_id)
    root = datasets_root()
    with open(os.path.join(root, ".make_demo_dataset.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.isdir(os.path.join(get_dataset_path(dataset_id), "data")):
            print(f"making the offline demo dataset {dataset_id} in {root} (first use, a few seconds; the same as"
                  f" `python make_demo_dataset.py {kind}`)", flush=True)
            make_dataset(kind, 60)
    return True


# ---- structural replicas of the paper's Minari datasets -------------------------------------------
# Constants from github.com/Farama-Foundation/minari-dataset-generation-scripts ("scripts" below).
R, G = "r", "g"  # gymnasium_robotics.envs.maze.maps: reset and goal cells

# scripts/D4RL/kitchen/create_franka_dataset.py: GOAL_TASKS and max_episode_steps (450 partial/mixed, 280 complete)
KITCHEN = {
    "complete": (["microwave", "kettle", "light switch", "slide cabinet"], 280),
    "partial": (["microwave", "kettle", "light switch", "slide cabinet"], 450),
    "mixed": (["microwave", "kettle", "bottom burner", "light switch"], 450),
}
# scripts/D4RL/antmaze/create_antmaze_dataset.py (v2 ids) = scripts/antmaze/create_antmaze_dataset.py (v1 ids):
# DATASET_ID_TO_ENV_ID, the umaze collection map, and EVAL_ENV_MAPS (one r and one g cell each)
ANTMAZE = {
    "umaze": ("AntMaze_UMaze-v4", "umaze"),
    "umaze-diverse": ("AntMaze_UMaze-v4", "umaze"),
    "medium-play": ("AntMaze_Medium-v4", "medium"),
    "medium-diverse": ("AntMaze_Medium_Diverse_GR-v4", "medium"),
    "large-play": ("AntMaze_Large-v4", "large"),
    "large-diverse": ("AntMaze_Large_Diverse_GR-v4", "large"),
}
ANTMAZE_UMAZE_COLLECTION_MAP = [[1, 1, 1, 1, 1], [1, G, 0, 0, 1], [1, 1, 1, 0, 1], [1, R, 0, 0, 1], [1, 1, 1, 1, 1]]
ANTMAZE_EVAL_MAPS = {
    "umaze": [[1, 1, 1, 1, 1], [1, 0, 0, R, 1], [1, 0, 1, 1, 1], [1, 0, 0, G, 1], [1, 1, 1, 1, 1]],
    "medium": [[1, 1, 1, 1, 1, 1, 1, 1], [1, R, 0, 1, 1, 0, 0, 1], [1, 0, 0, 1, 0, 0, 0, 1], [1, 1, 0, 0, 0, 1, 1, 1],
               [1, 0, 0, 1, 0, 0, 0, 1], [1, 0, 1, 0, 0, 1, 0, 1], [1, 0, 0, 0, 1, 0, G, 1], [1, 1, 1, 1, 1, 1, 1, 1]],
    "large": [[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], [1, R, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1],
              [1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1], [1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1],
              [1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1], [1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1],
              [1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1], [1, 0, 0, 1, 0, 0, 0, 1, 0, G, 0, 1],
              [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]],
}
# Reference returns: D4RL's (d4rl/infos.py), read from tasks.D4RL_REFERENCE, where the scripts read them (one place).
# scripts/D4RL/adroit/recreate_adroit_pen.py and the kitchen script pass none, the AntMaze script measures them
# (random policy / its expert on the eval env): see the report.
ANTMAZE_SUCCESS_RADIUS = 0.45  # gymnasium_robotics/envs/maze/maze_v4.py compute_reward (D4RL used 0.5)


@dataclass(frozen=True)
class Replica:
    """What a replica copies from the real dataset: its id, gym.make arguments and evaluation map."""

    family: str  # kitchen, pen or antmaze
    dataset_id: str
    env_id: str
    kwargs: dict = field(default_factory=dict)  # gym.make kwargs the generation script passed
    max_episode_steps: Optional[int] = None  # None: the registered time limit (AntMaze: 700 umaze, else 1000)
    eval_maze: Optional[str] = None  # AntMaze: key of ANTMAZE_EVAL_MAPS

    def make_env(self) -> gym.Env:
        import gymnasium_robotics

        gym.register_envs(gymnasium_robotics)
        return gym.make(self.env_id, max_episode_steps=self.max_episode_steps, **self.kwargs)

    def eval_env_spec(self, env: gym.Env):
        """AntMaze: the collection spec with the fixed evaluation map; None (= the collection env) otherwise."""
        if self.eval_maze is None:
            return None
        spec = copy.deepcopy(env.spec)
        spec.kwargs["maze_map"] = ANTMAZE_EVAL_MAPS[self.eval_maze]
        return spec


REPLICAS = {
    **{f"kitchen-{name}": Replica("kitchen", f"D4RL/kitchen/{name}-v2", "FrankaKitchen-v1",
                                  dict(remove_task_when_completed=False, terminate_on_tasks_completed=False,
                                       tasks_to_complete=tasks), steps)
       for name, (tasks, steps) in KITCHEN.items()},
    # scripts/D4RL/adroit/recreate_adroit_pen.py: gym.make('AdroitHandPen-v1', max_episode_steps=200)
    **{f"pen-{name}": Replica("pen", f"D4RL/pen/{name}-v2", "AdroitHandPen-v1", {}, 200)
       for name in ["human", "cloned"]},
    # AntMaze script: gym.make(env_id, [maze_map=...,] continuing_task=True, reset_target=False), registered limit
    **{f"antmaze-{name}": Replica("antmaze", f"D4RL/antmaze/{name}-v1", env_id,
                                  dict(**({"maze_map": ANTMAZE_UMAZE_COLLECTION_MAP} if name == "umaze" else {}),
                                       continuing_task=True, reset_target=False), None, eval_maze)
       for name, (env_id, eval_maze) in ANTMAZE.items()},
}
REPLICA_IDS = {task: replica.dataset_id for task, replica in REPLICAS.items()}


def antmaze_goal_cells(maze) -> list:
    """The (row, col) cells an AntMaze env draws goals from."""
    return [tuple(int(v) for v in maze.cell_xy_to_rowcol(xy)) for xy in maze.unique_goal_locations]


def _first_seed(env: gym.Env, start: int, options: dict, accept: Callable[[dict], bool]) -> int:
    """The first reset seed from `start` whose (noisy) reset observation passes `accept`."""
    for seed in range(start, start + 5000):
        if accept(env.reset(seed=seed, options=options)[0]):
            return seed
    raise RuntimeError("no accepted AntMaze reset found")


def replica_episode(replica: Replica, env: gym.Env, rng: np.random.Generator, episode: int, seed: int) -> dict:
    """Reset arguments (seed, options, after_reset, record_info) of a replica's episode `episode`.

    Episodes cycle through three starts so that rewards are not all zero:
    kitchen: plain reset / one / two target tasks already done (set in the simulator after reset);
    antmaze: at the collection goal / at the evaluation goal cell centre / where the env resets.
    AntMaze collection goals are drawn, as in the real data, per episode and never in the evaluation
    goal cell: rewards and desired_goal are relative to them, not to the evaluation goal.
    """
    start = seed * 1_000_000 + episode * 10_000
    kind = episode % 3
    if replica.family == "pen":  # scripts/D4RL/adroit/utils.py AdroitStepDataCallback: infos {success}
        return dict(seed=start, record_info=lambda env, obs, info: {"success": bool(info.get("success", False))})
    if replica.family == "kitchen":
        from gymnasium_robotics.envs.franka_kitchen.kitchen_env import OBS_ELEMENT_GOALS, OBS_ELEMENT_INDICES

        tasks = [task for task in replica.kwargs["tasks_to_complete"] if task != "kettle"]
        done = list(rng.choice(tasks, size=kind, replace=False))

        def after_reset(env):
            kitchen = env.unwrapped
            qpos = kitchen.data.qpos.copy()
            for task in done:
                qpos[OBS_ELEMENT_INDICES[task]] = OBS_ELEMENT_GOALS[task]
            kitchen.robot_env.set_state(qpos, kitchen.data.qvel.copy())
            return kitchen._get_obs(kitchen.robot_env._get_obs())

        # scripts/D4RL/kitchen/create_franka_dataset.py KitchenStepDataCallback: infos {ctrl}
        return dict(seed=start, after_reset=after_reset if done else None,
                    record_info=lambda env, obs, info: {"ctrl": env.unwrapped.data.ctrl.copy()})
    maze = env.unwrapped.maze
    eval_cell = tuple(int(v) for v in np.argwhere(np.array(ANTMAZE_EVAL_MAPS[replica.eval_maze], dtype=object) == G)[0])
    cells = [cell for cell in antmaze_goal_cells(maze) if cell != eval_cell]
    goal_cell = cells[rng.integers(len(cells))]
    options = {"goal_cell": np.array(goal_cell)}
    near = ANTMAZE_SUCCESS_RADIUS / 2  # start well inside the success radius, so random steps stay there a while
    if kind == 0:
        options["reset_cell"] = np.array(goal_cell)
        accept = lambda obs: np.linalg.norm(obs["achieved_goal"] - obs["desired_goal"]) < near  # noqa: E731
    elif kind == 1:
        options["reset_cell"] = np.array(eval_cell)
        centre = maze.cell_rowcol_to_xy(np.array(eval_cell))
        accept = lambda obs: np.linalg.norm(obs["achieved_goal"] - centre) < near  # noqa: E731
    else:
        accept = lambda obs: True  # noqa: E731

    def record_info(env, obs, info):  # scripts AntMazeStepDataCallback: infos {success, qpos, qvel, goal}
        return {"success": bool(info["success"]),
                "qpos": np.concatenate([obs["achieved_goal"], obs["observation"][:13]]),
                "qvel": obs["observation"][13:], "goal": obs["desired_goal"]}

    return dict(seed=_first_seed(env, start, options, accept), options=options, record_info=record_info)


def make_replica(task: str, episodes: int = 3, seed: int = 0, overwrite: bool = True,
                 max_steps: Optional[int] = None) -> str:
    """Write a small structural replica of a paper task's Minari dataset under its real id; return the id.

    Random actions, `episodes` episodes, each cut at `max_steps` (default: the env's own time limit).
    """
    from minari.data_collector import EpisodeBuffer

    replica = REPLICAS[task]
    if _exists(replica.dataset_id) and not overwrite:  # kept as it is
        return replica.dataset_id
    env = replica.make_env()
    env.action_space.seed(seed)
    rng = np.random.default_rng(seed)
    buffers = []
    for i in range(episodes):
        setup = replica_episode(replica, env, rng, i, seed)
        data = run_episode(env, lambda obs: env.action_space.sample(), max_steps=max_steps, **setup)
        buffers.append(EpisodeBuffer(id=i, seed=setup["seed"], options=setup.get("options"), **data))
    from tasks import D4RL_REFERENCE  # kitchen, pen and antmaze: the families' keys there

    low, high = D4RL_REFERENCE[replica.family]
    write_dataset(
        replica.dataset_id, buffers, env, replica.eval_env_spec(env),
        algorithm_name=f"replica/random-actions ({replica.family})",
        ref_min_score=low, ref_max_score=high,
        description=f"Small structural replica of the Minari dataset {replica.dataset_id}, NOT the real data: "
                    f"{episodes} random-action episodes (some started with a task done or at a goal) in the "
                    "environment, kwargs, time limit and evaluation environment of Minari's generation script, "
                    "for offline tests. Written by make_demo_dataset.py.")
    return replica.dataset_id


# ---- D4RL-format HDF5 replicas (locomotion) --------------------------------------------------------
# Gymnasium -v4 (mujoco bindings) is the closest to the mujoco-py -v2 envs D4RL's locomotion data came from
LOCOMOTION = {"halfcheetah": "HalfCheetah-v4", "hopper": "Hopper-v4", "walker2d": "Walker2d-v4"}


def make_d4rl_hdf5(robot: str, path: str, episodes: int = 3, seed: int = 0, max_steps: int = 1000) -> str:
    """Write a D4RL-format HDF5 file of random-action episodes on the Gymnasium -v4 env; return its path.

    D4RL semantics: terminals mark falls (the env's termination), timeouts the time limit (max_steps,
    1000 as D4RL); next_observations as in the D4RL -v2 files. Written atomically.
    """
    import h5py

    env = gym.make(LOCOMOTION[robot])
    env.action_space.seed(seed)
    act = lambda obs: env.action_space.sample()  # noqa: E731
    data = [run_episode(env, act, seed + i, max_steps=max_steps) for i in range(episodes)]
    arrays = {
        "observations": np.concatenate([d["observations"][:-1] for d in data]).astype(np.float32),
        "next_observations": np.concatenate([d["observations"][1:] for d in data]).astype(np.float32),
        "actions": np.concatenate([d["actions"] for d in data]).astype(np.float32),
        "rewards": np.concatenate([d["rewards"] for d in data]).astype(np.float32),
        "terminals": np.concatenate([d["terminations"] for d in data]).astype(bool),
        "timeouts": np.concatenate([d["truncations"] for d in data]).astype(bool),
    }
    temporary = f"{path}.partial"
    try:
        with h5py.File(temporary, "w") as file:
            for key, value in arrays.items():
                file.create_dataset(key, data=value, compression="gzip")
            file.attrs["description"] = (f"Small structural replica of D4RL {robot} data, NOT the real data: "
                                         f"random actions on {LOCOMOTION[robot]} (make_demo_dataset.py)")
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


KINDS = (*DATASET_IDS, *REPLICAS, *LOCOMOTION)


@dataclass
class Args:
    kind: tyro.conf.Positional[Literal[KINDS]]  # type: ignore[valid-type]
    """which dataset to make: a demo kind, a paper task's Minari replica, or a locomotion robot (HDF5)"""
    episodes: Optional[int] = None
    """number of episodes to collect (default 60 for demo kinds, 3 for replicas and HDF5 files)"""
    seed: int = 0
    """seed of the environment and the behaviour policy"""
    max_steps: Optional[int] = None
    """replicas and HDF5: cut each episode at this many steps (default: the env's limit, 1000 for HDF5)"""
    path: Optional[str] = None
    """HDF5 kinds: output file (default <robot>-replica.hdf5)"""
    overwrite: bool = False
    """replace an existing dataset of this kind (Minari) or file at --path (HDF5); without it, an existing one is
    refused. A dataset this file did not make is never replaced"""


def main(args: Args) -> str:
    """Every check first (one line, exit 2), then the collection; the dataset replaces an existing one only at the
    end, and only with --overwrite."""
    if (args.episodes is not None and args.episodes < 1) or (args.max_steps is not None and args.max_steps < 1):
        raise Refused(f"--episodes and --max-steps must be at least 1 (got {args.episodes}, {args.max_steps})")
    if args.kind in LOCOMOTION:
        path = args.path or f"{args.kind}-replica.hdf5"
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise Refused(f"--path {path} is a folder; give a file name (e.g. {os.path.join(path, args.kind)}.hdf5)")
        if os.path.lexists(path) and not args.overwrite:
            raise Refused(f"{path} exists; pass --overwrite to replace it, or choose another --path")
        if not os.path.isdir(folder):
            raise Refused(f"--path {path}: the folder {folder} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise Refused(f"--path {path}: the folder {folder} cannot be written")
        path = make_d4rl_hdf5(args.kind, path, args.episodes or 3, args.seed, args.max_steps or 1000)
        print(f"wrote D4RL-format HDF5 {path}")
        return path
    if args.path is not None:
        raise Refused(f"--path is for the HDF5 kinds ({', '.join(LOCOMOTION)}); {args.kind} is a Minari dataset, written"
                      " to $MINARI_DATASETS_PATH")
    dataset_id = REPLICAS[args.kind].dataset_id if args.kind in REPLICAS else DATASET_IDS[args.kind]
    if _exists(dataset_id) and not args.overwrite:
        raise Refused(f"the dataset {dataset_id} exists in {datasets_root()}; pass --overwrite to replace it")
    if args.kind in REPLICAS:
        dataset_id = make_replica(args.kind, args.episodes or 3, args.seed, overwrite=True, max_steps=args.max_steps)
    else:
        dataset_id = make_dataset(args.kind, args.episodes or 60, args.seed, overwrite=True)
    print(f"wrote Minari dataset {dataset_id} to {datasets_root()}")
    return dataset_id


def stop_by_exception(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, stop_by_exception)  # a SIGTERM unwinds as Ctrl-C does: temporary files removed
    try:
        main(tyro.cli(Args))
    except Refused as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("stopped; nothing was replaced (an existing dataset is as it was)", file=sys.stderr)
        sys.exit(130)
    sys.exit(0)
