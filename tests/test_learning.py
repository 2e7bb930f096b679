"""Learning tests where the right answer is known: a one-step task with four action modes.

The data picks the modes with probabilities 0.4, 0.3, 0.2, 0.1 and the rarest mode pays the most
(make_demo_dataset.OneStepModesEnv). Trained with RL, the policy and EAS must choose the best mode
far more often than the data does; trained by pure behaviour cloning, the data's proportions stay.
"""

import math

import numpy as np
import pytest
import torch

from make_demo_dataset import OneStepModesEnv
from test_scripts import train

FAST = ["--num-diffusion-steps", "100", "--dpm-steps", "5", "--eval-episodes", "50", "--wandb-mode", "disabled",
        "--log-every", "100"]


def mode_frequencies(script, datasets, tmp_path, *flags):
    agent = train(script, ["--env", datasets["modes"], "--run-dir", str(tmp_path / "run"), *FAST, *flags])
    torch.manual_seed(0)
    actions = agent.act(torch.rand(2000, 2) * 2 - 1).cpu().numpy()
    return np.bincount(OneStepModesEnv.nearest_mode(actions), minlength=4) / len(actions)


@pytest.mark.parametrize("script", ["edp_td3", "edp_crr", "edp_iql"])
def test_rl_picks_the_best_mode_far_more_often_than_the_data(script, datasets, tmp_path):
    frequencies = mode_frequencies(script, datasets, tmp_path, "--total-steps", "800", "--eval-every", "800")
    best = OneStepModesEnv.MODE_REWARDS.argmax()
    assert frequencies[best] > 0.5, frequencies  # the data: 0.1


def test_behaviour_cloning_keeps_the_data_proportions(datasets, tmp_path):
    # eta = 0 removes L_pi, one EAS sample removes the selection: a pure diffusion BC policy
    frequencies = mode_frequencies("edp_td3", datasets, tmp_path, "--total-steps", "1500", "--eval-every", "1500",
                                   "--eta", "0", "--eas-samples", "1", "--lr", "3e-3")
    np.testing.assert_allclose(frequencies, OneStepModesEnv.DATA_PROPORTIONS, atol=0.07)


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
