"""--compile: torch.compile of the whole update step computes what the eager step computes, and the pieces that
make it one graph (the functional Adam step, the EMA schedule as a tensor, TD3's critic head drawn on the device)
each do what the eager code they replaced did."""

import copy
import importlib
import types

import pytest
import torch
import torch.nn as nn

from agents import adam_step, update_ema_policy
from test_scripts import agent_class, resolve

STATE_DIM, ACTION_DIM, BATCH = 11, 3, 32


def make_agent(script, **overrides):
    config = resolve(script, "hopper-medium", device="cpu", num_diffusion_steps=50, dpm_steps=3, **overrides)
    return agent_class(script)(STATE_DIM, ACTION_DIM, config, torch.device("cpu"))


def make_batch(seed):
    generator = torch.Generator().manual_seed(seed)
    return dict(observations=torch.randn(BATCH, STATE_DIM, generator=generator),
                actions=torch.rand(BATCH, ACTION_DIM, generator=generator) * 2 - 1,
                rewards=torch.randn(BATCH, 1, generator=generator),
                next_observations=torch.randn(BATCH, STATE_DIM, generator=generator),
                dones=(torch.rand(BATCH, 1, generator=generator) < 0.1).float())


@pytest.mark.parametrize("script, overrides", [("edp_td3", {}), ("edp_td3", dict(max_q_backup=True)),  # AntMaze's
                                               ("edp_crr", {}), ("edp_iql", {})])
def test_a_compiled_update_computes_what_an_eager_one_does(script, overrides):
    torch.manual_seed(0)
    eager = make_agent(script, **overrides)
    compiled = copy.deepcopy(eager)
    compiled.compile()
    for step in range(3):
        torch.manual_seed(100 + step)  # the same random draws for both (compiled: torch's eager generator)
        eager_metrics = eager.update(make_batch(step))
        torch.manual_seed(100 + step)
        compiled_metrics = compiled.update(make_batch(step))
        for key, value in eager_metrics.items():
            torch.testing.assert_close(compiled_metrics[key], value, rtol=1e-4, atol=1e-5, msg=f"{key} at step {step}")
    assert int(compiled.step_count) == int(eager.step_count) == 3
    # Adam's first steps move each weight by about lr = 3e-4; a gradient component near Adam's eps may move by a
    # different amount when float sums are ordered differently (seen: 1 weight of 65536 off by 2e-5); anything wrong
    # in the compiled step (a missed update, the wrong head or noise) moves many by about lr
    for name in eager.checkpointed:
        if isinstance(getattr(eager, name), nn.Module):
            for (key, value), compiled_value in zip(getattr(eager, name).state_dict().items(),
                                                    getattr(compiled, name).state_dict().values()):
                difference = (compiled_value - value).abs()
                assert difference.max() < 1e-4 and (difference > 1e-6).float().mean() < 1e-3, f"{name}.{key}"


@pytest.mark.parametrize("optimizer_class, groups, weight_decay", [
    (torch.optim.Adam, 1, 0.0), (torch.optim.Adam, 2, 0.0), (torch.optim.AdamW, 2, 0.1)])
def test_adam_step_is_backward_clip_grad_norm_and_adam(optimizer_class, groups, weight_decay):
    """adam_step = backward, clip_grad_norm_ of each parameter group on its own (one group per network, as the
    authors clip Q1 and Q2 apart), optimizer.step(); AdamW's decoupled weight decay included."""
    torch.manual_seed(0)
    network = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1))
    reference = copy.deepcopy(network)

    def parameter_groups(model):
        layers = [list(model[0].parameters()), list(model[2].parameters())]
        return [dict(params=layers[0] + layers[1])] if groups == 1 else [dict(params=layers[0]), dict(params=layers[1], lr=3e-3)]

    optimizer = optimizer_class(parameter_groups(network), lr=1e-2, weight_decay=weight_decay)
    reference_optimizer = optimizer_class(parameter_groups(reference), lr=1e-2, weight_decay=weight_decay)
    for step in range(6):
        x, y = torch.randn(64, 5), torch.randn(64, 1) * (1 + 10 * (step % 2))  # odd steps: large gradients, clipped
        norm = adam_step(((network(x) - y) ** 2).mean(), optimizer, 1.0)
        reference_optimizer.zero_grad()
        ((reference(x) - y) ** 2).mean().backward()
        reference_norms = [nn.utils.clip_grad_norm_(group["params"], 1.0) for group in reference_optimizer.param_groups]
        reference_optimizer.step()
        torch.testing.assert_close(norm, torch.stack(reference_norms).max())
    assert norm > 1.0  # the clipping was exercised
    for value, reference_value in zip(network.parameters(), reference.parameters()):
        torch.testing.assert_close(value, reference_value)
    state, reference_state = optimizer.state_dict()["state"], reference_optimizer.state_dict()["state"]
    for key in reference_state:  # the checkpoint of either loads into the other
        for name, value in reference_state[key].items():
            torch.testing.assert_close(state[key][name], value)


def test_adam_step_refuses_what_it_does_not_implement():
    network = nn.Linear(3, 1)
    loss = lambda: network(torch.ones(2, 3)).sum()  # noqa: E731
    with pytest.raises(TypeError, match="Adam or AdamW, not SGD"):
        adam_step(loss(), torch.optim.SGD(network.parameters(), lr=0.1), 1.0)
    with pytest.raises(TypeError, match="amsgrad"):
        adam_step(loss(), torch.optim.Adam(network.parameters(), amsgrad=True), 1.0)


@pytest.mark.parametrize("warmup", ["copy", "initial"])
def test_ema_schedule_warms_up_then_averages_every_few_steps(warmup):
    config = types.SimpleNamespace(ema_start=3, ema_every=2, ema_tau=0.25, ema_warmup=warmup)
    policy, ema = nn.Linear(4, 2), nn.Linear(4, 2)
    expected = [value.detach().clone() for value in ema.parameters()]
    for step in range(1, 9):
        with torch.no_grad():
            for value in policy.parameters():
                value.normal_()
        update_ema_policy(ema, policy, torch.tensor(step), config)
        for index, value in enumerate(policy.parameters()):
            if step <= config.ema_start:
                if warmup == "copy":  # "initial": the EMA keeps its initial weights (the authors' code)
                    expected[index] = value.detach().clone()
            elif step % config.ema_every == 0:
                expected[index] = 0.75 * expected[index] + 0.25 * value.detach()
        for value, expected_value in zip(ema.parameters(), expected):
            torch.testing.assert_close(value.detach(), expected_value)


def test_td3_draws_either_critic_head_with_equal_odds():
    torch.manual_seed(0)
    agent = make_agent("edp_td3")
    state_action = torch.randn(8, STATE_DIM + ACTION_DIM)
    q1, q2 = agent.critic.q1(state_action), agent.critic.q2(state_action)
    picks = []
    for _ in range(400):
        q = agent.either_head(state_action)
        assert torch.equal(q, q1) or torch.equal(q, q2)
        picks.append(torch.equal(q, q1))
    assert 150 <= sum(picks) <= 250  # Binomial(400, 1/2): mean 200, sd 10
