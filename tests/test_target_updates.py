"""The target networks after one update() of each algorithm (issue 27): the target critics move by tau towards
the critics (Polyak, every step) and the EMA policy by ema_tau towards the policy, with values typed here and
differing from the defaults, so that a rate taken from the wrong flag, a swapped lerp or a missing call shows.
tests/test_updates.py checks the losses and steps of the same update()s by hand; this adds IQL's target critics
(its update has no TD target sample, so the TD3 / CRR critic test does not reach it) and every script's EMA."""

import pytest
import torch

from test_scripts import SCRIPTS
from test_updates import S, V, exposing_adam, linear, make_agent, make_batch, next_action, run_update, snapshot

TAU, EMA_TAU = 0.3, 0.2  # neither the default 0.005 nor each other


@pytest.mark.parametrize("script", SCRIPTS)
def test_one_update_moves_target_critics_by_tau_and_the_ema_policy_by_ema_tau(script, monkeypatch):
    """target' = (1 - 0.3) target + 0.3 critic' and ema' = (1 - 0.2) ema + 0.2 policy', with critic' and policy'
    the networks AFTER this update's optimiser steps (ema_start 0, ema_every 1: an EMA step at step 1)."""
    agent = make_agent(script, tau=TAU, ema_tau=EMA_TAU, ema_start=0, ema_every=1)
    if script == "edp_iql":  # a float64 V, as the batch
        agent.value = linear((V[0], [], 0.0), in_dim=S)
        agent.value_optimizer = exposing_adam(agent.value.parameters())
    with torch.no_grad():  # the EMA policy away from the policy: a copy and an average differ
        for param in agent.ema_policy.parameters():
            param.add_(0.5)
    old_critic, old_target, old_ema = snapshot(agent.critic), snapshot(agent.critic_target), snapshot(agent.ema_policy)
    old_policy = snapshot(agent.policy)

    run_update(agent, make_batch(), monkeypatch, next_action)

    new_critic, new_policy = snapshot(agent.critic), snapshot(agent.policy)
    assert any((new - old).abs().max() > 1e-3 for new, old in zip(new_critic, old_critic))  # the critics did step
    assert any((new - old).abs().max() > 1e-6 for new, old in zip(new_policy, old_policy))  # and the policy
    for index, (target, old, critic) in enumerate(zip(agent.critic_target.parameters(), old_target, new_critic)):
        torch.testing.assert_close(target.detach(), (1 - TAU) * old + TAU * critic, msg=f"target critic, parameter {index}")
    for index, (ema, old, policy) in enumerate(zip(agent.ema_policy.parameters(), old_ema, new_policy)):
        torch.testing.assert_close(ema.detach(), (1 - EMA_TAU) * old + EMA_TAU * policy, msg=f"EMA policy, parameter {index}")
