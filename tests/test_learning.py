"""Learning tests where the right answer is known, with thresholds set from measured baselines.

1. A one-step task with four action modes (make_demo_dataset.OneStepModesEnv): the data picks the modes with
   probabilities 0.4, 0.3, 0.2, 0.1 and the rarest mode pays the most. Trained with RL, EAS and the policy's own
   samples must choose the best mode far more often than behaviour cloning does, with selection (BC + EAS) or
   without; trained by pure behaviour cloning, the data's proportions stay.
2. A three-state chain where the state and bootstrapping matter: the action that goes on alternates in sign
   with the state, and going on pays only at the end of the chain, through two TD backups. A broken TD target
   (no bootstrap, bootstrapping through terminals) makes the agent stop early.
"""

import math

import numpy as np
import pytest
import torch

from make_demo_dataset import OneStepModesEnv
from test_scripts import agent_class, resolve, train
from test_updates import one_thread  # noqa: F401  (a fixture)

FAST = ["--num-diffusion-steps", "100", "--dpm-steps", "5", "--eval-episodes", "50", "--wandb-mode", "disabled",
        "--log-every", "100"]


def acting_policy(agent):
    return agent.ema_policy if agent.config.acting_policy == "ema" else agent.policy


# -- 1. one step, four modes -------------------------------------------------------------------------
def mode_frequencies(agent, selection=True):
    """Frequencies of the four modes among actions at 2000 random states: by EAS, or the acting policy's own."""
    torch.manual_seed(0)
    state = torch.rand(2000, 2) * 2 - 1
    actions = agent.act(state) if selection else acting_policy(agent).sample(state, **agent.sample_kwargs)
    return np.bincount(OneStepModesEnv.nearest_mode(actions.cpu().numpy()), minlength=4) / len(actions)


def train_on_modes(script, datasets, tmp_path, *flags):
    return train(script, ["--env", datasets["modes"], "--run-dir", str(tmp_path / "run"), *FAST, *flags])


# Best-mode frequency, by EAS (10 candidates) / by the policy's own samples, measured with these flags at 800 steps,
# seeds 0 and 1 (this machine, torch 2.x CPU):
#   RL:                TD3 1.00 / 1.00, 1.00 / 1.00;  CRR 0.53 / 0.31, 0.69 / 0.36;  IQL 0.76 / 0.37, 0.64 / 0.31
#   BC (--eta 0) + EAS: TD3 0.18 / 0.07, 0.28 / 0.11;  CRR 0.21 / 0.10, 0.19 / 0.08;  IQL 0.25 / 0.11, 0.27 / 0.11
#   untrained:          0.25 / 0.25 (the untrained policy spreads over all four quadrants)
# EAS alone nearly doubles BC's share of the best mode (0.1 -> up to 0.28). The thresholds sit between the best
# baseline and the worst RL run, with a margin either side; the policy's own threshold is twice BC's 0.11.
MODE_THRESHOLDS = {"edp_td3": (0.8, 0.8), "edp_crr": (0.4, 0.2), "edp_iql": (0.4, 0.2)}


@pytest.mark.parametrize("script", ["edp_td3", "edp_crr", "edp_iql"])
def test_rl_picks_the_best_mode_far_more_often_than_behaviour_cloning_with_selection(script, datasets, tmp_path):
    """Policy improvement, not selection alone: EAS beats BC + EAS, and the policy's own samples beat BC's."""
    agent = train_on_modes(script, datasets, tmp_path, "--total-steps", "800", "--eval-every", "800")
    best = OneStepModesEnv.MODE_REWARDS.argmax()
    with_selection, own = mode_frequencies(agent)[best], mode_frequencies(agent, selection=False)[best]
    eas_threshold, own_threshold = MODE_THRESHOLDS[script]
    assert with_selection > eas_threshold and own > own_threshold, (with_selection, own)


def test_behaviour_cloning_keeps_the_data_proportions(datasets, tmp_path):
    # eta = 0 removes L_pi, one EAS sample removes the selection: a pure diffusion BC policy
    agent = train_on_modes("edp_td3", datasets, tmp_path, "--total-steps", "1500", "--eval-every", "1500", "--eta", "0",
                           "--eas-samples", "1", "--lr", "3e-3")
    np.testing.assert_allclose(mode_frequencies(agent), OneStepModesEnv.DATA_PROPORTIONS, atol=0.07)


# -- 2. a chain where the state and bootstrapping matter ----------------------------------------------
CHAIN, FINAL_REWARD, STOP_REWARD = 3, 10.0, 1.0


def go_on_action(position):
    """+0.6 at even positions, -0.6 at odd ones: a policy blind to the state is right half the time."""
    return 0.6 - 1.2 * (position % 2)


def chain_batch(n, generator, p_go_on=0.3):
    """Transitions of the chain, states one-hot. At position i the behaviour goes on with probability 0.3 (action
    go_on_action(i) + noise): reward 0 and position i + 1, or at the last position reward 10 and the end. Else it
    stops (the opposite action): reward 1 and the end. After an end the next state is position 0, as in a stream of
    episodes (a done transition must bootstrap nothing from it). With gamma = 0.99, Q(go on) = 9.8, 9.9, 10 against
    Q(stop) = 1; without bootstrapping Q(go on) = 0 at positions 0 and 1; bootstrapping through the end (no
    1 - done) makes stopping at position i worth 1 + 0.99 V(0), more than going on at positions 0 and 1."""
    position = torch.randint(0, CHAIN, (n,), generator=generator)
    go_on = torch.rand(n, generator=generator) < p_go_on
    direction = go_on_action(position).float()
    action = torch.where(go_on, direction, -direction)[:, None] + 0.05 * torch.randn(n, 1, generator=generator)
    last = position == CHAIN - 1
    eye = torch.eye(CHAIN)
    return dict(observations=eye[position], actions=action.clamp(-1, 1),
                rewards=torch.where(go_on, torch.where(last, FINAL_REWARD, 0.0), STOP_REWARD)[:, None],
                next_observations=eye[torch.where(go_on & ~last, position + 1, 0)],
                dones=(~go_on | last).float()[:, None])


def go_on_frequencies(agent, n=500):
    """Per position: the share of actions that go on, by EAS and by the acting policy's own samples, all positions
    in one batch (EAS must score each state's candidates at that state)."""
    torch.manual_seed(0)
    position = torch.arange(CHAIN).repeat(n)
    state, sign = torch.eye(CHAIN)[position], go_on_action(position)[:, None]
    goes_on = [(agent.act(state) * sign > 0).float(),
               (acting_policy(agent).sample(state, **agent.sample_kwargs) * sign > 0).float()]
    return [np.array([g[position == i].mean().item() for i in range(CHAIN)]) for g in goes_on]


# Shares of going on at positions 0, 1, 2 by EAS, and the mean share of the policy's own samples, measured after 400
# updates (RL: the worst of seeds 0, 1, 2; BC = `eta = 0`, the same critic training, seed 0):
#   RL:        TD3 EAS 1.00, 1.00, 1.00, own 0.97;  CRR EAS 0.97, 0.98, 0.99, own 0.67;  IQL EAS 0.90, 0.87, 1.00, own 0.67
#   BC + EAS:  TD3 EAS 0.59, 0.78, 0.99, own 0.41;  CRR EAS 0.71, 0.71, 0.98, own 0.43;  IQL EAS 0.69, 0.91, 0.97, own 0.37
#   untrained: EAS 0.47, 0.55, 0.42, own 0.50
# Position 0 is the one that needs two backups. Thresholds: (EAS at every position, EAS at position 0, mean of the
# policy's own shares), each between the best baseline and the worst RL run.
CHAIN_THRESHOLDS = {"edp_td3": (0.9, 0.9, 0.8), "edp_crr": (0.85, 0.85, 0.58), "edp_iql": (0.75, 0.8, 0.58)}
# min(Q1, Q2) of stopping, whose true value is its reward 1 (no bootstrap after an end): measured 0.59 to 1.29 (all
# algorithms, seeds 0-2); bootstrapping through the end (no 1 - done) makes it 21 to 31 after the same 400 updates.
STOP_VALUE_RANGE = (0.3, 2.5)


@pytest.mark.parametrize("script", ["edp_td3", "edp_crr", "edp_iql"])
def test_rl_goes_on_along_a_chain_whose_reward_comes_two_backups_later(script, one_thread):
    """Trained on the chain's transitions, EAS and the policy's own samples go on at every position (the action's
    sign set by the state), most of all where the reward is two backups away, and stopping keeps its one-step
    value: a TD target without the bootstrap, or bootstrapping through ends, fails."""
    config = resolve(script, "hopper-medium", device="cpu", num_diffusion_steps=50, dpm_steps=5, batch_size=64,
                     tau=0.05, lr=1e-3)  # a faster target critic and lr: 400 updates propagate the reward back
    torch.manual_seed(0)
    agent = agent_class(script)(CHAIN, 1, config, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    for _ in range(400):
        agent.update(chain_batch(64, generator))
    with_selection, own = go_on_frequencies(agent)
    everywhere, first, own_mean = CHAIN_THRESHOLDS[script]
    assert with_selection.min() > everywhere and with_selection[0] > first and own.mean() > own_mean, (with_selection, own)
    with torch.no_grad():
        stop = torch.tensor([[-go_on_action(position)] for position in range(CHAIN)])
        stop_values = agent.critic.q_min(torch.eye(CHAIN), stop).squeeze(1)
    assert ((stop_values > STOP_VALUE_RANGE[0]) & (stop_values < STOP_VALUE_RANGE[1])).all(), stop_values


# -- the weights and losses of CRR and IQL against hand-computed values -----------------------------
def test_expectile_loss_by_hand():
    from edp_iql import expectile_loss

    difference = torch.tensor([2.0, -1.0, 0.5, -3.0])
    # |0.7 - 1(u < 0)| u^2: 0.7*4, 0.3*1, 0.7*0.25, 0.3*9
    torch.testing.assert_close(expectile_loss(difference, 0.7), torch.tensor([2.8, 0.3, 0.175, 2.7]))


def test_iql_weights_by_hand():
    from edp_iql import iql_weights

    q, v = torch.tensor([[1.0], [0.0], [5.0]]), torch.tensor([[0.5], [0.5], [0.0]])
    expected = torch.tensor([[math.exp(1.5)], [math.exp(-1.5)], [100.0]])  # temperature 3, clip 100
    torch.testing.assert_close(iql_weights(q, v, 3.0, 100.0), expected)


def test_crr_weights_by_hand():
    from edp_crr import crr_weights

    q_data = torch.tensor([[1.0], [2.0], [10.0]])
    q_samples = torch.tensor([[0.0, 1.0, 2.0], [3.0, 3.0, 3.0], [0.0, 0.0, 0.0]])  # means 1, 3, 0
    expected = torch.tensor([[1.0], [math.exp(-1.0)], [20.0]])  # beta 1, clip 20
    torch.testing.assert_close(crr_weights(q_data, q_samples, 1.0, 20.0), expected)
