"""EDP + TD3: an Efficient Diffusion Policy trained with TD3(+BC) (Kang et al. 2023, Alg. 1, App. A.1).

    python edp_td3.py --env hopper-medium
    python edp_td3.py --env walker2d-medium-expert --dataset-path walker2d_medium_expert-v2.hdf5
    python edp_td3.py --env hopper-medium --no-action-approx --sampler ddpm   # Diffusion-QL ("w/o AP")
    python edp_td3.py                                                     # the offline demo, made on first use

The critics learn the TD target r + gamma (1 - done) min(Q1', Q2')(s', a') with a' sampled from the EMA
policy by DPM-Solver (Eq. 6). The policy minimises L_diff + eta * L_pi, where L_pi = -lambda Q(s, a0_hat)
is evaluated at the action approximation a0_hat (Eq. 9, Eq. 10): one network call per update, whatever K.

Reading order: flags (Args; the flags every script shares are flags.CommonArgs), the defaults table, the
algorithm, the training loop. Data, runs and evaluation live in tasks.py, runs.py and evaluation.py.
"""

from __future__ import annotations

import copy
import os
import sys
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

import flags
import runs
from agents import Agent, TwinCritic, adam_step, polyak, update_ema_policy
from diffusion import DiffusionPolicy
from errors import UsageError

ALGORITHM = os.path.splitext(os.path.basename(__file__))[0]  # a copy my_edp.py logs and checkpoints as my_edp


# ==============================================================================================
# Command line: the flags of every script (flags.CommonArgs), then TD3's own
# ==============================================================================================
@dataclass
class Args(flags.CommonArgs):
    action_approx: bool = True
    """train with action approximation (Eq. 9); off: back-propagate through the sampler (Diffusion-QL)"""
    alpha: float = 2.0
    """lambda = alpha / mean|Q| normalises L_pi (authors' code: 2.0)"""
    max_q_backup: bool = False
    """TD target: max over 10 next actions per head, then min over heads (Diffusion-QL's AntMaze option; off in the authors' code, dql.py:56)"""


# ==============================================================================================
# Defaults: a flag left unset takes its --preset's value for the task (flags.py holds the shared rows)
# ==============================================================================================
PAPER = flags.PAPER | {  # the authors' reward transforms (sail-sg/edp trainer.py:445-453)
    "reward_transform": {"locomotion": "none", "antmaze": "antmaze", "adroit": "minmax", "kitchen": "minmax"},
}
RELEASED = flags.RELEASED | {"reward_transform": PAPER["reward_transform"]}


# ==============================================================================================
# Algorithm: twin critics + the diffusion policy, trained with TD3(+BC) (Alg. 1, App. A.1)
# ==============================================================================================
class EDPTD3(Agent):
    """update(batch) does one TD3 step: the critics (Eq. 6) and the policy (L_diff + eta * L_pi), both from the
    parameters before the step, as the authors' code (sail-sg/edp dql.py:337-359)."""

    def __init__(self, state_dim: int, action_dim: int, config: Args, device: torch.device):
        if not config.alpha > 0:
            raise UsageError("need --alpha > 0")
        self.config = config
        self.policy = DiffusionPolicy(state_dim, action_dim, config.num_diffusion_steps, config.schedule,
                                      init=config.init).to(device)
        self.ema_policy = copy.deepcopy(self.policy).requires_grad_(False)
        self.critic = TwinCritic(state_dim, action_dim, init=config.init).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.policy_optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameter_groups(), lr=config.lr)  # Q1, Q2 clipped apart
        self.step_count = torch.zeros((), dtype=torch.long, device=device)  # a tensor: no host sync per step

    def critic_loss(self, batch: dict) -> tuple:
        state, next_state = batch["observations"], batch["next_observations"]
        with torch.no_grad():
            if self.config.max_q_backup:  # max over 10 next actions per head, then min over heads
                repeated = next_state.repeat_interleave(10, dim=0)
                q1, q2 = self.critic_target(repeated, self.ema_policy.sample(repeated, **self.sample_kwargs))
                next_q = torch.min(q1.view(-1, 10).max(1, keepdim=True).values, q2.view(-1, 10).max(1, keepdim=True).values)
            else:
                next_q = self.critic_target.q_min(next_state, self.ema_policy.sample(next_state, **self.sample_kwargs))
            target = batch["rewards"] + (1 - batch["dones"]) * self.config.gamma * next_q  # Eq. 6
        q1, q2 = self.critic(state, batch["actions"])
        return F.mse_loss(q1, target) + F.mse_loss(q2, target), q1

    def policy_loss(self, batch: dict) -> tuple:
        state, action = batch["observations"], batch["actions"]
        if self.config.action_approx:  # Eq. 9: one network call gives both L_diff and a0_hat
            approximation = self.policy.approximate_action(state, action)
            diffusion_loss, new_action = approximation.diffusion_loss(), approximation.action
        else:  # Diffusion-QL: sample through the whole chain and back-propagate through it
            diffusion_loss = self.policy.loss(state, action)
            new_action = self.policy.sample(state, requires_grad=True, **self.sample_kwargs)
        q = self.either_head(torch.cat([state, new_action], dim=-1))  # App. A.1: Q1 or Q2, equal odds
        lam = self.config.alpha / q.abs().mean().detach()  # TD3+BC's normalisation (Eq. 16)
        q_loss = -lam * q.mean()  # L_pi, Eq. 10: maximise Q (Eq. 7) at the approximated action
        return diffusion_loss + self.config.eta * q_loss, diffusion_loss, q_loss

    def either_head(self, state_action: torch.Tensor) -> torch.Tensor:
        """Q1 or Q2 with equal odds, drawn on the device: Q1's call with Q2's weights swapped in by torch.where,
        so there is no Python branch (one graph when compiled) and no second head to evaluate."""
        use_q1 = torch.rand((), device=state_action.device) < 0.5
        weights = {name: torch.where(use_q1, q1_weight, q2_weight) for (name, q1_weight), q2_weight
                   in zip(self.critic.q1.named_parameters(), self.critic.q2.parameters())}
        return torch.func.functional_call(self.critic.q1, weights, (state_action,))

    def update(self, batch: dict) -> dict:
        self.step_count += 1
        critic_loss, q = self.critic_loss(batch)
        policy_loss, diffusion_loss, q_loss = self.policy_loss(batch)  # against the critics before their step
        policy_grad = adam_step(policy_loss, self.policy_optimizer, self.config.grad_clip)  # reaches the policy only
        critic_grad = adam_step(critic_loss, self.critic_optimizer, self.config.grad_clip)

        polyak(self.critic_target, self.critic, self.config.tau)
        update_ema_policy(self.ema_policy, self.policy, self.step_count, self.config)
        return dict(critic_loss=critic_loss.detach(), policy_loss=policy_loss.detach(), diffusion_loss=diffusion_loss.detach(),
                    q_loss=q_loss.detach(), q_mean=q.detach().mean(), critic_grad_norm=critic_grad, policy_grad_norm=policy_grad)


# ==============================================================================================
# Training loop
# ==============================================================================================
def train(config: Args) -> dict:
    """Sample a batch on the device, update, log every --log-every steps, evaluate with EAS and save every
    --eval-every steps; Ctrl-C or SIGTERM ends the loop with a checkpoint (continue with --resume)."""
    with runs.Run(config, ALGORITHM) as run:  # locked run folder, data on the device, evaluator, wandb
        config = run.config  # as the run completed it: its folder, its thread count
        agent = run.start(EDPTD3(run.state_dim, run.action_dim, config, run.device))  # --resume restores it
        for step in range(int(agent.step_count) + 1, config.total_steps + 1):
            run.log_training(step, agent.update(run.buffer.sample(config.batch_size)))
            if run.evaluation_due(step):
                run.evaluate(step)
            if run.stopping:
                break
    return run.result


def main(argv: Optional[list] = None) -> int:
    return runs.main(Args, PAPER, RELEASED, EDPTD3, train, ALGORITHM, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
