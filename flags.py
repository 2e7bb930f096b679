"""The command-line flags every edp_*.py shares (task, training, sampling, evaluation, run), the rows of the
defaults table they share, and the checks of a whole configuration.

A script's `Args` subclasses `CommonArgs` with its own flags, and its `PAPER` / `RELEASED` tables extend the
shared rows here with its own. A flag left unset (None) takes its preset's value for the task:
`resolve_config`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Annotated, Literal, Optional

import torch
import tyro

from diffusion import check_sampler_args, make_beta_schedule
from errors import UsageError
from tasks import Task


# a flag whose help says its default (set by --preset, or by the run) does not also show tyro's "(default: None)"
DEFAULT_IN_HELP = tyro.conf.arg(help_behavior_hint="")


@dataclass
class CommonArgs:
    # flags whose None means something (said in their help); every other flag still None after the presets is refused
    none_allowed = ("dataset_path", "eval_env", "eval_max_steps", "run_dir", "wandb_group", "wandb_entity", "checkpoint",
                    "threads")
    # -- task and data
    env: str = "edp/pendulum-mixed-v0"
    """paper task (hopper-medium, antmaze-medium-play, pen-human, kitchen-mixed, ...) or a Minari dataset id; the default, the offline demo, is made on first use in seconds"""
    preset: Literal["paper", "released"] = "paper"
    """what fills every flag left unset: paper (Table 3 and the text) or released (the authors' code); README lists the differences"""
    dataset_path: Optional[str] = None
    """an original D4RL HDF5 file (observations, actions, rewards, terminals, timeouts) to train on"""
    eval_env: Annotated[Optional[str], DEFAULT_IN_HELP] = None
    """registered Gymnasium id to evaluate on (default: the dataset's eval env; D4RL HDF5: the -v4 MuJoCo env)"""
    eval_max_steps: Annotated[Optional[int], DEFAULT_IN_HELP] = None
    """evaluation episode limit (default: D4RL's horizon on a paper task, e.g. pen 100, kitchen 280; the env's own elsewhere); 0: the env's own"""
    terminals: Literal["d4rl", "dataset"] = "d4rl"
    """done flags: d4rl (paper tasks as D4RL's data: AntMaze goal reached, Kitchen's last step, pen-cloned's pen dropped) or the dataset's own"""
    eval_terminations: Literal["d4rl", "env"] = "d4rl"
    """evaluation episodes end as D4RL's envs ended them (pen: when the pen falls below z = 0.075) or as the Gymnasium env does (pen: never before the time limit)"""
    seed: int = 0
    """seed of everything: networks, batches, sampling, evaluation episodes"""
    device: str = "auto"
    """cpu, cuda, cuda:N, or auto (cuda when available)"""
    # -- training
    init: Literal["lecun", "torch"] = "lecun"
    """initial weights of every layer: lecun (LeCun-normal weights, zero biases: Flax's nn.Dense default, the authors' networks) or torch (PyTorch's nn.Linear default)"""
    total_steps: Annotated[Optional[int], DEFAULT_IN_HELP] = None
    """gradient steps (default: epochs x 1000, Table 3: 2000 epochs on locomotion, 1000 elsewhere; 6000 on the offline demo)"""
    batch_size: int = 256
    """transitions per gradient step"""
    lr: Annotated[Optional[float], DEFAULT_IN_HELP] = None
    """Adam learning rate of policy and critics (default: 3e-4; 3e-5 on adroit; Table 3)"""
    grad_clip: Annotated[Optional[float], DEFAULT_IN_HELP] = None
    """gradient-norm clip of each network, Q1 and Q2 apart (default: 5, Table 3; released: per task, 1 to 10, README)"""
    eta: Annotated[Optional[float], DEFAULT_IN_HELP] = None
    """loss weight of the policy-improvement term: L_diff + eta * L_pi (default: 1.0; 0.1 on adroit; 0.005 on kitchen; Table 3; released: 1.0)"""
    gamma: float = 0.99
    """discount"""
    tau: float = 0.005
    """Polyak rate of the target critics, every step"""
    ema_tau: float = 0.005
    """rate of the EMA (target) policy"""
    ema_every: int = 5
    """update the EMA policy every this many steps ..."""
    ema_start: int = 1000
    """... after this step"""
    ema_warmup: Annotated[Optional[Literal["copy", "initial"]], DEFAULT_IN_HELP] = None
    """the EMA policy up to --ema-start: a copy of the policy or its initial weights (default: copy; released: initial)"""
    num_diffusion_steps: int = 1000
    """K, diffusion steps of the policy"""
    schedule: Literal["linear", "vp", "cosine"] = "linear"
    """noise schedule"""
    reward_transform: Annotated[Optional[Literal["none", "antmaze", "antmaze-iql", "minmax", "returns"]], DEFAULT_IN_HELP] = None
    """none, antmaze (r-0.5)*4, antmaze-iql r-1, minmax (to [-1,1]), returns (x 1000/return range) (default: none on locomotion, antmaze (IQL: antmaze-iql) on antmaze, minmax on adroit and kitchen; released: IQL returns on locomotion)"""
    normalize_obs: Annotated[Optional[Literal["off", "per-dimension", "scalar"]], DEFAULT_IN_HELP] = None
    """standardise observations with dataset statistics, per dimension or by one scalar clipped to +-10 (default: off on locomotion, per-dimension elsewhere; released: off)"""
    action_clip: Annotated[Optional[float], DEFAULT_IN_HELP] = None
    """clip dataset actions (scaled to [-1, 1]) to +- this (default: 1; released: 0.999)"""
    # -- sampling and evaluation
    sampler: Literal["dpm", "ddpm"] = "dpm"
    """sampler of TD-target and evaluation actions: DPM-Solver or the full DDPM chain"""
    dpm_steps: int = 15
    """DPM-Solver model calls"""
    dpm_order: int = 3
    """DPM-Solver order (1, 2 or 3)"""
    dpm_method: Annotated[Optional[Literal["multistep", "singlestep"]], DEFAULT_IN_HELP] = None
    """DPM-Solver method (default: multistep; released: singlestep)"""
    dpm_skip: Annotated[Optional[Literal["logSNR", "time_uniform", "time_quadratic"]], DEFAULT_IN_HELP] = None
    """DPM-Solver time grid (default: logSNR; released: time_uniform)"""
    noise_scale: float = 1.0
    """evaluation: scale of the initial noise a_K (0: deterministic DPM-Solver sampling, App. C.4)"""
    policy_scale: float = 1.0
    """evaluation: multiply eps_theta by this (> 1 samples a sharper policy, App. C.4)"""
    eval_every: Annotated[Optional[int], DEFAULT_IN_HELP] = None
    """gradient steps between evaluations (default: 10 epochs = 10000; 1000 on the offline demo)"""
    eval_episodes: Annotated[Optional[int], DEFAULT_IN_HELP] = None
    """episodes per evaluation, all stepped together (default: 10; 100 on antmaze; released: 10)"""
    eas_samples: Annotated[Optional[int], DEFAULT_IN_HELP] = None
    """N actions per state for energy-based action selection over the critic (Alg. 2); 1 samples plainly; refused for an algorithm without a critic (default: 10; released: 50)"""
    eas_temperature: float = 1.0
    """pick an action with probability softmax(Q / temperature); refused for an algorithm without a critic"""
    acting_policy: Annotated[Optional[Literal["ema", "online"]], DEFAULT_IN_HELP] = None
    """policy that acts in evaluation (default: ema, the TD-target policy; released: online)"""
    # -- run
    run_dir: Annotated[Optional[str], DEFAULT_IN_HELP] = None
    """where checkpoints and summary.json go (default: runs/<env>__<algo>__<seed>__<time>)"""
    resume: bool = False
    """continue the run in --run-dir from its checkpoint_last.pt"""
    wandb_mode: Literal["online", "offline", "disabled"] = "offline"
    """wandb logging; offline needs no account (sync later with `wandb sync`)"""
    wandb_project: str = "edp"
    """wandb project"""
    wandb_group: Optional[str] = None
    """wandb group of the run (reproduce.py sets one per sweep)"""
    wandb_entity: Annotated[Optional[str], DEFAULT_IN_HELP] = None
    """wandb entity (team or user) of the run (default: your wandb default)"""
    log_every: int = 1000
    """gradient steps between training-metric logs"""
    compile: Literal["auto", "on", "off"] = "auto"
    """torch.compile the update step and EAS acting, each one graph: auto compiles runs of 50,000 steps or more to go (break-even on a 2-core CPU: 1,000-9,000 steps; README, Speed) where a compiler works; on / off force it"""
    torch_deterministic: bool = True
    """deterministic torch kernels: the same seed gives the same numbers on the same machine"""
    capture_video: bool = False
    """record the first episode of each evaluation to <run-dir>/videos (MuJoCo renders headless with MUJOCO_GL=egl)"""
    eval_only: bool = False
    """no training: evaluate --checkpoint (default: <run-dir>/checkpoint_last.pt) with its run's configuration"""
    checkpoint: Optional[str] = None
    """checkpoint for --eval-only, e.g. <run-dir>/checkpoint_best.pt"""
    threads: Annotated[Optional[int], DEFAULT_IN_HELP] = None
    """torch's CPU threads: 0 uses all cores while the run has them and 1 while other processes are busy, where a check at start finds both counts give this run the same numbers (else 1, fixed); N fixes N (default: 0, or the count a resumed run was saved with; README, Speed)"""


@dataclass
class LikelihoodArgs(CommonArgs):
    """The flags of the algorithms that train the policy by weighted likelihood (Eq. 11): CRR and IQL."""

    likelihood: Literal["gaussian", "elbo"] = "gaussian"
    """log pi surrogate: gaussian N(a; a0_hat, sigma^2 I) (Eq. 13) or elbo (Eq. 12)"""
    learn_std: bool = False
    """learn a state-independent log-std for the Eq. 13 Gaussian (default: sigma = 1)"""
    elbo_weights: Annotated[Optional[Literal["eq12", "authors"]], DEFAULT_IN_HELP] = None
    """--likelihood elbo: eq12 weighs the squared noise error summed over action dims by beta_k / (2 alpha_k (1 - abar_(k-1))) (Eq. 12); authors weigh its mean over action dims by beta_k / (2 alpha_k (1 - abar_k)) (sail-sg/edp diffusion.py); both normalised to mean 1 (default: eq12; released: authors)"""


# ==============================================================================================
# The shared rows of the defaults table. A row is one value, or a dict keyed by domain (locomotion, antmaze,
# adroit, kitchen) or by task; a task or domain a row lacks takes the paper preset's value.
# ==============================================================================================
PAPER = {  # the paper's Table 3 and text; "ours" where the paper is silent
    "total_steps": {"locomotion": 2_000_000, "antmaze": 1_000_000, "adroit": 1_000_000, "kitchen": 1_000_000},  # Sec. 5
    "eval_every": 10_000,  # ours: every 10 epochs
    "lr": {"locomotion": 3e-4, "antmaze": 3e-4, "adroit": 3e-5, "kitchen": 3e-4},  # Table 3
    "grad_clip": 5.0,  # Table 3
    "eta": {"locomotion": 1.0, "antmaze": 1.0, "adroit": 0.1, "kitchen": 0.005},  # Table 3's loss weight, every algorithm
    "ema_warmup": "copy",  # ours: TD targets from the policy being trained, not from random initial weights
    "normalize_obs": {"locomotion": "off", "antmaze": "per-dimension", "adroit": "per-dimension", "kitchen": "per-dimension"},  # ours
    "eval_episodes": {"locomotion": 10, "antmaze": 100, "adroit": 10, "kitchen": 10},  # ours on AntMaze (a success rate)
    "eas_samples": 10,  # Sec. 5, Fig. 4
    "dpm_method": "multistep",  # ours (the paper gives order 3 and 15 calls only)
    "dpm_skip": "logSNR",  # ours
    "action_clip": 1.0,  # ours: the dataset's actions as they are
    "acting_policy": "ema",  # ours: the policy that gives the TD-target actions
}
RELEASED = PAPER | {  # sail-sg/edp at b019648 (diffusion/dql.py, diffusion/trainer.py), where it differs from the paper
    "total_steps": 2_000_000,  # trainer.py:81-82, 2000 epochs of 1000 steps on every domain
    "lr": 3e-4,  # dql.py:61 (hps.py's 3e-5 for pen is never read: the trainer takes only `gn` from it)
    "eta": 1.0,  # dql.py:63 guide_coef, the weight of the policy-improvement term of TD3, CRR and IQL alike
    "ema_warmup": "initial",  # dql.py:173-180, 675-678: the target policy keeps its initial weights to step 1000
    "grad_clip": {  # diffusion/hps.py `gn`, read by trainer.py:222
        "halfcheetah-medium": 9.0, "halfcheetah-medium-replay": 2.0, "halfcheetah-medium-expert": 7.0, "hopper-medium": 9.0,
        "hopper-medium-replay": 4.0, "hopper-medium-expert": 5.0, "walker2d-medium": 1.0, "walker2d-medium-replay": 4.0,
        "walker2d-medium-expert": 5.0, "antmaze-umaze": 2.0, "antmaze-umaze-diverse": 3.0, "antmaze-medium-play": 2.0,
        "antmaze-medium-diverse": 1.0, "antmaze-large-play": 10.0, "antmaze-large-diverse": 7.0, "pen-human": 7.0,
        "pen-cloned": 8.0, "kitchen-complete": 9.0, "kitchen-partial": 10.0, "kitchen-mixed": 10.0},
    "normalize_obs": "off",  # trainer.py:89 obs_norm=False
    "eval_episodes": 10,  # trainer.py:84 eval_n_trajs
    "eas_samples": 50,  # trainer.py:106 num_samples
    "dpm_method": "singlestep",  # dpm_solver.py:1196-1209 sample() defaults, called by nets.py:183-189
    "dpm_skip": "time_uniform",  # dpm_solver.py sample() default
    "action_clip": 0.999,  # trainer.py:73, 434-436 clip_action
    "acting_policy": "online",  # trainer.py:271 acts with train_params
}


# the rows of the likelihood flags (LikelihoodArgs), for CRR's and IQL's tables
LIKELIHOOD_PAPER = {"elbo_weights": "eq12"}  # Eq. 12
LIKELIHOOD_RELEASED = {"elbo_weights": "authors"}  # sail-sg/edp diffusion.py:207-208, 727 (CRR's elbo mode)


# The offline demo (make_demo_dataset.py pendulum; no paper task): a quick-start's length under both presets, the run
# the README measured (its policy reaches the controller's score by step 3000-6000)
DEMO = {"total_steps": {"edp/pendulum-mixed-v0": 6000}, "eval_every": {"edp/pendulum-mixed-v0": 1000}}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def preset_value(row, task: Task):
    """A row's value for the task: one value, or the task's or its domain's entry of a dict (None: not given)."""
    if isinstance(row, dict):
        return row.get(task.name, row.get(task.domain))
    return row


def resolve_config(args, task: Task, paper: dict, released: dict):
    """Every flag left unset takes its preset's value on the task (the script's tables); then all are checked."""
    table = paper if args.preset == "paper" else released
    table = table | {key: row for key, row in DEMO.items() if task.name in row}
    filled = {key: preset_value(row, task) for key, row in table.items() if getattr(args, key) is None}
    filled |= {key: preset_value(paper[key], task) for key, value in filled.items() if value is None}
    if args.device == "auto":
        filled["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    config = dataclasses.replace(args, **filled)
    unset = [flag(field.name) for field in dataclasses.fields(config)
             if getattr(config, field.name) is None and field.name not in type(config).none_allowed]
    if unset:  # a row left out of a copied script's tables
        raise UsageError(f"no value for {', '.join(unset)}: give it on the command line, or a row in the script's PAPER"
                         " and RELEASED tables")
    check_config(config)
    return config


def check_config(config):
    """One line for every flag value that would end in a traceback, or in a run that means nothing."""
    nonfinite = [f"{flag(field.name)} {getattr(config, field.name)}" for field in dataclasses.fields(config)
                 if isinstance(getattr(config, field.name), float) and not math.isfinite(getattr(config, field.name))]
    too_small = [flag(name) for name in ("total_steps", "batch_size", "eval_every", "eval_episodes", "eas_samples",
                                         "dpm_steps", "num_diffusion_steps", "log_every", "ema_every")
                 if getattr(config, name) < 1]
    too_large = [f"{flag(name)} (at most {limit:,})" for name, limit in SIZE_LIMITS.items() if getattr(config, name) > limit]
    cuda = re.fullmatch(r"cuda(:(\d+))?", config.device)
    for wrong, message in [
        (nonfinite, f"{', '.join(nonfinite)}: every number must be finite"),
        (too_small, f"{', '.join(too_small)} must be at least 1"),
        (too_large, f"{', '.join(too_large)} would not fit in memory; give a smaller value"),
        (config.threads is not None and config.threads < 0,
         "--threads must be 0 (adapt to the machine's load) or a number of threads"),
        (config.eval_max_steps is not None and config.eval_max_steps < 0,
         "--eval-max-steps must be 0 (the env's own limit) or a number of steps"),
        (not (config.lr > 0 and config.grad_clip > 0 and 0 <= config.gamma < 1 and 0 < config.tau <= 1
              and 0 < config.ema_tau <= 1 and config.eas_temperature > 0 and config.eta >= 0),
         "need --lr > 0, --grad-clip > 0, 0 <= --gamma < 1, 0 < --tau <= 1, 0 < --ema-tau <= 1, --eas-temperature > 0,"
         " --eta >= 0"),
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
        (getattr(config, "likelihood", None) == "elbo" and getattr(config, "learn_std", False),
         "--learn-std learns the sigma of Eq. 13's Gaussian; --likelihood elbo (Eq. 12) has no sigma: drop one of them"),
    ]:
        if wrong:
            raise UsageError(message)
    try:
        make_beta_schedule(config.schedule, config.num_diffusion_steps)
        check_sampler_args(config.sampler, config.dpm_steps, config.dpm_order, config.dpm_method, config.dpm_skip)
    except ValueError as error:
        raise UsageError(str(error)) from None


SIZE_LIMITS = {  # far beyond any run of the paper (256, 1000, 50, 100, 15), and refused before anything is allocated
    "batch_size": 1_000_000, "num_diffusion_steps": 100_000, "eas_samples": 10_000, "eval_episodes": 10_000,
    "dpm_steps": 1000}

