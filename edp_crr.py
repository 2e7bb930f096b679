"""EDP + CRR: an Efficient Diffusion Policy trained with Critic Regularized Regression (App. A.2).

    python edp_crr.py --env hopper-medium
    python edp_crr.py --env pen-human --likelihood elbo          # Eq. 12 instead of Eq. 13
    python edp_crr.py                                            # the offline demo, made on first use

The diffusion policy is trained by weighted maximum likelihood (Eq. 11): the intractable log pi(a|s)
is replaced by the Gaussian surrogate N(a; a0_hat, sigma^2 I) around the action approximation
(Eq. 13), or by the ELBO-weighted noise error (Eq. 12).

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
# Command line: the flags of every script and of likelihood training (flags.py), then CRR's own
# ==============================================================================================
@dataclass
class Args(flags.LikelihoodArgs):
    beta: float = 1.0
    """CRR temperature: weight exp(A / beta) (App. A.2)"""
    weight_clip: float = 20.0
    """upper clip of the weight exp(A / beta) (authors' code: 20)"""
    advantage_samples: int = 10
    """N actions from N(a0_hat, sigma^2 I) whose mean min-Q is the baseline of A (App. A.2)"""


# ==============================================================================================
# Defaults: a flag left unset takes its --preset's value for the task (flags.py holds the shared rows)
# ==============================================================================================
PAPER = flags.PAPER | flags.LIKELIHOOD_PAPER | {
    "reward_transform": {"locomotion": "none", "antmaze": "antmaze", "adroit": "minmax", "kitchen": "minmax"},
}
RELEASED = flags.RELEASED | flags.LIKELIHOOD_RELEASED | {"reward_transform": PAPER["reward_transform"]}


# ==============================================================================================
# Algorithm: twin critics + the diffusion policy, trained with CRR (App. A.2)
# ==============================================================================================
def crr_weights(q_data: torch.Tensor, q_samples: torch.Tensor, beta: float, clip: float) -> torch.Tensor:
    """exp(A / beta) clipped, with A = Q(s, a) - mean_j Q(s, a_j) (Eq. 21); q_samples is (B, N)."""
    advantage = q_data - q_samples.mean(dim=1, keepdim=True)
    return torch.exp(advantage / beta).clamp(max=clip)


class EDPCRR(Agent):
    """update(batch): the critics as in TD3 (Eq. 6) and the policy by weighted likelihood (Eq. 11), both from the
    parameters before the step, as the authors' code (sail-sg/edp dql.py:470-492)."""

    def __init__(self, state_dim: int, action_dim: int, config: Args, device: torch.device):
        if config.beta <= 0 or config.weight_clip <= 0 or config.advantage_samples < 1:
            raise UsageError("need --beta > 0, --weight-clip > 0 and --advantage-samples >= 1")
        self.config = config
        self.policy = DiffusionPolicy(state_dim, action_dim, config.num_diffusion_steps, config.schedule,
                                      learn_std=config.learn_std, init=config.init).to(device)
        self.ema_policy = copy.deepcopy(self.policy).requires_grad_(False)
        self.critic = TwinCritic(state_dim, action_dim, init=config.init).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.policy_optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameter_groups(), lr=config.lr)  # Q1, Q2 clipped apart
        self.step_count = torch.zeros((), dtype=torch.long, device=device)  # a tensor: no host sync per step

    def critic_loss(self, batch: dict) -> tuple:
        with torch.no_grad():
            next_state = batch["next_observations"]
            next_q = self.critic_target.q_min(next_state, self.ema_policy.sample(next_state, **self.sample_kwargs))
            target = batch["rewards"] + (1 - batch["dones"]) * self.config.gamma * next_q  # Eq. 6
        q1, q2 = self.critic(batch["observations"], batch["actions"])
        return F.mse_loss(q1, target) + F.mse_loss(q2, target), q1

    def policy_loss(self, batch: dict) -> tuple:
        state, action = batch["observations"], batch["actions"]
        approximation = self.policy.approximate_action(state, action)  # Eq. 9, one network call
        with torch.no_grad():  # the weight carries no gradient
            n = self.config.advantage_samples
            sigma = self.policy.log_std.clamp(-5.0, 2.0).exp()
            samples = approximation.action.repeat_interleave(n, dim=0)
            samples = samples + sigma * torch.randn_like(samples)  # a_j ~ N(a0_hat, sigma^2 I), unclipped as the authors'
            q_samples = self.critic.q_min(state.repeat_interleave(n, dim=0), samples).view(-1, n)
            weight = crr_weights(self.critic.q_min(state, action), q_samples, self.config.beta, self.config.weight_clip)
        weighted_loss = self.policy.weighted_likelihood_loss(action, approximation, weight, self.config.likelihood,
                                                              self.config.elbo_weights)  # Eq. 20
        diffusion_loss = approximation.diffusion_loss()
        return diffusion_loss + self.config.eta * weighted_loss, diffusion_loss, weighted_loss, weight

    def update(self, batch: dict) -> dict:
        self.step_count += 1
        critic_loss, q = self.critic_loss(batch)
        policy_loss, diffusion_loss, weighted_loss, weight = self.policy_loss(batch)  # critics before their step
        policy_grad = adam_step(policy_loss, self.policy_optimizer, self.config.grad_clip)
        critic_grad = adam_step(critic_loss, self.critic_optimizer, self.config.grad_clip)

        polyak(self.critic_target, self.critic, self.config.tau)
        update_ema_policy(self.ema_policy, self.policy, self.step_count, self.config)
        return dict(critic_loss=critic_loss.detach(), policy_loss=policy_loss.detach(), diffusion_loss=diffusion_loss.detach(),
                    weighted_loss=weighted_loss.detach(), weight_mean=weight.mean(), q_mean=q.detach().mean(),
                    critic_grad_norm=critic_grad, policy_grad_norm=policy_grad)


# ==============================================================================================
# Training loop
# ==============================================================================================
def train(config: Args) -> dict:
    """Sample a batch on the device, update, log every --log-every steps, evaluate with EAS and save every
    --eval-every steps; Ctrl-C or SIGTERM ends the loop with a checkpoint (continue with --resume)."""
    with runs.Run(config, ALGORITHM) as run:  # locked run folder, data on the device, evaluator, wandb
        config = run.config  # as the run completed it: its folder, its thread count
        agent = run.start(EDPCRR(run.state_dim, run.action_dim, config, run.device))  # --resume restores it
        for step in range(int(agent.step_count) + 1, config.total_steps + 1):
            run.log_training(step, agent.update(run.buffer.sample(config.batch_size)))
            if run.evaluation_due(step):
                run.evaluate(step)
            if run.stopping:
                break
    return run.result


def main(argv: Optional[list] = None) -> int:
    return runs.main(Args, PAPER, RELEASED, EDPCRR, train, ALGORITHM, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
