"""EDP + IQL: an Efficient Diffusion Policy trained with Implicit Q-Learning (App. A.3).

    python edp_iql.py --env antmaze-medium-play
    python edp_iql.py --env kitchen-mixed --likelihood elbo      # Eq. 12 instead of Eq. 13
    python edp_iql.py --env edp/pendulum-mixed-v0 --total-steps 6000   # offline demo

Policy evaluation never queries the policy: V(s) is fit by expectile regression to min(Q1, Q2) of
the target critics and Q to r + gamma V(s'). The diffusion policy is trained by weighted maximum
likelihood (Eq. 11) with the weight exp(A * temperature), A = Q - V, through the Gaussian surrogate
N(a; a0_hat, sigma^2 I) around the action approximation (Eq. 13) or the ELBO form (Eq. 12).

Reading order: command line (Args), the defaults table, networks, the algorithm; then, below one marker,
the data, evaluation and run blocks, the same word for word in edp_td3.py, edp_crr.py and edp_iql.py.
"""

# ---8<--- shared: imports ---
from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import fcntl
import glob
import json
import os
import pickle
import random
import re
import secrets
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Literal, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro

from diffusion import (DiffusionAgent, DiffusionPolicy, Mish, adam_step, check_sampler_args, make_beta_schedule, polyak,
                       update_ema_policy)

# ---8<--- end shared: imports ---

ALGORITHM = os.path.splitext(os.path.basename(__file__))[0]  # a copy my_edp.py logs and checkpoints as my_edp


# ==============================================================================================
# Command line
# ==============================================================================================
@dataclass
class Args:
    # -- task and data
    env: str = "hopper-medium"
    """paper task (hopper-medium, antmaze-medium-play, pen-human, kitchen-mixed, ...) or a Minari dataset id"""
    preset: Literal["paper", "released"] = "paper"
    """what fills every flag left unset: paper (Table 3 and the text) or released (the authors' code); README lists the differences"""
    dataset_path: Optional[str] = None
    """an original D4RL HDF5 file (observations, actions, rewards, terminals, timeouts) to train on"""
    eval_env: Optional[str] = None
    """registered Gymnasium id to evaluate on (default: the dataset's eval env; D4RL HDF5: the -v4 MuJoCo env)"""
    seed: int = 0
    """seed of everything: networks, batches, sampling, evaluation episodes"""
    device: str = "auto"
    """cpu, cuda, cuda:N, or auto (cuda when available)"""
    # -- training
    total_steps: Optional[int] = None
    """gradient steps (default: epochs x 1000, Table 3: 2000 epochs on locomotion, 1000 elsewhere)"""
    batch_size: int = 256
    """transitions per gradient step"""
    lr: Optional[float] = None
    """Adam learning rate of policy and critics (default: 3e-4; 3e-5 on adroit; Table 3)"""
    grad_clip: Optional[float] = None
    """global gradient-norm clip (default: 5, Table 3; released: per task, 1 to 10, README)"""
    gamma: float = 0.99
    """discount"""
    tau: float = 0.005
    """Polyak rate of the target critics, every step"""
    ema_tau: float = 0.005
    """rate of the EMA (target) policy"""
    ema_every: int = 5
    """update the EMA policy every this many steps ..."""
    ema_start: int = 1000
    """... after this step (before it, the EMA policy is a copy of the policy)"""
    num_diffusion_steps: int = 1000
    """K, diffusion steps of the policy"""
    schedule: Literal["linear", "vp", "cosine"] = "linear"
    """noise schedule"""
    likelihood: Literal["gaussian", "elbo"] = "gaussian"
    """log pi surrogate: gaussian N(a; a0_hat, sigma^2 I) (Eq. 13) or elbo (Eq. 12)"""
    learn_std: bool = False
    """learn a state-independent log-std for the Eq. 13 Gaussian (default: sigma = 1)"""
    expectile: Optional[float] = None
    """expectile tau of the V regression (default: 0.7; 0.9 on antmaze; App. A.3)"""
    temperature: Optional[float] = None
    """weight exp(A * temperature) (default: 1, App. A.3; released: 3 on locomotion, 10 on antmaze, 0.5 on adroit and kitchen)"""
    weight_clip: float = 100.0
    """upper clip of the weight exp(A * temperature) (authors' code: 100)"""
    reward_transform: Optional[Literal["none", "antmaze", "antmaze-iql", "minmax", "returns"]] = None
    """none, antmaze (r-0.5)*4, antmaze-iql r-1, minmax (to [-1,1]), returns (x 1000/return range) (default: none on locomotion, antmaze-iql on antmaze, minmax on adroit and kitchen; released: returns on locomotion)"""
    normalize_obs: Optional[Literal["off", "per-dimension", "scalar"]] = None
    """standardise observations with dataset statistics, per dimension or by one scalar clipped to +-10 (default: off on locomotion, per-dimension elsewhere; released: off)"""
    action_clip: Optional[float] = None
    """clip dataset actions (scaled to [-1, 1]) to +- this (default: 1; released: 0.999)"""
    # -- sampling and evaluation
    sampler: Literal["dpm", "ddpm"] = "dpm"
    """sampler of TD-target and evaluation actions: DPM-Solver or the full DDPM chain"""
    dpm_steps: int = 15
    """DPM-Solver model calls"""
    dpm_order: int = 3
    """DPM-Solver order (1, 2 or 3)"""
    dpm_method: Optional[Literal["multistep", "singlestep"]] = None
    """DPM-Solver method (default: multistep; released: singlestep)"""
    dpm_skip: Optional[Literal["logSNR", "time_uniform", "time_quadratic"]] = None
    """DPM-Solver time grid (default: logSNR; released: time_uniform)"""
    noise_scale: float = 1.0
    """evaluation: scale of the initial noise a_K (0: deterministic DPM-Solver sampling, App. C.4)"""
    policy_scale: float = 1.0
    """evaluation: multiply eps_theta by this (> 1 samples a sharper policy, App. C.4)"""
    eval_every: Optional[int] = None
    """gradient steps between evaluations (default: 10 epochs = 10000)"""
    eval_episodes: Optional[int] = None
    """episodes per evaluation, all stepped together (default: 10; 100 on antmaze; released: 10)"""
    eas_samples: Optional[int] = None
    """N actions per state for energy-based action selection (Alg. 2; default: 10; released: 50); 1 samples plainly"""
    eas_temperature: float = 1.0
    """pick an action with probability softmax(Q / temperature)"""
    acting_policy: Optional[Literal["ema", "online"]] = None
    """policy that acts in evaluation (default: ema, the TD-target policy; released: online)"""
    # -- run
    run_dir: Optional[str] = None
    """where checkpoints and summary.json go (default: runs/<env>__<algo>__<seed>__<time>)"""
    resume: bool = False
    """continue the run in --run-dir from its checkpoint_last.pt"""
    wandb_mode: Literal["online", "offline", "disabled"] = "offline"
    """wandb logging; offline needs no account (sync later with `wandb sync`)"""
    wandb_project: str = "edp"
    """wandb project"""
    wandb_group: Optional[str] = None
    """wandb group of the run (reproduce.py sets one per sweep)"""
    wandb_entity: Optional[str] = None
    """wandb entity (team or user) of the run (default: your wandb default)"""
    log_every: int = 1000
    """gradient steps between training-metric logs"""
    compile: bool = False
    """torch.compile the whole update step and EAS acting, each one graph (about a minute to compile on a CPU; see README, Speed)"""
    torch_deterministic: bool = True
    """deterministic torch kernels: the same seed gives the same numbers on the same machine"""
    capture_video: bool = False
    """record the first episode of each evaluation to <run-dir>/videos (MuJoCo renders headless with MUJOCO_GL=egl)"""
    eval_only: bool = False
    """no training: evaluate --checkpoint (default: <run-dir>/checkpoint_last.pt) with its run's configuration"""
    checkpoint: Optional[str] = None
    """checkpoint for --eval-only, e.g. <run-dir>/checkpoint_best.pt"""
    threads: int = 0
    """torch's CPU threads: 0 adapts (all while the run has the CPUs, 1 while other processes are busy), N fixes N"""


# ==============================================================================================
# Defaults: a flag left unset (None in Args) takes its --preset's value for the task: one value, one per domain
# (DOMAINS' order) or one per task (others: the paper's). A flag given wins. README "Paper and released code".
# ==============================================================================================
DOMAINS = ("locomotion", "antmaze", "adroit", "kitchen")
PAPER = {  # paper Table 3 and text; "ours" where the paper is silent
    "total_steps": (2_000_000, 1_000_000, 1_000_000, 1_000_000),  # 2000 / 1000 epochs of 1000 steps
    "eval_every": 10_000,  # every 10 epochs
    "lr": (3e-4, 3e-4, 3e-5, 3e-4),
    "grad_clip": 5.0,
    "expectile": (0.7, 0.9, 0.7, 0.7),  # App. A.3
    "temperature": 1.0,  # App. A.3: beta = 1
    "reward_transform": ("none", "antmaze-iql", "minmax", "minmax"),  # the authors' code (REFERENCE.md)
    "normalize_obs": ("off", "per-dimension", "per-dimension", "per-dimension"),  # ours
    "eval_episodes": (10, 100, 10, 10),  # ours on AntMaze (success rate from 100 episodes)
    "eas_samples": 10,  # Sec. 5 / Fig. 4
    "dpm_method": "multistep",  # ours (the paper gives order 3 and 15 calls only)
    "dpm_skip": "logSNR",  # ours
    "action_clip": 1.0,
    "acting_policy": "ema",  # ours: the policy that gives the TD-target actions
}
RELEASED = PAPER | {  # sail-sg/edp, where it differs from the paper
    "grad_clip": {  # diffusion/hps.py `gn`, read by trainer.py:222
        "halfcheetah-medium": 9.0, "halfcheetah-medium-replay": 2.0, "halfcheetah-medium-expert": 7.0, "hopper-medium": 9.0,
        "hopper-medium-replay": 4.0, "hopper-medium-expert": 5.0, "walker2d-medium": 1.0, "walker2d-medium-replay": 4.0,
        "walker2d-medium-expert": 5.0, "antmaze-umaze": 2.0, "antmaze-umaze-diverse": 3.0, "antmaze-medium-play": 2.0,
        "antmaze-medium-diverse": 1.0, "antmaze-large-play": 10.0, "antmaze-large-diverse": 7.0, "pen-human": 7.0,
        "pen-cloned": 8.0, "kitchen-complete": 9.0, "kitchen-partial": 10.0, "kitchen-mixed": 10.0},
    "normalize_obs": "off",  # obs_norm=False
    "eval_episodes": 10,  # eval_n_trajs
    "eas_samples": 50,  # trainer.py num_samples
    "dpm_method": "singlestep",  # dpm_solver.py
    "dpm_skip": "time_uniform",
    "action_clip": 0.999,  # clip_action
    "acting_policy": "online",  # train_params act
    "temperature": (3.0, 10.0, 0.5, 0.5),  # the authors' runs (their README's commands)
    "reward_transform": ("returns", "antmaze-iql", "minmax", "minmax"),  # --norm_reward: data/dataset.py:142
}


# ---8<--- shared: networks ---
def mlp(in_dim: int, out_dim: int, hidden_dim: int = 256) -> nn.Sequential:
    """The paper's backbone: 3 x (Linear 256 + Mish), then a linear head."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), Mish(),
        nn.Linear(hidden_dim, hidden_dim), Mish(),
        nn.Linear(hidden_dim, hidden_dim), Mish(),
        nn.Linear(hidden_dim, out_dim),
    )


class TwinCritic(nn.Module):
    def __init__(self, state_dim: int, action_dim: int):
        super().__init__()
        self.q1, self.q2 = mlp(state_dim + action_dim, 1), mlp(state_dim + action_dim, 1)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> tuple:
        state_action = torch.cat([state, action], dim=-1)
        return self.q1(state_action), self.q2(state_action)

    def q_min(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return torch.min(*self(state, action))
# ---8<--- end shared: networks ---


# ==============================================================================================
# Algorithm: twin critics, a value network and the diffusion policy, trained with IQL (App. A.3)
# ==============================================================================================
def expectile_loss(difference: torch.Tensor, expectile: float) -> torch.Tensor:
    """L_2^tau(u) = |tau - 1(u < 0)| u^2 with u = Q - V (Eq. 22), elementwise."""
    return torch.abs(expectile - (difference < 0).float()) * difference.pow(2)


def iql_weights(q: torch.Tensor, v: torch.Tensor, temperature: float, clip: float) -> torch.Tensor:
    """exp(A * temperature) clipped, with A = Q(s, a) - V(s)."""
    return torch.exp((q - v) * temperature).clamp(max=clip)


class EDPIQL(DiffusionAgent):
    """update(batch): V (expectile regression), then the policy (Eq. 11), then Q (Eq. 22), as the authors."""

    checkpointed = ("policy", "ema_policy", "critic", "critic_target", "value", "policy_optimizer",
                    "critic_optimizer", "value_optimizer")

    def __init__(self, state_dim: int, action_dim: int, config: Args, device: torch.device):
        if not 0 < config.expectile < 1 or config.temperature <= 0 or config.weight_clip <= 0:
            raise UsageError("need 0 < --expectile < 1, --temperature > 0 and --weight-clip > 0")
        self.config = config
        self.policy = DiffusionPolicy(state_dim, action_dim, config.num_diffusion_steps, config.schedule,
                                      learn_std=config.learn_std).to(device)
        self.ema_policy = copy.deepcopy(self.policy).requires_grad_(False)
        self.critic = TwinCritic(state_dim, action_dim).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = mlp(state_dim, 1).to(device)
        self.policy_optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.lr)
        self.value_optimizer = torch.optim.Adam(self.value.parameters(), lr=config.lr)
        self.step_count = torch.zeros((), dtype=torch.long, device=device)  # a tensor: no host sync per step

    def update(self, batch: dict) -> dict:
        self.step_count += 1
        state, action = batch["observations"], batch["actions"]
        # V: expectile regression towards min(Q1, Q2) of the target critics, on dataset actions only
        with torch.no_grad():
            target_q = self.critic_target.q_min(state, action)
        v = self.value(state)
        value_loss = expectile_loss(target_q - v, self.config.expectile).mean()
        adam_step(value_loss, self.value_optimizer, self.config.grad_clip)

        # policy: weighted likelihood with exp(A * temperature), A = Q - V, no gradient through the weight
        approximation = self.policy.approximate_action(state, action)  # Eq. 9, one network call
        weight = iql_weights(target_q, v.detach(), self.config.temperature, self.config.weight_clip)
        if self.config.likelihood == "gaussian":
            log_likelihood = self.policy.gaussian_log_likelihood(action, approximation)  # Eq. 13
        else:
            log_likelihood = self.policy.elbo_log_likelihood(approximation)  # Eq. 12
        diffusion_loss = approximation.diffusion_loss()
        weighted_loss = -(weight.squeeze(1) * log_likelihood).mean()  # Eq. 11
        policy_loss = diffusion_loss + weighted_loss
        policy_grad = adam_step(policy_loss, self.policy_optimizer, self.config.grad_clip)

        # Q: towards r + gamma V(s') (Eq. 22); no policy sample anywhere in policy evaluation
        with torch.no_grad():
            target = batch["rewards"] + (1 - batch["dones"]) * self.config.gamma * self.value(batch["next_observations"])
        q1, q2 = self.critic(state, action)
        critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        critic_grad = adam_step(critic_loss, self.critic_optimizer, self.config.grad_clip)

        polyak(self.critic_target, self.critic, self.config.tau)
        update_ema_policy(self.ema_policy, self.policy, self.step_count, self.config)
        return dict(value_loss=value_loss.detach(), critic_loss=critic_loss.detach(), policy_loss=policy_loss.detach(),
                    diffusion_loss=diffusion_loss.detach(), weighted_loss=weighted_loss.detach(), weight_mean=weight.mean(),
                    v_mean=v.detach().mean(), critic_grad_norm=critic_grad, policy_grad_norm=policy_grad)


Agent = EDPIQL


# ##############################################################################################
# Everything below is the same in edp_td3.py, edp_crr.py and edp_iql.py, word for word: data,
# evaluation, checkpoints, logging and the training loop. It repeats so that each script reads top to
# bottom on its own (copy one file and diffusion.py, and you have the whole algorithm);
# tests/test_shared_blocks.py keeps the copies identical, so change all three together.
# ##############################################################################################


# ---8<--- shared: data ---
# ==============================================================================================
# Data: the paper's tasks, Minari datasets, D4RL HDF5 files, transforms, a batch sampler on device
# ==============================================================================================
class UsageError(Exception):
    """Bad input: reported as one line, exit code 2."""


@dataclass(frozen=True)
class Task:
    domain: str
    minari_id: Optional[str]  # None: Minari holds no copy of this D4RL dataset
    env_id: Optional[str] = None  # Gymnasium env on which a D4RL HDF5 file is evaluated
    ref_scores: Optional[tuple] = None  # D4RL (random, expert) returns


D4RL_REFERENCE = {  # D4RL's (random, expert) returns
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "antmaze": (0.0, 1.0),
    "pen": (96.262799, 3076.8331),
    "kitchen": (0.0, 4.0),
}
TASKS = {}  # the 20 tasks of the paper's Table 2
# D4RL's files come from the -v2 MuJoCo models; -v4 is the closest still registered (-v5 changed the models)
for _robot, _env_id in [("halfcheetah", "HalfCheetah-v4"), ("hopper", "Hopper-v4"), ("walker2d", "Walker2d-v4")]:
    for _quality in ("medium", "medium-replay", "medium-expert"):
        # Minari's mujoco/<robot>/medium-v0 is new data on the v5 envs, not D4RL's -v2 data
        _minari = f"mujoco/{_robot}/medium-v0" if _quality == "medium" else None
        TASKS[f"{_robot}-{_quality}"] = Task("locomotion", _minari, _env_id, D4RL_REFERENCE[_robot])
for _maze in ("umaze", "umaze-diverse", "medium-play", "medium-diverse", "large-play", "large-diverse"):
    TASKS[f"antmaze-{_maze}"] = Task("antmaze", f"D4RL/antmaze/{_maze}-v1", None, D4RL_REFERENCE["antmaze"])
for _quality in ("human", "cloned"):
    TASKS[f"pen-{_quality}"] = Task("adroit", f"D4RL/pen/{_quality}-v2", None, D4RL_REFERENCE["pen"])
for _quality in ("complete", "partial", "mixed"):
    TASKS[f"kitchen-{_quality}"] = Task("kitchen", f"D4RL/kitchen/{_quality}-v2", None, D4RL_REFERENCE["kitchen"])


def find_task(name: str, dataset_path: Optional[str]) -> Task:
    if name in TASKS:
        return TASKS[name]
    if dataset_path is None and "/" in name:  # any Minari dataset id
        domain = next((d for d, key in [("antmaze", "antmaze"), ("adroit", "pen"), ("kitchen", "kitchen")]
                       if name.startswith(f"D4RL/{key}")), "locomotion")
        return Task(domain, name)
    close = difflib.get_close_matches(name, list(TASKS), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known tasks: {', '.join(TASKS)}"
    raise UsageError(f"unknown task {name!r} (give a paper task or a Minari dataset id such as D4RL/pen/human-v2){hint}")


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
D4RL_KITCHEN_EVAL = dict(remove_task_when_completed=True, terminate_on_tasks_completed=True)


def env_maker(env: str | gym.envs.registration.EnvSpec, domain: str) -> Callable[..., gym.Env]:
    """The evaluation env (a dataset's spec or an --eval-env id), registered envs only: a dataset's metadata names its
    env by entry point, and importing an arbitrary one would run code the user never chose. Keywords go to gym.make."""
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
    kwargs = dict(spec.kwargs)
    if domain == "kitchen":  # score tasks done out of 4 as D4RL did: each task pays once, episode ends when all are done
        kwargs |= D4RL_KITCHEN_EVAL  # Minari's data was collected with both off (README: Kitchen scoring)
    return lambda **extra: gym.make(spec.id, max_episode_steps=spec.max_episode_steps, **kwargs, **extra)


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
    description: str


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


ANTMAZE_SUCCESS_RADIUS = 0.45  # gymnasium_robotics maze_v4.py compute_reward and success (D4RL: 0.5)


def antmaze_evaluation_goal(make_env: Callable[[], gym.Env]) -> np.ndarray:
    """The centre of the evaluation maze's one goal cell: D4RL's AntMaze reward is 1 within reach of that goal."""
    env = make_env()
    goals = env.unwrapped.maze.unique_goal_locations
    env.close()
    if len(goals) != 1:
        raise UsageError(f"the AntMaze evaluation env has {len(goals)} goal cells; D4RL's tasks have one")
    return np.asarray(goals[0], dtype=np.float32)


def load_minari(task: Task, name: str) -> OfflineData:
    if task.minari_id is None:
        raise UsageError(f"Minari holds no copy of D4RL's {name}-v2; download the original HDF5 file (D4RL) and pass"
                         " --dataset-path")
    dataset_id = newest_local_version(task.minari_id) if name in TASKS else task.minari_id
    dataset = open_minari(dataset_id)
    if dataset.total_episodes == 0:
        raise UsageError(f"the Minari dataset {dataset_id} holds no episodes")
    make_env = env_maker(getattr(dataset, "_eval_env_spec", None) or dataset.env_spec, task.domain)  # Minari 0.5
    # Minari's AntMaze rewards (and desired_goal) follow a goal drawn anew in each collection episode, never the
    # evaluation goal: relabel r_t from achieved_goal at t + 1 against the evaluation goal, as D4RL's data is
    goal = antmaze_evaluation_goal(make_env) if task.domain == "antmaze" else None
    columns = {key: [] for key in ("observations", "actions", "rewards", "next_observations", "dones")}
    try:
        for episode in dataset.iterate_episodes():
            observations = flatten_observation(episode.observations)
            rewards = episode.rewards if goal is None else (
                np.linalg.norm(episode.observations["achieved_goal"][1:] - goal, axis=-1) <= ANTMAZE_SUCCESS_RADIUS)
            for key, value in zip(columns, (observations[:-1], episode.actions, rewards, observations[1:],
                                            episode.terminations)):
                columns[key].append(np.asarray(value, dtype=np.float32))
        arrays = {key: np.concatenate(value) for key, value in columns.items()}
    except (OSError, KeyError, ValueError, TypeError) as error:  # a truncated file, episodes of other shapes
        raise UsageError(f"the episodes of {dataset_id} cannot be read ({type(error).__name__}: {error})") from None
    metadata = dataset.storage.metadata
    score = d4rl_score(task.ref_scores)  # paper tasks keep D4RL's reference returns: scores on the paper's scale
    if task.ref_scores is None and metadata.get("ref_min_score") is not None and metadata.get("ref_max_score") is not None:
        import minari

        score = lambda returns: 100.0 * minari.get_normalized_score(dataset, returns)  # noqa: E731
    replica = " (a structural REPLICA, not the real data)" if str(metadata.get("algorithm_name", "")).startswith("replica") else ""
    relabelled = f", rewards relabelled to the evaluation goal {goal.tolist()}" if goal is not None else ""
    return OfflineData(**arrays, episode_returns=np.array([rewards.sum() for rewards in columns["rewards"]]),
                       score=score, make_env=make_env,
                       description=f"Minari {dataset_id}: {dataset.total_episodes} episodes{replica}{relabelled}")


def load_hdf5(task: Task, name: str, path: str) -> OfflineData:
    import h5py

    if task.env_id is None:
        raise UsageError(f"--dataset-path is for the D4RL locomotion tasks; {name} is read from Minari ({task.minari_id})")
    if not os.path.isfile(path):
        raise UsageError(f"no such file: {path}")
    required = ("observations", "actions", "rewards", "terminals", "timeouts")
    try:
        with h5py.File(path, "r") as file:
            missing = [key for key in required if key not in file]
            if missing:
                raise UsageError(f"{path} is not a D4RL dataset: it lacks {', '.join(missing)}")
            data = {key: np.asarray(file[key]) for key in (*required, "next_observations") if key in file}
    except (OSError, TypeError, ValueError) as error:  # not HDF5, truncated, a group where an array belongs
        raise UsageError(f"cannot read {path} as D4RL HDF5: {error}") from None
    check_arrays(data, path)
    terminals, timeouts = data["terminals"].astype(bool), data["timeouts"].astype(bool)
    if "next_observations" in data:
        keep, next_observations = np.arange(len(terminals)), data["next_observations"]
    else:  # as D4RL's qlearning_dataset: the next observation is the next row, except after a timeout
        keep = np.flatnonzero(~timeouts[:-1])
        next_observations = data["observations"][keep + 1]
    episode_starts = np.r_[0, np.flatnonzero(terminals | timeouts)[:-1] + 1]
    return OfflineData(
        **{key: data[key][keep].astype(np.float32) for key in ("observations", "actions", "rewards")},
        next_observations=next_observations.astype(np.float32), dones=terminals[keep].astype(np.float32),
        episode_returns=np.add.reduceat(data["rewards"].astype(np.float64), episode_starts),
        make_env=env_maker(task.env_id, task.domain), score=d4rl_score(task.ref_scores),
        description=f"D4RL HDF5 {path}: {len(keep)} transitions, evaluated on {task.env_id}",
    )


def check_arrays(arrays: dict, source: str):
    """Numbers only, one row per transition, the right number of dimensions, no NaN or inf (said by array and row)."""
    n = len(arrays["observations"])
    if n == 0:
        raise UsageError(f"{source} holds no transitions")
    for key, value in arrays.items():
        if not (np.issubdtype(value.dtype, np.number) or value.dtype == bool):
            raise UsageError(f"{source}: {key} holds {value.dtype}, not numbers")
        matrix = key in ("observations", "next_observations", "actions")
        if value.shape[:1] != (n,) or value.ndim != 1 + matrix:
            raise UsageError(f"{source}: {key} has shape {value.shape}; expected {'(N, d)' if matrix else '(N,)'}"
                             f" with N = {n}, as observations")
        finite = np.isfinite(value.reshape(n, -1)).all(1)
        if not finite.all():
            raise UsageError(f"{source}: {key} holds NaN or inf (row {int(np.flatnonzero(~finite)[0])})")


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
    return env.action_space.low.astype(np.float32), env.action_space.high.astype(np.float32)


def transform_rewards(name: str, rewards: np.ndarray, episode_returns: np.ndarray) -> np.ndarray:
    """Reward transforms of the authors' code (../shared/REFERENCE.md)."""
    if name == "antmaze":  # TD3 and CRR on AntMaze
        return (rewards - 0.5) * 4.0
    if name == "antmaze-iql":  # IQL on AntMaze
        return rewards - 1.0
    if name == "minmax":  # Kitchen and Adroit: to [0, 1], then to [-1, 1]
        span = max(float(rewards.max() - rewards.min()), 1e-6)
        return ((rewards - rewards.min()) / span - 0.5) * 2.0
    if name == "returns":  # locomotion option: 1000 / (max return - min return)
        return rewards * 1000.0 / max(float(episode_returns.max() - episode_returns.min()), 1e-6)
    return rewards


def normalize_observations(observations: np.ndarray, statistics: dict) -> np.ndarray:
    clip = statistics["observation_clip"]
    return np.clip((observations - statistics["observation_mean"]) / statistics["observation_std"], -clip, clip)


class DeviceBuffer:
    """The whole dataset as tensors on the device; batches are drawn there, without host syncs."""

    def __init__(self, arrays: dict, device: torch.device):
        self.tensors = {key: torch.as_tensor(value, dtype=torch.float32, device=device) for key, value in arrays.items()}
        self.size, self.device = len(arrays["observations"]), device

    def sample(self, batch_size: int) -> dict:
        index = torch.randint(0, self.size, (batch_size,), device=self.device)
        return {key: value[index] for key, value in self.tensors.items()}


def load_data(config: Args, task: Task) -> OfflineData:
    """The task's data, checked, with the environment it is evaluated in."""
    data = load_hdf5(task, config.env, config.dataset_path) if config.dataset_path else load_minari(task, config.env)
    check_arrays(dict(observations=data.observations, actions=data.actions, rewards=data.rewards,
                      next_observations=data.next_observations, dones=data.dones), data.description)
    if config.eval_env is not None:
        data.make_env = env_maker(config.eval_env, task.domain)
        data.description += f", evaluated on {config.eval_env}"
    return data


def prepare_data(config: Args, task: Task) -> tuple:
    """Load, check and transform the data; returns (buffer, data, statistics saved in checkpoints)."""
    data = load_data(config, task)
    env = data.make_env()
    action_low, action_high = check_spaces(data, env)
    env.close()
    observations, dim = data.observations, data.observations.shape[1]
    mean, std, clip = {"off": (0.0, 1.0, np.inf), "per-dimension": (observations.mean(0), observations.std(0) + 1e-3, np.inf),
                       # the released code: one mean and std over every entry, then clip (sail-sg/edp utils.py norm_obs)
                       "scalar": (observations.mean(), observations.std() + 1e-3, 10.0)}[config.normalize_obs]
    statistics = dict(observation_mean=np.broadcast_to(mean, dim).astype(np.float32), observation_clip=clip,
                      observation_std=np.broadcast_to(std, dim).astype(np.float32), action_low=action_low,
                      action_high=action_high)
    action_mid, action_half = (action_high + action_low) / 2, (action_high - action_low) / 2
    arrays = dict(
        observations=normalize_observations(data.observations, statistics),
        # the policy acts in [-1, 1]; the released code clips dataset actions to +-0.999
        actions=np.clip((data.actions - action_mid) / action_half, -config.action_clip, config.action_clip),
        rewards=transform_rewards(config.reward_transform, data.rewards, data.episode_returns)[:, None],
        next_observations=normalize_observations(data.next_observations, statistics),
        dones=data.dones[:, None],
    )
    return DeviceBuffer(arrays, torch.device(config.device)), data, statistics
# ---8<--- end shared: data ---


# ---8<--- shared: evaluation ---
# ==============================================================================================
# Evaluation: all episodes stepped together, one batched policy call per environment step
# ==============================================================================================
class Evaluator:
    """Runs `episodes` episodes in a vector env from fixed seeds (environments and policy noise alike), so
    evaluations are comparable and a checkpoint evaluated again scores the same; with `video_folder`, the first
    episode of each evaluation is recorded there."""

    def __init__(self, make_env: Callable, episodes: int, seed: int, statistics: dict, domain: str, score: Callable, device,
                 video_folder: Optional[str] = None):
        self.recorder, self.take_video = None, False
        makers = [make_env] * episodes
        if video_folder is not None and can_render(make_env):
            def recorded():
                self.recorder = gym.wrappers.RecordVideo(make_env(render_mode="rgb_array"), video_folder, disable_logger=True,
                                                         episode_trigger=lambda episode: self.take_video)
                return self.recorder
            makers[0] = recorded
        self.envs = gym.vector.SyncVectorEnv(makers)
        self.episodes, self.seed, self.domain, self.score, self.device = episodes, seed, domain, score, device
        self.statistics = statistics

    def __call__(self, act: Callable[[torch.Tensor], torch.Tensor], name: str = "eval") -> dict:
        """Scores of one evaluation; `name` names its video, <name>-episode-<k>.mp4."""
        start = time.perf_counter()
        if self.recorder is not None:
            self.recorder.name_prefix, self.take_video = name, True
        with torch.random.fork_rng(devices=[self.device] if torch.device(self.device).type == "cuda" else []):
            torch.manual_seed(self.seed)  # the same policy noise in every evaluation; training's RNG is left as it was
            result = self.run_episodes(act)
        if self.recorder is not None:
            if self.recorder.recording:
                self.recorder.stop_recording()  # episode 0 may have ended last: write its video now
            videos = glob.glob(os.path.join(self.recorder.video_folder, f"{name}-episode-*.mp4"))
            if videos:
                result["video"] = max(videos, key=os.path.getmtime)
        return result | dict(eval_seconds=time.perf_counter() - start)

    def run_episodes(self, act: Callable[[torch.Tensor], torch.Tensor]) -> dict:
        observation, _ = self.envs.reset(seed=self.seed)
        n, low, high = self.episodes, self.statistics["action_low"], self.statistics["action_high"]
        returns, lengths = np.zeros(n), np.zeros(n, dtype=int)
        success, has_success = np.zeros(n, dtype=bool), False
        finished = np.zeros(n, dtype=bool)
        action = np.zeros(self.envs.action_space.shape, dtype=np.float32)
        while not finished.all():
            active = ~finished
            state = normalize_observations(flatten_observation(observation)[active], self.statistics)
            policy_action = act(torch.as_tensor(state, dtype=torch.float32, device=self.device)).cpu().numpy()
            action[active] = (high + low) / 2 + (high - low) / 2 * policy_action
            observation, reward, terminated, truncated, info = self.envs.step(action)
            returns[active] += reward[active]
            lengths[active] += 1
            if "success" in info:  # AntMaze and other goal tasks
                has_success = True
                success[active] |= np.asarray(info["success"], dtype=bool)[active] & np.asarray(info["_success"])[active]
            finished |= terminated | truncated
            self.take_video = False  # env 0's next episode (autoreset) is not recorded
        scores = 100.0 * success if self.domain == "antmaze" else self.score(returns)  # x100, AntMaze by success
        result = dict(normalized_score=float(scores.mean()), normalized_score_std=float(scores.std()),
                      **{"return": float(returns.mean())}, return_std=float(returns.std()),
                      episode_length=float(lengths.mean()))
        if has_success:
            result["success_rate"] = float(success.mean())
        return result

    def close(self):
        self.envs.close()


def can_render(make_env: Callable) -> bool:
    """Whether the evaluation env renders frames here; if not, one line says why and evaluation goes on."""
    try:
        import moviepy  # noqa: F401  (RecordVideo writes mp4 with it)

        env = make_env(render_mode="rgb_array")
        env.reset(seed=0)
        frame = env.render()
        env.close()
        if frame is None:
            raise RuntimeError("the env returned no frame")
        return True
    except Exception as error:  # no GL (MuJoCo needs MUJOCO_GL=egl or osmesa headless), no pygame, no moviepy
        print(f"warning: --capture-video: cannot render here ({one_line(error)}); evaluating without video",
              file=sys.stderr, flush=True)
        return False
# ---8<--- end shared: evaluation ---


# ---8<--- shared: run ---
# ==============================================================================================
# Run: configuration, checkpoints that survive, summary.json, wandb, the training loop
# ==============================================================================================
class Diverged(Exception):
    """A NaN or inf loss: reported with its step, exit code 1; the last good checkpoint is kept."""


class SaveFailed(Exception):
    """A checkpoint or summary.json could not be written (full or read-only disk): exit code 1; the last good files stay."""


# a resumed run keeps its saved configuration; only these flags may differ from it
RESUMABLE = ("total_steps", "eval_every", "log_every", "wandb_mode", "wandb_project", "wandb_group", "wandb_entity",
             "device", "compile", "threads", "capture_video", "torch_deterministic", "resume", "run_dir")
# --eval-only keeps the saved configuration but for these flags, where given
EVALUATION_FLAGS = ("eval_episodes", "eas_samples", "eas_temperature", "noise_scale", "policy_scale", "acting_policy",
                    "sampler", "dpm_steps", "dpm_order", "dpm_method", "dpm_skip", "eval_env", "seed", "device", "threads",
                    "capture_video")
RUN_FILES = ("summary.json", "checkpoint_best.pt", "checkpoint_last.pt")  # what makes a folder hold a run
CHECKPOINT_KEYS = ("algo", "env", "config", "agent", "statistics", "evaluations", "wandb_id", "rng")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def one_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def resolve_config(args: Args, task: Task) -> Args:
    """Every flag left unset takes its preset's value on the task (the tables at the top); then all are checked."""
    table = PAPER if args.preset == "paper" else RELEASED

    def preset_value(row):  # one value, one per domain, or one per task (a task it lacks: the paper's value)
        if isinstance(row, dict):
            return row[args.env] if args.env in row else None
        return row[DOMAINS.index(task.domain)] if isinstance(row, tuple) else row

    filled = {key: preset_value(row) for key, row in table.items() if getattr(args, key) is None}
    filled |= {key: preset_value(PAPER[key]) for key, value in filled.items() if value is None}
    if args.device == "auto":
        filled["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    config = dataclasses.replace(args, **filled)
    check_config(config)
    return config


def check_config(config: Args):
    """One line for every flag value that would end in a traceback, or in a run that means nothing."""
    too_small = [flag(name) for name in ("total_steps", "batch_size", "eval_every", "eval_episodes", "eas_samples",
                                         "dpm_steps", "num_diffusion_steps", "log_every", "ema_every")
                 if getattr(config, name) < 1]
    cuda = re.fullmatch(r"cuda(:(\d+))?", config.device)
    for wrong, message in [
        (too_small, f"{', '.join(too_small)} must be at least 1"),
        (config.threads < 0, "--threads must be 0 (adapt to the machine's load) or a number of threads"),
        (not (config.lr > 0 and config.grad_clip > 0 and 0 <= config.gamma < 1 and 0 < config.tau <= 1
              and 0 < config.ema_tau <= 1 and config.eas_temperature > 0),
         "need --lr > 0, --grad-clip > 0, 0 <= --gamma < 1, 0 < --tau <= 1, 0 < --ema-tau <= 1, --eas-temperature > 0"),
        (not (0 < config.action_clip <= 1 and config.noise_scale >= 0 and config.policy_scale > 0),
         "need 0 < --action-clip <= 1, --noise-scale >= 0, --policy-scale > 0"),
        (not (cuda or config.device == "cpu"), f"--device {config.device}: use cpu, cuda, cuda:N or auto"),
        (cuda and not torch.cuda.is_available(), f"--device {config.device} asked for, but torch sees no CUDA device;"
                                                 " use --device cpu"),
        (cuda and cuda[2] and int(cuda[2]) >= torch.cuda.device_count(),
         f"--device {config.device}: torch sees {torch.cuda.device_count()} CUDA device(s)"),
        (not 0 <= config.seed < 2**32, f"--seed must be in 0 .. 2**32 - 1, got {config.seed}"),  # numpy's seed range
        (config.sampler == "dpm" and config.num_diffusion_steps < 2,  # DPM-Solver integrates t over [1/K, 1]
         "--sampler dpm needs --num-diffusion-steps >= 2 (at K = 1 DPM-Solver has no time interval to integrate);"
         " use --sampler ddpm for K = 1"),
        (config.resume and config.run_dir is None, "--resume needs --run-dir, the folder of the run to continue"),
    ]:
        if wrong:
            raise UsageError(message)
    try:
        make_beta_schedule(config.schedule, config.num_diffusion_steps)
        check_sampler_args(config.sampler, config.dpm_steps, config.dpm_order, config.dpm_method, config.dpm_skip)
    except ValueError as error:
        raise UsageError(str(error)) from None


@contextlib.contextmanager
def lock_run_dir(run_dir: str, resume: bool):
    """Claim the run folder: run.lock, OS-locked (flock) for the run's length; a run refused before it wrote
    anything (bad data, impossible flags) leaves no empty folder behind."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise UsageError(f"--run-dir {run_dir} is a file, not a folder")
    if resume and not os.path.isdir(run_dir):
        raise UsageError(f"--resume: no checkpoint at {os.path.join(run_dir, 'checkpoint_last.pt')}")
    created = not os.path.isdir(run_dir)
    try:
        os.makedirs(run_dir, exist_ok=True)
        tempfile.TemporaryFile(dir=run_dir).close()  # writable: found out now, not at the first save
        lock = open(os.path.join(run_dir, "run.lock"), "a+")
    except OSError as error:
        raise UsageError(f"cannot write to the run folder {run_dir} ({error.strerror})") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise UsageError(f"{run_dir} is in use by another run (process {holder}); wait for it to end or choose another"
                         " --run-dir") from None
    earlier = [name for name in RUN_FILES if os.path.exists(os.path.join(run_dir, name))]
    if earlier and not resume:
        lock.close()
        raise UsageError(f"{run_dir} already holds a run ({', '.join(earlier)}): pass --resume to continue it, or choose"
                         " another --run-dir")
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")  # the holder, named to a run that is refused
    lock.flush()
    with lock:
        try:
            yield
        finally:
            if created and os.listdir(run_dir) == ["run.lock"]:  # removed while still locked
                os.remove(lock.name)
                os.rmdir(run_dir)


def last_good_checkpoint(run_dir: str) -> str:
    path = os.path.join(run_dir, "checkpoint_last.pt")
    return f"the last good checkpoint is {path}" if os.path.isfile(path) else "no checkpoint was saved"


def atomic_write(path: str, content):
    """torch.save (or JSON for a .json path) to a temporary file, then rename: a reader never sees half a file, and a
    failed write leaves none."""
    temporary = f"{path}.tmp"
    try:
        if path.endswith(".json"):
            with open(temporary, "w") as file:
                json.dump(content, file, indent=1)
        else:
            torch.save(content, temporary)
        os.replace(temporary, path)
    except (OSError, RuntimeError) as error:  # a full or read-only disk; torch.save reports it as a RuntimeError
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise SaveFailed(f"cannot write {path} ({one_line(error)}); {last_good_checkpoint(os.path.dirname(path))}") from None


def read_checkpoint(path: str, purpose: str) -> dict:
    """A checkpoint of this script, if it is data only (tensors, numbers, strings, lists, dicts)."""
    if not os.path.isfile(path):
        raise UsageError(f"{purpose}: no checkpoint at {path}")
    try:  # weights_only: unpickling anything more than data could run code the file names
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UsageError(f"{purpose}: refused {path}: it holds objects other than tensors, numbers, strings, lists and"
                         " dicts, and loading them could run code") from None
    except Exception as error:
        raise UsageError(f"{purpose}: {path} is not a usable checkpoint ({one_line(error)})") from None
    if not (isinstance(checkpoint, dict) and set(CHECKPOINT_KEYS) <= set(checkpoint)
            and isinstance(checkpoint["config"], dict)):
        raise UsageError(f"{purpose}: {path} is not a checkpoint of these scripts")
    if checkpoint["algo"] != ALGORITHM:
        raise UsageError(f"{purpose}: {path} belongs to {checkpoint['algo']}, not {ALGORITHM}")
    return checkpoint


def load_checkpoint(config: Args) -> dict:
    """checkpoint_last.pt of the run in config.run_dir, if it is data only and was made with this configuration."""
    path = os.path.join(config.run_dir, "checkpoint_last.pt")
    checkpoint = read_checkpoint(path, "--resume")
    if checkpoint["env"] != config.env:
        raise UsageError(f"--resume: {path} belongs to {checkpoint['algo']} on {checkpoint['env']},"
                         f" not {ALGORITHM} on {config.env}")
    saved = checkpoint["config"]
    changed = [f"{flag(key)}: saved {saved.get(key)}, given {value}"
               for key, value in dataclasses.asdict(config).items() if key not in RESUMABLE and saved.get(key) != value]
    if changed:
        raise UsageError(f"--resume continues the saved configuration, and these flags differ from it: {'; '.join(changed)}"
                         f" (only {', '.join(map(flag, RESUMABLE))} may change)")
    return checkpoint


def seed_everything(config: Args):
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    if config.torch_deterministic:  # cuBLAS needs a fixed workspace to be deterministic
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(config.torch_deterministic)
    torch.backends.cudnn.benchmark = not config.torch_deterministic


def rng_state() -> dict:
    """The generators a run draws from (torch's, CUDA's, Python's), in a form weights_only loads."""
    return dict(python=random.getstate(), torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])


def set_up(config: Args, task: Task, checkpoint: Optional[dict], video_folder: str) -> tuple:
    """Seeds, data, the agent (its weights, statistics and random state from the checkpoint if one is given) and
    the evaluator (recording to video_folder with --capture-video)."""
    seed_everything(config)
    buffer, data, statistics = prepare_data(config, task)
    print(data.description, flush=True)
    agent = Agent(buffer.tensors["observations"].shape[1], buffer.tensors["actions"].shape[1], config, torch.device(config.device))
    if checkpoint is not None:
        agent.load_state_dict(checkpoint["agent"])
        statistics = {key: value.numpy() for key, value in checkpoint["statistics"].items()}
        random.setstate(checkpoint["rng"]["python"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if checkpoint["rng"].get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
    if config.compile:
        agent.compile()
    evaluator = Evaluator(data.make_env, config.eval_episodes, config.seed + 10_000, statistics, task.domain, data.score,
                          config.device, video_folder if config.capture_video else None)
    return buffer, agent, evaluator, statistics


def summarize(evaluations: list) -> tuple:
    """RAT: mean of the last 10 evaluations' scores; OMS: the best evaluation."""
    scores = [evaluation["normalized_score"] for evaluation in evaluations]
    return float(np.mean(scores[-10:])), float(np.max(scores))


def train(args: Args) -> dict:
    task = find_task(args.env, args.dataset_path)
    config = resolve_config(args, task)
    run_dir = config.run_dir or os.path.join(
        "runs", f"{config.env.replace('/', '-')}__{ALGORITHM}__{config.seed}__{time.strftime('%Y%m%d-%H%M%S')}")
    with lock_run_dir(run_dir, config.resume):  # the folder stays locked until the run ends, however it ends
        config = dataclasses.replace(config, run_dir=run_dir)
        checkpoint = load_checkpoint(config) if config.resume else None
        config_dict = dataclasses.asdict(config) | {"algo": ALGORITHM, "domain": task.domain}
        print(f"{ALGORITHM} configuration:\n{json.dumps(config_dict, indent=2)}", flush=True)
        buffer, agent, evaluator, statistics = set_up(config, task, checkpoint, os.path.join(run_dir, "videos"))
        evaluations, wandb_id = (checkpoint["evaluations"], checkpoint["wandb_id"]) if checkpoint else ([], secrets.token_hex(4))
        import wandb

        try:
            run = wandb.init(project=config.wandb_project, entity=config.wandb_entity, mode=config.wandb_mode, dir=run_dir,
                             id=wandb_id, resume="allow", name=os.path.basename(run_dir), group=config.wandb_group,
                             config=config_dict, save_code=True)
        except wandb.errors.Error as error:  # e.g. --wandb-mode online without an API key
            evaluator.close()
            raise UsageError(f"wandb could not start ({one_line(error)}); --wandb-mode offline needs no account") from None

        def save(name: str):
            atomic_write(os.path.join(run_dir, name), dict(
                algo=ALGORITHM, env=config.env, config=config_dict, agent=agent.state_dict(), evaluations=evaluations,
                statistics={key: torch.as_tensor(value) for key, value in statistics.items()}, wandb_id=wandb_id,
                rng=rng_state()))

        def write_summary(step: int):
            rat, oms = summarize(evaluations)
            atomic_write(os.path.join(run_dir, "summary.json"), dict(
                env=config.env, algo=ALGORITHM, seed=config.seed, config=config_dict, evaluations=evaluations, rat=rat,
                oms=oms, final_step=step))

        return training_loop(config, agent, buffer, evaluator, run, evaluations, save, write_summary)


def training_loop(config: Args, agent, buffer: DeviceBuffer, evaluator: Evaluator, run, evaluations: list,
                  save: Callable[[str], None], write_summary: Callable[[int], None]) -> dict:
    """Update, log every --log-every steps, evaluate and save every --eval-every steps; a signal stops it cleanly."""
    import wandb
    from tqdm import tqdm

    run_dir, step, device = config.run_dir, agent.step, torch.device(config.device)
    stop_signal = []  # SIGINT / SIGTERM end the run after the current step, with a checkpoint
    previous_handlers = {signum: signal.signal(signum, lambda signum, frame: stop_signal.append(signum))
                         for signum in (signal.SIGINT, signal.SIGTERM)}
    progress = tqdm(total=config.total_steps, initial=step, unit="step", dynamic_ncols=True, mininterval=1.0)
    metric_sums, metric_count = {}, 0
    first_nonfinite = torch.full((), -1, dtype=torch.long, device=device)  # step of the first NaN/inf loss, on device

    def check_finite():  # one host sync per log interval, not per step
        if first_nonfinite.item() >= 0:
            raise Diverged(f"a loss became NaN or inf at step {first_nonfinite.item()}; {last_good_checkpoint(run_dir)}")

    threads, finished = CpuThreads(config.threads), False
    try:
        while step < config.total_steps and not stop_signal:
            metrics = agent.update(buffer.sample(config.batch_size))
            threads.tick()
            step += 1
            total_loss = sum(value for key, value in metrics.items() if key.endswith("loss"))
            first_nonfinite = torch.where((first_nonfinite < 0) & ~torch.isfinite(total_loss), step, first_nonfinite)
            metric_sums = {key: metric_sums.get(key, 0.0) + value for key, value in metrics.items()}
            metric_count += 1
            progress.update(1)
            evaluate_now = step % config.eval_every == 0 or step == config.total_steps
            if step % config.log_every == 0 or evaluate_now:
                check_finite()
                run.log({f"train/{key}": (value / metric_count).item() for key, value in metric_sums.items()}, step=step)
                metric_sums, metric_count = {}, 0
            if evaluate_now:
                result = evaluator(agent.act, name=f"step{step}")
                evaluations.append(dict(step=step, **result))
                rat, oms = summarize(evaluations)
                video = {"eval/video": wandb.Video(result.pop("video"))} if "video" in result else {}
                run.log({f"eval/{key}": value for key, value in result.items()} | {"eval/rat": rat, "eval/oms": oms} | video,
                        step=step)
                progress.write(f"step {step}: normalized score {result['normalized_score']:.1f}, return {result['return']:.1f},"
                               f" RAT {rat:.1f}, OMS {oms:.1f}")
                save("checkpoint_last.pt")  # the checkpoints first, then the summary of them
                if result["normalized_score"] >= oms:
                    save("checkpoint_best.pt")
                write_summary(step)
        if stop_signal:  # saved while the handlers still catch signals: a second one cannot cut the write
            check_finite()
            save("checkpoint_last.pt")
        finished = True  # wandb hears exit code 1 of a run that diverged, failed to save or crashed
    finally:  # on every exit: the progress bar, the environments and the wandb run are closed
        progress.close()
        evaluator.close()
        run.finish(exit_code=0 if finished else 1)
        for signum, handler in previous_handlers.items():  # once stopping, a further signal must not cut the exit
            signal.signal(signum, signal.SIG_IGN if stop_signal else handler)  # short (main() restores the caller's)
    if stop_signal:
        print(f"stopped by signal {stop_signal[0]} at step {step}; checkpoint saved, continue with"
              f" --resume --run-dir {run_dir}", file=sys.stderr, flush=True)
    return dict(run_dir=run_dir, step=step, evaluations=evaluations, stopped=bool(stop_signal), agent=agent)


class CpuThreads:
    """torch's intra-op threads: all of them while this process has the CPUs, one while other processes are busy too.

    Two teams of OpenMP threads on the same cores spin at every parallel op, each waiting for a thread the other
    team holds: two EDP runs side by side on 2 cores each kept 23% of their solo speed with 2 threads, and 89% with
    one, which alone is 29% slower (benchmark_speed.py, side by side). So: measure, every few seconds, how many
    cores other processes keep busy (/proc/stat less this process's own CPU time) and choose.
    """

    def __init__(self, threads: int, interval: float = 2.0):
        self.most = threads or torch.get_num_threads()  # torch's default honours OMP_NUM_THREADS (reproduce.py)
        torch.set_num_threads(self.most)
        self.adapt = threads == 0 and self.most > 1 and os.path.exists("/proc/stat")
        self.interval, self.next_check = interval, time.monotonic() + interval
        self.last = self.usage() if self.adapt else None

    @staticmethod
    def usage() -> tuple:
        """(wall seconds, CPU seconds of the whole machine, of this process)"""
        with open("/proc/stat") as file:  # cpu user nice system idle iowait irq softirq ...
            ticks = [int(value) for value in file.readline().split()[1:8]]
        busy = sum(ticks) - ticks[3] - ticks[4]
        return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), time.process_time()

    def tick(self):
        """Called every training step; costs one clock read except every `interval` seconds."""
        if not self.adapt or time.monotonic() < self.next_check:
            return
        now = self.usage()
        wall, machine, own = (new - old for new, old in zip(now, self.last))
        self.last, self.next_check = now, now[0] + self.interval
        torch.set_num_threads(1 if (machine - own) / wall > 0.5 else self.most)


def evaluate_only(args: Args) -> dict:
    """--eval-only: a checkpoint evaluated with its run's configuration, the evaluation flags given here (those that
    differ from their defaults) overriding it; prints the scores and writes eval_<checkpoint>.json beside it."""
    if args.checkpoint is None and args.run_dir is None:
        raise UsageError("--eval-only needs --run-dir (its checkpoint_last.pt) or --checkpoint PATH")
    path = args.checkpoint or os.path.join(args.run_dir, "checkpoint_last.pt")
    checkpoint = read_checkpoint(path, "--eval-only")
    defaults, fields = Args(), {field.name for field in dataclasses.fields(Args)}
    given = {key: getattr(args, key) for key in EVALUATION_FLAGS if getattr(args, key) != getattr(defaults, key)}
    saved = Args(**{key: value for key, value in checkpoint["config"].items() if key in fields})
    task = find_task(saved.env, saved.dataset_path)
    config = resolve_config(dataclasses.replace(saved, **given, eval_only=True, resume=False), task)
    folder = os.path.dirname(os.path.abspath(path))
    _, agent, evaluator, _ = set_up(config, task, checkpoint, os.path.join(folder, "videos"))
    try:
        result = evaluator(agent.act, name=f"eval-only-step{agent.step}")
    finally:
        evaluator.close()
    print(f"{path} ({config.env}, step {agent.step}): normalized score {result['normalized_score']:.1f}, return"
          f" {result['return']:.1f} over {config.eval_episodes} episodes", flush=True)
    report = dict(checkpoint=path, algo=ALGORITHM, env=config.env, step=agent.step, overrides=given, result=result,
                  config=dataclasses.asdict(config))
    atomic_write(os.path.join(folder, f"eval_{os.path.splitext(os.path.basename(path))[0]}.json"), report)
    return dict(run_dir=folder, step=agent.step, evaluations=[result], stopped=False, agent=agent)


def main(argv: Optional[list] = None) -> int:
    args = tyro.cli(Args, args=argv, description=__doc__.split("\n\n")[0])
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        if args.capture_video:  # headless rendering unless the user chose otherwise: MuJoCo by EGL, pygame without a display
            os.environ.setdefault("MUJOCO_GL", "egl")
            os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        result = evaluate_only(args) if args.eval_only else train(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (Diverged, SaveFailed) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:  # in-process callers get their handlers back; from the command line, a run stopped by a signal
        if argv is not None:  # ignores further ones until the process has exited (shutdown takes a moment)
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
    return 130 if result["stopped"] else 0


if __name__ == "__main__":
    sys.exit(main())
# ---8<--- end shared: run ---
