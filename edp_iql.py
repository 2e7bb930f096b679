"""EDP + IQL: an Efficient Diffusion Policy trained with Implicit Q-Learning (App. A.3).

    python edp_iql.py --env antmaze-medium-play
    python edp_iql.py --env kitchen-mixed --likelihood elbo      # Eq. 12 instead of Eq. 13
    python edp_iql.py                                            # the offline demo, made on first use

Policy evaluation never queries the policy: V(s) is fit by expectile regression to min(Q1, Q2) of
the target critics and Q to r + gamma V(s'). The diffusion policy is trained by weighted maximum
likelihood (Eq. 11) with the weight exp(beta * A), A = Q - V, through the Gaussian surrogate
N(a; a0_hat, sigma^2 I) around the action approximation (Eq. 13) or the ELBO form (Eq. 12).

Reading order: flags (Args; the flags every script shares are flags.CommonArgs), the defaults table, the
algorithm, the training loop. Data, runs and evaluation live in tasks.py, runs.py and evaluation.py.
"""

from __future__ import annotations

import copy
import os
import sys
from dataclasses import dataclass
from typing import Annotated, Optional

import torch
import torch.nn.functional as F

import flags
import runs
from agents import Agent, TwinCritic, adam_step, mlp, polyak, update_ema_policy
from diffusion import DiffusionPolicy
from errors import UsageError

ALGORITHM = os.path.splitext(os.path.basename(__file__))[0]  # a copy my_edp.py logs and checkpoints as my_edp


# ==============================================================================================
# Command line: the flags of every script and of likelihood training (flags.py), then IQL's own
# ==============================================================================================
@dataclass
class Args(flags.LikelihoodArgs):
    expectile: Annotated[Optional[float], flags.DEFAULT_IN_HELP] = None
    """expectile tau of the V regression (default: 0.7; 0.9 on antmaze; App. A.3; released: 0.7)"""
    beta: Annotated[Optional[float], flags.DEFAULT_IN_HELP] = None
    """inverse temperature of the IQL paper: weight exp(beta * A) (default: 1, App. A.3; released: 3)"""
    weight_clip: float = 100.0
    """upper clip of the weight exp(beta * A) (authors' code: 100)"""


# ==============================================================================================
# Defaults: a flag left unset takes its --preset's value for the task (flags.py holds the shared rows)
# ==============================================================================================
PAPER = flags.PAPER | flags.LIKELIHOOD_PAPER | {
    "expectile": {"locomotion": 0.7, "antmaze": 0.9, "adroit": 0.7, "kitchen": 0.7},  # App. A.3
    "beta": 1.0,  # App. A.3: "a temperature of beta = 1"
    # the authors' reward transforms (sail-sg/edp trainer.py:445-453)
    "reward_transform": {"locomotion": "none", "antmaze": "antmaze-iql", "adroit": "minmax", "kitchen": "minmax"},
}
RELEASED = flags.RELEASED | flags.LIKELIHOOD_RELEASED | {  # sail-sg/edp at b019648
    "expectile": 0.7,  # dql.py:84
    "beta": 3.0,  # dql.py:85 awr_temperature, multiplying A (dql.py:584)
    # README.md:51 runs IQL with --norm_reward=True (utilities/traj_dataset.py:142-147; never on AntMaze, trainer.py:422-424)
    "reward_transform": PAPER["reward_transform"] | {"locomotion": "returns"},
}


# ==============================================================================================
# Algorithm: twin critics, a value network and the diffusion policy, trained with IQL (App. A.3)
# ==============================================================================================
def expectile_loss(difference: torch.Tensor, expectile: float) -> torch.Tensor:
    """L_2^tau(u) = |tau - 1(u < 0)| u^2 with u = Q - V (Eq. 22), elementwise."""
    return torch.abs(expectile - (difference < 0).float()) * difference.pow(2)


def iql_weights(q: torch.Tensor, v: torch.Tensor, beta: float, clip: float) -> torch.Tensor:
    """exp(beta * A) clipped, with A = Q(s, a) - V(s) (the paper's f_IQL, Sec. 4.3, with 1 / tau_IQL = beta)."""
    return torch.exp((q - v) * beta).clamp(max=clip)


class EDPIQL(Agent):
    """update(batch): V (expectile regression), then the policy (Eq. 11), then Q (Eq. 22), as the authors."""

    def __init__(self, state_dim: int, action_dim: int, config: Args, device: torch.device):
        if not 0 < config.expectile < 1 or config.beta <= 0 or config.weight_clip <= 0:
            raise UsageError("need 0 < --expectile < 1, --beta > 0 and --weight-clip > 0")
        self.config = config
        self.policy = DiffusionPolicy(state_dim, action_dim, config.num_diffusion_steps, config.schedule,
                                      learn_std=config.learn_std, init=config.init).to(device)
        self.ema_policy = copy.deepcopy(self.policy).requires_grad_(False)
        self.critic = TwinCritic(state_dim, action_dim, init=config.init).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = mlp(state_dim, 1, init=config.init).to(device)
        self.policy_optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameter_groups(), lr=config.lr)  # Q1, Q2 clipped apart
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

        # policy: weighted likelihood with exp(beta * A), A = Q - V with the updated V (App. A.3; dql.py:612, 580)
        approximation = self.policy.approximate_action(state, action)  # Eq. 9, one network call
        with torch.no_grad():
            weight = iql_weights(target_q, self.value(state), self.config.beta, self.config.weight_clip)
        weighted_loss = self.policy.weighted_likelihood_loss(action, approximation, weight, self.config.likelihood,
                                                              self.config.elbo_weights)  # Eq. 11
        diffusion_loss = approximation.diffusion_loss()
        policy_loss = diffusion_loss + self.config.eta * weighted_loss
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


# ==============================================================================================
# Training loop
# ==============================================================================================
def train(config: Args) -> dict:
    """Sample a batch on the device, update, log every --log-every steps, evaluate with EAS and save every
    --eval-every steps; Ctrl-C or SIGTERM ends the loop with a checkpoint (continue with --resume)."""
    with runs.Run(config, ALGORITHM) as run:  # locked run folder, data on the device, evaluator, wandb
        config = run.config  # as the run completed it: its folder, its thread count
        agent = run.start(EDPIQL(run.state_dim, run.action_dim, config, run.device))  # --resume restores it
        for step in range(int(agent.step_count) + 1, config.total_steps + 1):
            run.log_training(step, agent.update(run.buffer.sample(config.batch_size)))
            if run.evaluation_due(step):
                run.evaluate(step)
            if run.stopping:
                break
    return run.result


def main(argv: Optional[list] = None) -> int:
    return runs.main(Args, PAPER, RELEASED, EDPIQL, train, ALGORITHM, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
