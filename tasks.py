"""The paper's tasks: datasets of its four domains (Minari, or D4RL's own HDF5 files), the rewards, terminals and
horizons D4RL gave them, normalised scores, and the environment each is evaluated in.

Every edp_*.py script reads its data through `prepare_data`, which returns the batches on the device, the
evaluation env and a task card: what was loaded and how it is scored, printed at the start of a run and kept in
summary.json["task"].
"""

from __future__ import annotations

import difflib
import glob
import hashlib
import math
import os
import stat
import sys
from dataclasses import dataclass
from typing import Callable, Optional

import gymnasium as gym
import numpy as np
import torch

from data_checks import LARGEST_VALUE, check_arrays, check_dtype, memory_bytes
from errors import UsageError, one_line

# ==============================================================================================
# The 20 tasks of the paper's Table 2, as D4RL defined them
# ==============================================================================================
@dataclass(frozen=True)
class Task:
    name: str
    domain: str  # locomotion, antmaze, adroit or kitchen
    minari_id: Optional[str]  # None: Minari holds no copy of this D4RL dataset
    env_id: Optional[str] = None  # Gymnasium env on which a D4RL HDF5 file is evaluated
    ref_scores: Optional[tuple] = None  # D4RL (random, expert) returns
    horizon: Optional[int] = None  # D4RL's evaluation time limit, the one its reference returns were measured on


D4RL_REFERENCE = {  # d4rl/infos.py REF_MIN_SCORE / REF_MAX_SCORE
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "antmaze": (0.0, 1.0),
    "pen": (96.262799, 3076.8331),
    "kitchen": (0.0, 4.0),
}
D4RL_HORIZONS = {  # max_episode_steps of D4RL's registered envs
    "locomotion": 1000,  # d4rl/gym_mujoco/__init__.py
    "antmaze-umaze": 700, "antmaze-umaze-diverse": 700,  # d4rl/locomotion/__init__.py
    "antmaze-medium-play": 1000, "antmaze-medium-diverse": 1000, "antmaze-large-play": 1000, "antmaze-large-diverse": 1000,
    "pen": 100,  # d4rl/hand_manipulation_suite/__init__.py MAX_STEPS["pen"] (Minari's pen data: 200-step episodes)
    "kitchen": 280,  # d4rl/kitchen/__init__.py, all three tasks (Minari's partial/mixed specs say 450)
}
TASKS = {}
# D4RL's files come from the -v2 MuJoCo models; -v4 is the closest still registered (-v5 changed the models)
for _robot, _env_id in [("halfcheetah", "HalfCheetah-v4"), ("hopper", "Hopper-v4"), ("walker2d", "Walker2d-v4")]:
    for _quality in ("medium", "medium-replay", "medium-expert"):
        # D4RL's own -v2 file (d4rl_files.py: fetched into D4RL's folder); Minari's mujoco/<robot>/medium-v0 is other
        # data (new, on the v5 envs), read by its own id
        TASKS[f"{_robot}-{_quality}"] = Task(f"{_robot}-{_quality}", "locomotion", None, _env_id,
                                             D4RL_REFERENCE[_robot], D4RL_HORIZONS["locomotion"])
for _maze in ("umaze", "umaze-diverse", "medium-play", "medium-diverse", "large-play", "large-diverse"):
    TASKS[f"antmaze-{_maze}"] = Task(f"antmaze-{_maze}", "antmaze", f"D4RL/antmaze/{_maze}-v1", None,
                                     D4RL_REFERENCE["antmaze"], D4RL_HORIZONS[f"antmaze-{_maze}"])
for _quality in ("human", "cloned"):
    TASKS[f"pen-{_quality}"] = Task(f"pen-{_quality}", "adroit", f"D4RL/pen/{_quality}-v2", None, D4RL_REFERENCE["pen"],
                                    D4RL_HORIZONS["pen"])
for _quality in ("complete", "partial", "mixed"):
    TASKS[f"kitchen-{_quality}"] = Task(f"kitchen-{_quality}", "kitchen", f"D4RL/kitchen/{_quality}-v2", None,
                                        D4RL_REFERENCE["kitchen"], D4RL_HORIZONS["kitchen"])
DOMAINS = ("locomotion", "antmaze", "adroit", "kitchen")

# AntMaze: D4RL relabelled its data's rewards to 1 within 0.5 of the evaluation target and marked the same
# transitions terminal (D4RL scripts/relabel_antmaze_rewards.py); evaluation success is the env's own (0.45)
ANTMAZE_RELABEL_RADIUS = 0.5
ANTMAZE_SUCCESS_RADIUS = 0.45  # gymnasium_robotics maze_v4.py compute_reward and success
# Kitchen evaluation as D4RL's: each task pays once, the episode ends when all four are done (Minari's data was
# collected with both off)
D4RL_KITCHEN_EVAL = dict(remove_task_when_completed=True, terminate_on_tasks_completed=True)
# Adroit pen as D4RL's pen_v0.py step() ends it: the pen (body "Object", observation entries 24:27 in D4RL's and
# Gymnasium-Robotics' layout alike) below z = 0.075 after a step ends the episode, with reward -5 there in both
# envs; AdroitHandPen-v1 subtracts the 5 and goes on (adroit_pen.py: its goal_failed line is commented out)
PEN_DROP_HEIGHT = 0.075
PEN_HEIGHT_INDEX = 26
TERMINAL_RULES = {  # --terminals d4rl, per task, then per domain
    "antmaze": "goal reached: terminal = relabelled reward (D4RL scripts/relabel_antmaze_rewards.py)",
    "kitchen": "last step of each demonstration (D4RL's kitchen data)",
    # D4RL's BC rollouts (half of pen-cloned) ended at a drop with terminal True (hand_dapg_policies.py); Minari
    # replayed the actions and reset at time-outs only, so its episodes go on with the pen on the floor
    "pen-cloned": f"pen dropped: terminal where the pen lies below z = {PEN_DROP_HEIGHT} after the step (D4RL"
                  " pen_v0.py; Minari's replay goes on past a drop, so every step from a dropped pen is terminal)",
    # D4RL's human demonstrations were recorded without the env's done (hand_dapg_demos.py): no terminals
    "pen-human": "the dataset's terminations (none: D4RL's human demonstrations mark none)",
}


def pen_dropped(observations: np.ndarray) -> np.ndarray:
    """D4RL's pen drop (pen_v0.py step()): the pen's height below PEN_DROP_HEIGHT, per observation."""
    return np.asarray(observations)[..., PEN_HEIGHT_INDEX] < PEN_DROP_HEIGHT


class PenDropTermination(gym.Wrapper):
    """Ends an AdroitHandPen episode when the pen falls, as D4RL's pen env did (its reference returns were measured
    so: scripts/reference_scores/adroit_expert.py stops on done). D4RL exempts only steps taken while the env is
    being built (`starting_up`), which never reach this wrapper."""

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        return observation, reward, terminated or bool(pen_dropped(observation)), truncated, info


def terminal_rule(task: Task) -> str:
    return TERMINAL_RULES.get(task.name, TERMINAL_RULES.get(task.domain, "the dataset's terminations"))


def find_task(name: str, dataset_path: Optional[str]) -> Task:
    if name in TASKS:
        return TASKS[name]
    if dataset_path is None and "/" in name:  # any Minari dataset id
        domain = next((d for d, key in [("antmaze", "antmaze"), ("adroit", "pen"), ("kitchen", "kitchen")]
                       if name.startswith(f"D4RL/{key}")), "locomotion")
        return Task(name, domain, name)
    close = difflib.get_close_matches(name, list(TASKS), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known tasks: {', '.join(TASKS)}"
    raise UsageError(f"unknown task {name!r} (give a paper task or a Minari dataset id such as D4RL/pen/human-v2){hint}")


# ==============================================================================================
# Observations and the evaluation env
# ==============================================================================================
def flatten_observation(observation):
    """Dict observations as D4RL's policies saw them: goal envs give [achieved_goal, observation] (AntMaze: D4RL's 29
    dims); Kitchen's per-task goal dicts are left out (achieved_goal repeats positions in its 59-d `observation`,
    desired_goal is constant: D4RL's 60-d state held 30 positions and a constant goal); other dicts: every leaf, sorted."""
    if not isinstance(observation, dict):
        return np.asarray(observation, dtype=np.float32)
    if "observation" in observation and "achieved_goal" in observation:
        goal = observation["achieved_goal"]
        parts = [observation["observation"]] if isinstance(goal, dict) else [goal, observation["observation"]]
        return np.concatenate([np.asarray(part, dtype=np.float32) for part in parts], axis=-1)
    return np.concatenate([flatten_observation(observation[key]) for key in sorted(observation)], axis=-1)


TRUSTED_ENV_MODULES = ("gymnasium", "gymnasium_robotics", "make_demo_dataset")  # the last: this repo's demo task


def env_maker(env: str | gym.envs.registration.EnvSpec, domain: str, max_steps: Optional[int],
              d4rl_termination: bool = True) -> Callable[..., gym.Env]:
    """The evaluation env (a dataset's spec or an --eval-env id), registered envs only: a dataset's metadata names its
    env by entry point, and importing an arbitrary one would run code the user never chose. Episodes end at
    `max_steps` (None: the spec's own limit), and with `d4rl_termination` where D4RL's env ended them (the pen
    dropped). Keywords go to gym.make."""
    if isinstance(env, str) and env not in gym.registry:
        import gymnasium_robotics  # noqa: F401  (registers AntMaze, Adroit and Kitchen)
    spec = gym.registry.get(env) if isinstance(env, str) else env
    if spec is None:
        close = difflib.get_close_matches(env, list(gym.registry), n=3)
        raise UsageError(f"--eval-env {env} is not a registered Gymnasium env" + (f"; did you mean {', '.join(close)}?" if close else ""))
    entry_point = spec.entry_point if isinstance(spec.entry_point, str) else repr(spec.entry_point)
    module = entry_point.split(":")[0].split(".")[0]
    if module not in TRUSTED_ENV_MODULES:
        raise UsageError(f"the evaluation env {spec.id} comes from {entry_point}, outside Gymnasium and"
                         f" Gymnasium-Robotics; refusing to import it (pass --eval-env with a registered id)")
    __import__(module)  # registers its envs
    if getattr(gym.registry.get(spec.id), "entry_point", None) != spec.entry_point:
        raise UsageError(f"the evaluation env {spec.id} ({entry_point}) is not a registered Gymnasium env")
    kwargs = dict(spec.kwargs) | (D4RL_KITCHEN_EVAL if domain == "kitchen" else {})
    steps = max_steps or spec.max_episode_steps
    if steps is not None and not (isinstance(steps, int) and not isinstance(steps, bool) and steps > 0):
        raise UsageError(f"the evaluation env {spec.id} has the time limit {steps!r}: not a number of steps")
    if d4rl_termination and spec.id.startswith("AdroitHandPen"):
        return lambda **extra: PenDropTermination(gym.make(spec.id, max_episode_steps=steps, **kwargs, **extra))
    return lambda **extra: gym.make(spec.id, max_episode_steps=steps, **kwargs, **extra)


def evaluation_end(config, env_id: str) -> str:
    """The task card's words for when an evaluation episode ends."""
    if env_id.startswith("AdroitHandPen") and config.eval_terminations == "d4rl":
        return f"the time limit, or the pen below z = {PEN_DROP_HEIGHT} (D4RL pen_v0.py; AdroitHandPen never ends)"
    return "the time limit, or where the env itself ends the episode"


# ==============================================================================================
# Loading: Minari datasets and D4RL HDF5 files
# ==============================================================================================
@dataclass
class OfflineData:
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    dones: np.ndarray  # terminations only: a time-limit truncation still bootstraps
    episode_returns: np.ndarray
    make_env: Callable[..., gym.Env]  # keyword arguments go to gym.make (render_mode)
    score: Callable[[np.ndarray], np.ndarray]  # episode returns -> normalised scores (x100), or the returns
    card: dict  # what was loaded and how it is scored (the task card; prepare_data completes it)
    spaces: Optional[tuple] = None  # the (observation, action) spaces the dataset records (Minari), or None
    episode_starts: Optional[np.ndarray] = None  # the index of each episode's first transition, increasing


def d4rl_score(ref_scores: Optional[tuple]) -> Callable[[np.ndarray], np.ndarray]:
    """100 (R - R_random) / (R_expert - R_random); the raw return where no reference is known."""
    if ref_scores is None:
        return lambda returns: returns
    low, high = ref_scores
    return lambda returns: 100.0 * (returns - low) / (high - low)


def open_minari(dataset_id: str):
    """The local copy of a Minari dataset, else a download; a damaged copy is one line, not a traceback."""
    import minari
    from minari.storage import get_dataset_path

    path = get_dataset_path(dataset_id)
    local = os.path.isdir(os.path.join(path, "data"))
    if not local:  # the offline demos are made on first use (seconds): they exist nowhere to download
        import make_demo_dataset as demo

        try:
            local = dataset_id in demo.DATASET_IDS.values() and demo.make_on_first_use(dataset_id)
        except (demo.Refused, OSError) as error:
            raise UsageError(f"the demo dataset {dataset_id} could not be made ({one_line(error)})") from None
    for name in ("metadata.json", "main_data.hdf5"):  # a FIFO or device here would block the reader forever
        file = os.path.join(path, "data", name)
        if os.path.lexists(file) and not stat.S_ISREG(os.stat(file).st_mode):
            raise UsageError(f"{file} is not a regular file; remove it and download or make the dataset again")
    try:
        return minari.load_dataset(dataset_id, download=not local)
    except Exception as error:  # no network, no huggingface_hub, an unknown id; no main_data.hdf5, bad metadata.json
        raise UsageError(f"{path} holds a damaged Minari dataset ({one_line(error)}); remove it and download or make it"
                         " again" if local else f"dataset {dataset_id} is not in {path} and could not be downloaded"
                         f" ({type(error).__name__}); run `minari download {dataset_id}` where there is internet and"
                         " copy it there, or set MINARI_DATASETS_PATH") from None


def newest_local_version(dataset_id: str) -> str:
    """A paper task reads the newest version held locally (D4RL/antmaze/umaze-v1, or a later -v2), else the id."""
    from minari.storage import get_dataset_path

    stem = dataset_id.rsplit("-v", 1)[0]
    versions = [int(path.rsplit("-v", 1)[1]) for path in glob.glob(f"{get_dataset_path(stem)}-v*")
                if path.rsplit("-v", 1)[1].isdigit() and os.path.isdir(os.path.join(path, "data"))]
    return f"{stem}-v{max(versions)}" if versions else dataset_id


def antmaze_evaluation_goal(make_env: Callable[[], gym.Env]) -> np.ndarray:
    """The centre of the evaluation maze's one goal cell: D4RL's AntMaze reward is 1 within reach of that goal."""
    env = make_env()
    goals = env.unwrapped.maze.unique_goal_locations
    env.close()
    if len(goals) != 1:
        raise UsageError(f"the AntMaze evaluation env has {len(goals)} goal cells; D4RL's tasks have one")
    return np.asarray(goals[0], dtype=np.float32)


def antmaze_relabel(achieved_goals: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """D4RL's AntMaze reward of each transition of an episode (its T + 1 achieved goals): True where the achieved
    goal after the step, at t + 1, is within ANTMAZE_RELABEL_RADIUS of the evaluation goal (D4RL
    scripts/generation/relabel_antmaze_rewards.py:31, 36)."""
    return np.linalg.norm(achieved_goals[1:] - goal, axis=-1) <= ANTMAZE_RELABEL_RADIUS


def check_episode(episode, source: str):
    """One Minari episode: observations one row longer than actions, rewards and terminations (per episode, not only
    in total: a row short here and a row long there would shift every transition), of real numbers."""
    observations = flatten_observation(episode.observations)
    lengths = dict(actions=len(episode.actions), rewards=len(episode.rewards), terminations=len(episode.terminations))
    if any(length != len(observations) - 1 for length in lengths.values()):
        raise UsageError(f"{source}: episode {episode.id} has {len(observations)} observations and"
                         f" {', '.join(f'{n} {key}' for key, n in lengths.items())}; each needs one row fewer than the"
                         " observations")
    for key, value in (("observations", observations), ("actions", episode.actions), ("rewards", episode.rewards)):
        check_dtype(key, np.asarray(value), f"{source}: episode {episode.id}")


def load_minari(task: Task, config) -> OfflineData:
    import make_demo_dataset  # where Minari keeps datasets, and the demos made on first use

    make_demo_dataset.datasets_root(writable=False)  # a file or an unmakeable folder: one line, not Minari's traceback
    if task.minari_id is None:
        raise UsageError(f"Minari holds no copy of D4RL's {task.name}-v2; download the original HDF5 file (D4RL) and"
                         " pass --dataset-path")
    dataset_id = newest_local_version(task.minari_id) if task.name in TASKS else task.minari_id
    dataset = open_minari(dataset_id)
    if dataset.total_episodes == 0:
        raise UsageError(f"the Minari dataset {dataset_id} holds no episodes")
    spec = getattr(dataset, "_eval_env_spec", None) or dataset.env_spec  # Minari 0.5
    make_env = env_maker(spec, task.domain, eval_horizon(config, task), config.eval_terminations == "d4rl")
    d4rl_terminals = config.terminals == "d4rl" and task.name in TASKS
    # Minari's AntMaze rewards (and desired_goal) follow a goal drawn anew in each collection episode, never the
    # evaluation goal: relabel r_t from achieved_goal at t + 1 against the evaluation goal, as D4RL's data is
    goal = antmaze_evaluation_goal(make_env) if task.domain == "antmaze" else None
    columns = {key: [] for key in ("observations", "actions", "rewards", "next_observations", "dones")}
    try:
        for episode in dataset.iterate_episodes():
            check_episode(episode, dataset_id)
            observations = flatten_observation(episode.observations)
            rewards = episode.rewards if goal is None else antmaze_relabel(episode.observations["achieved_goal"], goal)
            dones = np.asarray(episode.terminations, dtype=bool)
            if d4rl_terminals and task.domain == "antmaze":
                dones = dones | rewards.astype(bool)  # Minari's are all False (continuing_task=True)
            elif d4rl_terminals and task.domain == "kitchen":
                dones = dones | (np.arange(len(dones)) == len(dones) - 1)  # Minari's are all False
            elif d4rl_terminals and task.name == "pen-cloned":
                dones = dones | pen_dropped(observations[1:])  # Minari's are all False
            for key, value in zip(columns, (observations[:-1], episode.actions, rewards, observations[1:], dones)):
                columns[key].append(np.asarray(value, dtype=np.float32))
        arrays = {key: np.concatenate(value) for key, value in columns.items()}
    except (OSError, KeyError, ValueError, TypeError) as error:  # a truncated file, episodes of other shapes
        raise UsageError(f"the episodes of {dataset_id} cannot be read ({type(error).__name__}: {error})") from None
    metadata = dataset.storage.metadata
    score, reference = d4rl_score(task.ref_scores), task.ref_scores  # paper tasks: D4RL's reference returns
    if task.ref_scores is None and metadata.get("ref_min_score") is not None and metadata.get("ref_max_score") is not None:
        import minari

        low, high = metadata["ref_min_score"], metadata["ref_max_score"]
        if not (all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high))
                and low != high):
            raise UsageError(f"{dataset_id}: its reference scores (ref_min_score {low!r}, ref_max_score {high!r}) must be"
                             " two different finite numbers")
        score = lambda returns: 100.0 * minari.get_normalized_score(dataset, returns)  # noqa: E731
        reference = (metadata["ref_min_score"], metadata["ref_max_score"])
    card = dict(
        dataset=dict(id=dataset_id, episodes=dataset.total_episodes,
                     replica=str(metadata.get("algorithm_name", "")).startswith("replica"),
                     **({"what": "Minari's own MuJoCo data (collected anew on the -v5 env), not D4RL's -v2 file of the"
                                 " paper's locomotion tasks"} if dataset_id.startswith("mujoco/") else {})),
        eval_env=spec.id,
        terminals=terminal_rule(task) if d4rl_terminals else "the dataset's terminations",
        reward=f"relabelled: 1 within {ANTMAZE_RELABEL_RADIUS} of the evaluation goal {goal.tolist()}" if goal is not None
        else "the dataset's",
        score=score_card(task, reference))
    return OfflineData(**arrays, episode_returns=np.array([rewards.sum() for rewards in columns["rewards"]]),
                       score=score, make_env=make_env, card=card,
                       spaces=(dataset.spec.observation_space, dataset.spec.action_space),
                       episode_starts=np.cumsum([0] + [len(rewards) for rewards in columns["rewards"][:-1]]))


def load_hdf5(task: Task, config, path: Optional[str] = None) -> OfflineData:
    """A D4RL HDF5 file: `path`, else --dataset-path."""
    import h5py

    path = path or config.dataset_path
    if task.env_id is None:
        raise UsageError(f"--dataset-path is for the D4RL locomotion tasks; {task.name} is read from Minari"
                         f" ({task.minari_id})")
    if not os.path.exists(path):
        raise UsageError(f"no such file: {path}")
    if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the reader forever
        raise UsageError(f"{path} is not a regular file")
    required = ("observations", "actions", "rewards", "terminals", "timeouts")
    try:
        with h5py.File(path, "r") as file:
            missing = [key for key in required if key not in file]
            if missing:
                raise UsageError(f"{path} is not a D4RL dataset: it lacks {', '.join(missing)}")
            declared = sum(file[key].size * file[key].dtype.itemsize for key in (*required, "next_observations")
                           if key in file and hasattr(file[key], "dtype"))
            if declared > memory_bytes():
                raise UsageError(f"{path} declares {declared / 2**30:.0f} GiB of arrays, more than this machine's memory")
            data = {key: np.asarray(file[key]) for key in (*required, "next_observations") if key in file}
            replica = "replica" in str(file.attrs.get("description", "")).lower()  # make_demo_dataset.py's files
    except (OSError, TypeError, ValueError) as error:  # not HDF5, truncated, a group where an array belongs
        raise UsageError(f"cannot read {path} as D4RL HDF5: {error}") from None
    check_arrays(data, path)
    terminals, timeouts = data["terminals"].astype(bool), data["timeouts"].astype(bool)
    # the rows of D4RL's qlearning_dataset (d4rl/__init__.py): every row but the last, less the time-out rows; the
    # next observation is the next row, or the file's next_observations where it has them (true after terminals too)
    keep = np.flatnonzero(~timeouts[:-1])
    next_observations = data["next_observations"][keep] if "next_observations" in data else data["observations"][keep + 1]
    episode_starts = np.r_[0, np.flatnonzero(terminals | timeouts) + 1]
    episode_starts = episode_starts[episode_starts < len(terminals)]  # a last episode without an end flag is its own
    transition_starts = np.unique(np.searchsorted(keep, episode_starts))  # the same starts among the kept rows
    from d4rl_files import rows_note

    size = rows_note(task.name, len(data["observations"]))  # said once the data are accepted (prepare_data)
    card = dict(dataset=dict(id=os.path.abspath(path), transitions=len(keep), replica=replica,
                             **({"size_differs": size} if size else {})),
                eval_env=config.eval_env or task.env_id, terminals="the file's terminals (D4RL's)",
                reward="the file's", score=score_card(task, task.ref_scores))
    return OfflineData(
        **{key: data[key][keep].astype(np.float32) for key in ("observations", "actions", "rewards")},
        next_observations=next_observations.astype(np.float32), dones=terminals[keep].astype(np.float32),
        episode_returns=np.add.reduceat(data["rewards"].astype(np.float64), episode_starts),
        make_env=env_maker(task.env_id, task.domain, eval_horizon(config, task)), score=d4rl_score(task.ref_scores),
        card=card, episode_starts=transition_starts[transition_starts < len(keep)])


def eval_horizon(config, task: Task) -> Optional[int]:
    """--eval-max-steps: unset, D4RL's horizon on a paper task (the env's own elsewhere); 0, the env's own."""
    if config.eval_max_steps is None:
        return task.horizon
    return config.eval_max_steps or None


def score_card(task: Task, reference: Optional[tuple]) -> str:
    if task.domain == "antmaze":
        return f"100 x success rate (reaching the goal within {ANTMAZE_SUCCESS_RADIUS}, the env's own rule)"
    if reference is None:
        return "the episode return (no reference returns known)"
    return f"100 (R - {reference[0]}) / ({reference[1]} - {reference[0]})"


def check_spaces(data: OfflineData, env: gym.Env) -> tuple:
    """The dataset must fit the evaluation env; returns the env's action bounds."""
    observation_dim = flatten_observation(env.observation_space.sample()).shape[-1]
    if not isinstance(env.action_space, gym.spaces.Box):
        raise UsageError(f"the evaluation env has a {type(env.action_space).__name__} action space; EDP needs a Box")
    if data.observations.shape[1] != observation_dim or data.actions.shape[1] != env.action_space.shape[0]:
        raise UsageError(
            f"dataset spaces (observation {data.observations.shape[1]}, action {data.actions.shape[1]}) do not match"
            f" the evaluation env {env.spec.id if env.spec else env} (observation {observation_dim},"
            f" action {env.action_space.shape[0]})"
        )
    for kind, recorded, evaluated in zip(("observation", "action"), data.spaces or (), (env.observation_space,
                                                                                       env.action_space)):
        if recorded != evaluated:  # the same sizes, but not the same space: say what was found
            print(f"warning: the dataset records the {kind} space {recorded}; the evaluation env"
                  f" {env.spec.id if env.spec else env} has {evaluated}", file=sys.stderr, flush=True)
    return env.action_space.low.astype(np.float32), env.action_space.high.astype(np.float32)


# ==============================================================================================
# Transforms: rewards and observations as the authors' code, and the batches on the device
# ==============================================================================================
REWARD_TRANSFORMS = {  # the authors' code (sail-sg/edp)
    "none": "r",
    "antmaze": "(r - 0.5) x 4",  # TD3 and CRR on AntMaze
    "antmaze-iql": "r - 1",  # IQL on AntMaze
    "minmax": "min-max to [0, 1], then (r - 0.5) x 2",  # Kitchen and Adroit
    "returns": "r x 1000 / (max - min episode return)",  # locomotion, --norm_reward
}


def transform_rewards(name: str, rewards: np.ndarray, episode_returns: np.ndarray) -> np.ndarray:
    """The reward transforms of REWARD_TRANSFORMS."""
    if name == "antmaze":
        return (rewards - 0.5) * 4.0
    if name == "antmaze-iql":
        return rewards - 1.0
    if name == "minmax":
        span = max(float(rewards.max() - rewards.min()), 1e-6)
        return ((rewards - rewards.min()) / span - 0.5) * 2.0
    if name == "returns":
        span = float(episode_returns.max() - episode_returns.min())
        transformed = rewards * 1000.0 / span if span > 0 else None
        if transformed is None or np.abs(transformed).max() > LARGEST_VALUE:
            raise UsageError(f"--reward-transform returns divides the rewards by the range of the episode returns, and"
                             f" the {len(episode_returns)} episode(s) of these data have returns within {span:.3g} of each"
                             " other; use another --reward-transform (e.g. none)")
        return transformed
    return rewards


def normalize_observations(observations: np.ndarray, statistics: dict) -> np.ndarray:
    clip = statistics["observation_clip"]
    return np.clip((observations - statistics["observation_mean"]) / statistics["observation_std"], -clip, clip)


class DeviceBuffer:
    """The whole dataset as tensors on the device; batches are drawn there, without host syncs."""

    def __init__(self, arrays: dict, device: torch.device):
        self.tensors = {key: torch.as_tensor(value, dtype=torch.float32, device=device) for key, value in arrays.items()}
        self.size, self.device = len(arrays["observations"]), device

    def add(self, columns: dict):
        """A script's own per-transition fields (agents.Agent.transition_columns), one value or row per transition."""
        for name, values in columns.items():
            values = np.asarray(values, dtype=np.float32)
            if name in self.tensors or values.shape[:1] != (self.size,) or not np.isfinite(values).all():
                raise UsageError(f"transition column {name!r}: need a new name and {self.size} finite values (one per"
                                 f" transition), got shape {values.shape}")
            self.tensors[name] = torch.as_tensor(values.reshape(self.size, -1), device=self.device)

    def sample(self, batch_size: int) -> dict:
        index = torch.randint(0, self.size, (batch_size,), device=self.device)
        return {key: value[index] for key, value in self.tensors.items()}


def fingerprint(arrays: dict) -> str:
    """A content hash of the transitions as loaded: a resume refuses other data."""
    digest = hashlib.blake2b(digest_size=16)
    for key in sorted(arrays):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    return digest.hexdigest()


def load_data(config, task: Task) -> OfflineData:
    """The task's data, checked, with the environment it is evaluated in."""
    if config.dataset_path:
        data = load_hdf5(task, config)
    elif task.domain == "locomotion" and task.name in TASKS:  # D4RL's own file, fetched into D4RL's folder if missing
        import d4rl_files

        try:
            data = load_hdf5(task, config, d4rl_files.fetch(task.name))
        except d4rl_files.DownloadError as error:
            raise UsageError(str(error)) from None
        data.card["dataset"]["source"] = f"D4RL's {d4rl_files.file_name(task.name)} ({d4rl_files.url(task.name)})"
    else:
        data = load_minari(task, config)
    arrays = dict(observations=data.observations, actions=data.actions, rewards=data.rewards,
                  next_observations=data.next_observations, dones=data.dones)
    check_arrays(arrays, data.card["dataset"]["id"])
    data.card["dataset"]["fingerprint"] = fingerprint(arrays)
    if config.eval_env is not None:
        data.make_env = env_maker(config.eval_env, task.domain, eval_horizon(config, task),
                                  config.eval_terminations == "d4rl")
        data.card["eval_env"] = config.eval_env
    data.card["evaluation_ends"] = evaluation_end(config, data.card["eval_env"])
    return data


def prepare_data(config, task: Task) -> tuple:
    """Load, check and transform the data; returns (buffer, data, statistics saved in checkpoints)."""
    data = load_data(config, task)
    try:
        env = data.make_env()
    except UsageError:
        raise
    except Exception as error:  # kwargs in a dataset's metadata that the env does not take, a bad time limit
        raise UsageError(f"the evaluation env {data.card['eval_env']} cannot be made as the dataset's metadata"
                         f" describes it ({one_line(error)})") from None
    action_low, action_high = check_spaces(data, env)
    if "size_differs" in data.card["dataset"]:
        print(f"warning: {data.card['dataset']['id']}: {data.card['dataset']['size_differs']}", file=sys.stderr, flush=True)
    data.card["max_episode_steps"] = env.spec.max_episode_steps
    env.close()
    data.card["reward"] += f"; transform {config.reward_transform}: {REWARD_TRANSFORMS[config.reward_transform]}"
    observations, dim = data.observations, data.observations.shape[1]
    mean, std, clip = {"off": (0.0, 1.0, np.inf), "per-dimension": (observations.mean(0), observations.std(0) + 1e-3, np.inf),
                       # the released code: one mean and std over every entry, then clip (sail-sg/edp utils.py norm_obs)
                       "scalar": (observations.mean(), observations.std() + 1e-3, 10.0)}[config.normalize_obs]
    statistics = dict(observation_mean=np.broadcast_to(mean, dim).astype(np.float32), observation_clip=clip,
                      observation_std=np.broadcast_to(std, dim).astype(np.float32), action_low=action_low,
                      action_high=action_high)
    action_mid, action_half = (action_high + action_low) / 2, (action_high - action_low) / 2
    scaled = np.abs((data.actions - action_mid) / action_half)
    outside = scaled > 1 + 1e-4
    if outside.any():  # said, not silently clipped: data from another env or another action scale shows here
        print(f"warning: {outside.any(1).mean():.1%} of the dataset's actions lie outside the evaluation env's bounds (up"
              f" to {scaled.max():.3g} times the half-range); they are clipped to +-{config.action_clip}",
              file=sys.stderr, flush=True)
    arrays = dict(
        observations=normalize_observations(data.observations, statistics),
        # the policy acts in [-1, 1]; the released code clips dataset actions to +-0.999
        actions=np.clip((data.actions - action_mid) / action_half, -config.action_clip, config.action_clip),
        rewards=transform_rewards(config.reward_transform, data.rewards, data.episode_returns)[:, None],
        next_observations=normalize_observations(data.next_observations, statistics),
        dones=data.dones[:, None],
    )
    return DeviceBuffer(arrays, torch.device(config.device)), data, statistics
