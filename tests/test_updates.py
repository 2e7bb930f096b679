"""One update() of each algorithm against values computed here by hand, acting by energy-based selection, and the
flags that change the maths, trained end to end.

How the update tests see inside one step:
  * the critics (and IQL's V) are linear in [s, a] with typed weights, so every Q is a dot product computed here;
  * the policy's action approximation gets a fixed step k and noise (Eq. 8, 9), and the TD-target sampler returns a
    fixed function of the next state, so the losses are deterministic;
  * every network's Adam has lr = eps = 1e8. Adam's first step is lr * g / (|g| + eps) = g to 1e-7 (its bias
    corrections cancel at step 1), so the change of each weight IS minus the clipped gradient that adam_step
    applied: the test compares it with the gradient of the loss written out here. Everything is float64.
"""

import functools
import math

import minari
import numpy as np
import pytest
import torch
import torch.nn as nn

from agents import TwinCritic
from diffusion import DiffusionPolicy
from test_scripts import TINY, agent_class, resolve, run_main, train

S, A, B, K = 3, 2, 6, 50  # state and action dims, batch, diffusion steps
# the released code's linear schedule rescaled by 1000 / K: beta from 0.1 / K to 20 / K (REFERENCE.md)
ABAR = torch.tensor(np.cumprod(1 - np.linspace(0.1 / K, 20 / K, K)))
STEP = torch.tensor([0, 3, 10, 20, 33, 49])  # index k - 1 of each row's diffusion step
GAMMA = 0.99

# linear critics Q(s, a) = w_s . s + w_a . a + b: online heads and (different) target heads
Q1, Q2 = ([0.8, -0.5, 0.3], [1.0, -0.7], 0.2), ([-0.4, 0.6, 0.9], [-0.6, 0.9], -0.1)
TARGET_Q1, TARGET_Q2 = ([0.5, 0.2, -0.6], [0.7, 0.4], 0.3), ([-0.3, -0.8, 0.4], [0.2, -1.1], 0.5)


@pytest.fixture
def one_thread():
    """Tiny updates gain nothing from a second thread, and crawl when another process holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_batch(seed=0, dones=(0.0, 1.0, 0.0, 0.0, 1.0, 0.0)):
    generator = torch.Generator().manual_seed(seed)
    return dict(observations=torch.randn(B, S, generator=generator, dtype=torch.float64),
                actions=torch.rand(B, A, generator=generator, dtype=torch.float64) * 1.8 - 0.9,
                rewards=torch.randn(B, 1, generator=generator, dtype=torch.float64),
                next_observations=torch.randn(B, S, generator=generator, dtype=torch.float64),
                dones=torch.tensor(dones, dtype=torch.float64)[:, None])


NOISE = torch.randn(B, A, generator=torch.Generator().manual_seed(99), dtype=torch.float64)


def q_by_hand(weights, state, action):
    w_state, w_action, bias = (torch.tensor(w, dtype=torch.float64) for w in weights)
    return (state @ w_state + action @ w_action + bias)[:, None]


def linear(weights, in_dim=S + A) -> nn.Linear:
    layer = nn.Linear(in_dim, 1).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([list(weights[0]) + list(weights[1])], dtype=torch.float64))
        layer.bias.fill_(weights[2])
    return layer


def linear_twin(q1, q2) -> TwinCritic:
    critic = TwinCritic(S, A)
    critic.q1, critic.q2 = linear(q1), linear(q2)
    return critic


def exposing_adam(params) -> torch.optim.Adam:
    """Its first step is -lr g / (|g| + eps) = -g for lr = eps = 1e8: the clipped gradient adam_step applied."""
    return torch.optim.Adam(params, lr=1e8, eps=1e8)


def group_norm(grads):
    return math.sqrt(sum(g.pow(2).sum().item() for g in grads))


def clipped_step(grads, max_norm):
    """Minus the gradient clipped by clip_grad_norm_'s rule over one parameter group: Adam's exposed first step."""
    return [-g * min(1.0, max_norm / (group_norm(grads) + 1e-6)) for g in grads]


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def assert_stepped(module, before, expected_step, what):
    for index, (param, old, step) in enumerate(zip(module.parameters(), before, expected_step)):
        torch.testing.assert_close(param.detach() - old, step, rtol=1e-5, atol=1e-9, msg=f"{what}, parameter {index}")


def make_agent(script, **flags):
    """A tiny agent in float64 with linear critics and exposing optimisers (see the module docstring)."""
    config = resolve(script, "hopper-medium", device="cpu", num_diffusion_steps=K, dpm_steps=3, batch_size=B, **flags)
    torch.manual_seed(0)
    agent = agent_class(script)(S, A, config, torch.device("cpu"))
    agent.policy.double()
    agent.ema_policy.double()
    agent.critic, agent.critic_target = linear_twin(Q1, Q2), linear_twin(TARGET_Q1, TARGET_Q2).requires_grad_(False)
    agent.critic_optimizer = exposing_adam(agent.critic.parameter_groups())
    agent.policy_optimizer = exposing_adam(agent.policy.parameters())
    return agent


def fix_action_approximation(agent, monkeypatch):
    """The policy's Eq. 8 corruption uses STEP and NOISE instead of random draws."""
    fixed = functools.partial(agent.policy.approximate_action, step=STEP, noise=NOISE)
    monkeypatch.setattr(agent.policy, "approximate_action", fixed)


def approximation_by_hand(policy, state, action):
    """Eq. 8, 9 and 5 from the closed-form schedule: (a0_hat clipped to +-1, L_diff), differentiable."""
    abar = ABAR[STEP, None]
    noisy = abar.sqrt() * action + (1 - abar).sqrt() * NOISE  # Eq. 8
    predicted = policy.noise_net(state, noisy, STEP)
    a0_hat = ((noisy - (1 - abar).sqrt() * predicted) / abar.sqrt()).clamp(-1.0, 1.0)  # Eq. 9
    return a0_hat, (NOISE - predicted).pow(2).mean()  # Eq. 5: mean over action dims and the batch


def critic_loss_by_hand(target, batch):
    """MSE(Q1(s, a), y) + MSE(Q2(s, a), y) of the online heads, and its gradient per head ([weight, bias])."""
    grads, loss = [], 0.0
    for weights in (Q1, Q2):
        w = torch.tensor([list(weights[0]) + list(weights[1])], dtype=torch.float64, requires_grad=True)
        b = torch.tensor([float(weights[2])], dtype=torch.float64, requires_grad=True)
        q = torch.cat([batch["observations"], batch["actions"]], dim=-1) @ w.T + b
        head_loss = (q - target).pow(2).mean()
        grads.append(list(torch.autograd.grad(head_loss, [w, b])))
        loss += head_loss.item()
    return loss, grads


def run_update(agent, batch, monkeypatch, next_actions):
    """One update() with the TD-target sampler replaced by next_actions(state) (its calls recorded)."""
    calls = []

    def sample(state, **kwargs):
        calls.append(kwargs)
        return next_actions(state)

    monkeypatch.setattr(agent.ema_policy, "sample", sample)
    return {key: value.item() for key, value in agent.update(batch).items()}, calls


# ----------------------------------------------------------------------------------------------
# TD3 and CRR critics: the Eq. 6 target, with dones, and TD3's max-Q backup
# ----------------------------------------------------------------------------------------------
M = torch.tensor([[0.9, -0.4], [0.3, 0.8], [-0.7, 0.5]], dtype=torch.float64)
ANGLES = torch.arange(10, dtype=torch.float64) * 2 * math.pi / 10
OFFSETS = 1.5 * torch.stack([ANGLES.cos(), ANGLES.sin()], dim=1)  # 10 draws around a circle: Q1', Q2' prefer others


def next_action(state):
    """The 'EMA policy' of the TD target: a fixed function of the next state."""
    return torch.tanh(state @ M)


def ten_next_actions(state):
    """For the max-Q backup: row i of the (B * 10)-row call is draw i % 10 for its state (a stochastic policy)."""
    return torch.tanh(state @ M + OFFSETS[torch.arange(len(state)) % 10])


@pytest.mark.parametrize("script,max_q_backup", [("edp_td3", False), ("edp_td3", True), ("edp_crr", False)])
def test_critic_step_follows_the_td_target_with_dones(script, max_q_backup, monkeypatch):
    """y = r + (1 - done) gamma min(Q1', Q2')(s', a') with the TARGET critics and a' from the EMA policy's sampler
    (max-Q backup: max over 10 next actions per head, then the min); the loss MSE(Q1, y) + MSE(Q2, y); each head's
    step is its own gradient clipped on its own; then the target critics move by tau towards the critics."""
    flags = dict(max_q_backup=True) if max_q_backup else {}
    agent = make_agent(script, **flags)
    batch = make_batch()
    s_next = batch["next_observations"]
    if max_q_backup:
        candidates = torch.tanh((s_next @ M)[:, None, :] + OFFSETS[None])  # (B, 10, A): draw j for state b
        heads = [torch.stack([q_by_hand(weights, s_next, candidates[:, j]) for j in range(10)], dim=1)
                 for weights in (TARGET_Q1, TARGET_Q2)]  # (B, 10, 1) per head
        next_q = torch.min(heads[0].max(dim=1).values, heads[1].max(dim=1).values)
        # the backup is not min-then-max: the test could not tell them apart otherwise
        assert (torch.min(*heads).max(dim=1).values - next_q).abs().max() > 0.05
    else:
        q1_next, q2_next = q_by_hand(TARGET_Q1, s_next, next_action(s_next)), q_by_hand(TARGET_Q2, s_next, next_action(s_next))
        next_q = torch.min(q1_next, q2_next)
        assert (q1_next < q2_next).any() and (q2_next < q1_next).any()  # both heads are the min somewhere
    target = batch["rewards"] + (1 - batch["dones"]) * GAMMA * next_q
    assert (next_q[batch["dones"] == 1].abs() > 0.1).all()  # a missing (1 - done) would change y
    loss, grads = critic_loss_by_hand(target, batch)
    norms = [group_norm(g) for g in grads]
    agent.config.grad_clip = 0.5 * min(norms)  # binds for both heads; a clip over both at once would differ
    old_critic, old_target = snapshot(agent.critic), snapshot(agent.critic_target)

    metrics, calls = run_update(agent, batch, monkeypatch, ten_next_actions if max_q_backup else next_action)

    assert metrics["critic_loss"] == pytest.approx(loss, rel=1e-9)
    assert metrics["critic_grad_norm"] == pytest.approx(max(norms), rel=1e-9)
    assert calls and all(call["steps"] == agent.config.dpm_steps for call in calls)  # the configured sampler
    assert_stepped(agent.critic.q1, old_critic[:2], clipped_step(grads[0], agent.config.grad_clip), "Q1")
    assert_stepped(agent.critic.q2, old_critic[2:], clipped_step(grads[1], agent.config.grad_clip), "Q2")
    tau = agent.config.tau
    for new_target, old, new in zip(agent.critic_target.parameters(), old_target, agent.critic.parameters()):
        torch.testing.assert_close(new_target, (1 - tau) * old + tau * new.detach())


# ----------------------------------------------------------------------------------------------
# TD3's policy: L_diff + eta * L_pi, L_pi = -lambda mean Q_k(s, a0_hat), lambda = alpha / mean|Q_k| (detached)
# ----------------------------------------------------------------------------------------------
def td3_policy_losses_by_hand(agent, batch):
    """For k = Q1 and Q2: (L_pi, L_diff, the gradient of L_diff + eta L_pi over the policy's parameters)."""
    state, action = batch["observations"], batch["actions"]
    params = list(agent.policy.parameters())
    out = []
    for weights in (Q1, Q2):
        a0_hat, diffusion_loss = approximation_by_hand(agent.policy, state, action)
        q = q_by_hand(weights, state, a0_hat)
        assert q.abs().mean() > 1.2 * q.mean().abs()  # Q of both signs: alpha / mean|Q| is not alpha / |mean Q|
        q_loss = -agent.config.alpha / q.abs().mean().detach() * q.mean()  # TD3+BC's normalisation, Eq. 16
        grads = torch.autograd.grad(diffusion_loss + agent.config.eta * q_loss, params)
        out.append((q_loss.item(), diffusion_loss.item(), grads))
    return out


def test_td3_policy_step_is_diffusion_loss_plus_normalised_q_of_the_approximated_action(monkeypatch):
    """The policy loss, from the critics BEFORE their step: its value (L_pi for the head drawn, sign included) and the
    step taken (lambda detached: a lambda carrying gradient moves the weights differently), clipped to grad_clip."""
    eta = 0.7
    agent = make_agent("edp_td3", eta=eta, alpha=2.5)
    fix_action_approximation(agent, monkeypatch)
    batch = make_batch(1)
    expected = td3_policy_losses_by_hand(agent, batch)
    assert abs(expected[0][0] - expected[1][0]) > 0.05  # the metric says which head was drawn
    agent.config.grad_clip = 0.5 * min(group_norm(grads) for *_, grads in expected)
    before = snapshot(agent.policy)

    metrics, _ = run_update(agent, batch, monkeypatch, next_action)

    head = int(np.argmin([abs(metrics["q_loss"] - q_loss) for q_loss, *_ in expected]))
    q_loss, diffusion_loss, grads = expected[head]
    assert metrics["q_loss"] == pytest.approx(q_loss, rel=1e-6)
    assert metrics["diffusion_loss"] == pytest.approx(diffusion_loss, rel=1e-6)
    assert metrics["policy_loss"] == pytest.approx(diffusion_loss + eta * q_loss, rel=1e-6)
    assert_stepped(agent.policy, before, clipped_step(grads, agent.config.grad_clip), f"policy (Q{head + 1})")


def test_td3_draws_q1_or_q2_with_equal_odds(monkeypatch, one_thread):
    """App. A.1: the head of L_pi is Q1 or Q2 at random each step; the metric names it (its L_pi differs)."""
    agent = make_agent("edp_td3")
    fix_action_approximation(agent, monkeypatch)
    batch = make_batch(1)
    expected = [q_loss for q_loss, *_ in td3_policy_losses_by_hand(agent, batch)]
    for group in agent.policy_optimizer.param_groups + agent.critic_optimizer.param_groups:
        group["lr"] = 0.0  # the weights stay put: every update sees the same losses
    torch.manual_seed(5)
    q_losses = [run_update(agent, batch, monkeypatch, next_action)[0]["q_loss"] for _ in range(100)]
    heads = [int(np.argmin([abs(q_loss - q) for q in expected])) for q_loss in q_losses]
    assert all(min(abs(q_loss - q) for q in expected) < 1e-6 for q_loss in q_losses)
    assert 30 <= sum(heads) <= 70, sum(heads)  # binomial(100, 0.5): 4 standard deviations either side


# ----------------------------------------------------------------------------------------------
# CRR's policy: weights exp(A / beta) clipped, A = minQ(s, a) - mean_j minQ(s, a_j), a_j ~ N(a0_hat, sigma^2)
# ----------------------------------------------------------------------------------------------
def test_crr_policy_step_weights_by_the_advantage_over_samples_at_their_own_state(monkeypatch):
    """The baseline of state b is the mean min-Q at state b of ITS N actions a0_hat_b + sigma eps (not clipped); Q
    depends on the state, so baseline actions paired with other states give other weights. The weight is
    exp(A / beta) clipped (binding for two rows), the loss L_diff - eta mean(w log N(a; a0_hat, sigma^2)) with a
    learned sigma; checked by its value and the step it takes. The baseline's noise is the update's first random
    draw here (the sampler and the action approximation are fixed), so it is reproduced by seeding."""
    n, beta, eta = 4, 0.7, 0.8
    agent = make_agent("edp_crr", advantage_samples=n, beta=beta, eta=eta, learn_std=True)
    with torch.no_grad():
        agent.policy.log_std.copy_(torch.tensor([-0.4, 0.3], dtype=torch.float64))
    fix_action_approximation(agent, monkeypatch)
    batch = make_batch(2)
    state, action = batch["observations"], batch["actions"]

    a0_hat, diffusion_loss = approximation_by_hand(agent.policy, state, action)
    sigma = agent.policy.log_std.exp()
    torch.manual_seed(11)
    noise = torch.randn(B * n, A, dtype=torch.float64).view(B, n, A)  # row b * n + j: sample j of state b
    with torch.no_grad():
        samples = a0_hat[:, None, :] + sigma * noise

        def q_min(s, a):
            return torch.min(q_by_hand(Q1, s, a), q_by_hand(Q2, s, a))

        baseline = torch.stack([q_min(state, samples[:, j]) for j in range(n)], dim=1).mean(dim=1)  # (B, 1)
        weight = torch.exp((q_min(state, action) - baseline) / beta)
    clip_value = weight.flatten().sort().values[-3:-1].mean().item()  # the two largest weights are clipped
    weight = weight.clamp(max=clip_value)
    agent.config.weight_clip = clip_value
    log_likelihood = torch.distributions.Normal(a0_hat, sigma).log_prob(action).sum(-1)  # Eq. 13
    weighted_loss = -(weight.squeeze(1) * log_likelihood).mean()  # Eq. 20
    grads = torch.autograd.grad(diffusion_loss + eta * weighted_loss, list(agent.policy.parameters()))
    agent.config.grad_clip = 0.5 * group_norm(grads)
    before = snapshot(agent.policy)

    torch.manual_seed(11)
    metrics, _ = run_update(agent, batch, monkeypatch, next_action)

    assert metrics["weight_mean"] == pytest.approx(weight.mean().item(), rel=1e-6)
    assert metrics["weighted_loss"] == pytest.approx(weighted_loss.item(), rel=1e-6)
    assert metrics["policy_loss"] == pytest.approx(diffusion_loss.item() + eta * weighted_loss.item(), rel=1e-6)
    assert_stepped(agent.policy, before, clipped_step(grads, agent.config.grad_clip), "policy")


# ----------------------------------------------------------------------------------------------
# IQL: V by expectile regression, then the policy weighted with the UPDATED V, then Q towards r + gamma V(s')
# ----------------------------------------------------------------------------------------------
V = ([0.6, -0.9, 0.4], [], 0.0)  # a linear V(s); its bias is set so that Q - V takes both signs


def test_iql_update_steps_v_then_weights_the_policy_with_the_new_v_then_steps_q(monkeypatch):
    """u = minQ_target(s, a) - V(s); V's loss mean(|tau - 1(u < 0)| u^2) and its clipped step; the weight
    exp(beta (minQ_target(s, a) - V_new(s))) clipped, with V AFTER its step (the old V gives other weights); the
    policy loss L_diff - eta mean(w log N(a; a0_hat, I)); Q's target r + (1 - done) gamma V_new(s')."""
    expectile, beta, eta = 0.8, 2.0, 0.6
    agent = make_agent("edp_iql", expectile=expectile, beta=beta, eta=eta)
    fix_action_approximation(agent, monkeypatch)
    batch = make_batch(3)
    state, action = batch["observations"], batch["actions"]

    target_q = torch.min(q_by_hand(TARGET_Q1, state, action), q_by_hand(TARGET_Q2, state, action))
    w_v = torch.tensor([V[0]], dtype=torch.float64, requires_grad=True)
    b_v = (target_q.squeeze(1) - state @ w_v.detach()[0]).median().detach().reshape(1).requires_grad_()
    agent.value = linear((V[0], [], b_v.item()), in_dim=S)
    agent.value_optimizer = exposing_adam(agent.value.parameters())
    u = target_q - (state @ w_v.T + b_v)
    assert (u > 0.05).any() and (u < -0.05).any()
    value_loss = (torch.where(u < 0, 1 - expectile, expectile) * u.pow(2)).mean()  # L_2^tau, Eq. 22
    grad_w, grad_b = torch.autograd.grad(value_loss, [w_v, b_v])
    grad_clip = 0.5 * group_norm([grad_w, grad_b])
    step_w, step_b = clipped_step([grad_w, grad_b], grad_clip)
    w_new, b_new = w_v.detach() + step_w, b_v.detach() + step_b

    def v_new(s):
        return s @ w_new.T + b_new

    a0_hat, diffusion_loss = approximation_by_hand(agent.policy, state, action)
    weight = torch.exp(beta * (target_q - v_new(state))).detach()
    old_weight = torch.exp(beta * (target_q - (state @ w_v.T + b_v))).detach()
    clip_value = weight.flatten().sort().values[-2].item()  # the largest weight is clipped
    weight, old_weight = weight.clamp(max=clip_value), old_weight.clamp(max=clip_value)
    assert (weight - old_weight).abs().max() > 0.1  # the weight with the old V would be another
    log_likelihood = torch.distributions.Normal(a0_hat, 1.0).log_prob(action).sum(-1)  # Eq. 13, sigma = 1
    weighted_loss = -(weight.squeeze(1) * log_likelihood).mean()
    policy_grads = torch.autograd.grad(diffusion_loss + eta * weighted_loss, list(agent.policy.parameters()))
    q_target = batch["rewards"] + (1 - batch["dones"]) * GAMMA * v_new(batch["next_observations"]).detach()
    critic_loss, critic_grads = critic_loss_by_hand(q_target, batch)
    agent.config.grad_clip, agent.config.weight_clip = grad_clip, clip_value
    policy_before, critic_before = snapshot(agent.policy), snapshot(agent.critic)

    metrics, calls = run_update(agent, batch, monkeypatch, next_action)

    assert not calls  # IQL's policy evaluation never samples the policy
    assert metrics["value_loss"] == pytest.approx(value_loss.item(), rel=1e-7)  # the library's tau is float32
    torch.testing.assert_close(agent.value.weight.detach(), w_new, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(agent.value.bias.detach(), b_new, rtol=1e-6, atol=1e-9)
    assert metrics["weight_mean"] == pytest.approx(weight.mean().item(), rel=1e-6)
    assert metrics["weighted_loss"] == pytest.approx(weighted_loss.item(), rel=1e-6)
    assert_stepped(agent.policy, policy_before, clipped_step(policy_grads, grad_clip), "policy")
    assert metrics["critic_loss"] == pytest.approx(critic_loss, rel=1e-6)
    assert_stepped(agent.critic.q1, critic_before[:2], clipped_step(critic_grads[0], grad_clip), "Q1")
    assert_stepped(agent.critic.q2, critic_before[2:], clipped_step(critic_grads[1], grad_clip), "Q2")


# ----------------------------------------------------------------------------------------------
# Acting: energy-based action selection (Alg. 2) with min(Q1, Q2) at the candidates' own state
# ----------------------------------------------------------------------------------------------
class RecordingPolicy:
    """Samples a = tanh(s[:, :A]) + 0.4 z for each row, and records what it was asked and gave."""

    def __init__(self):
        self.calls = []

    def sample(self, state, **kwargs):
        action = torch.tanh(state[:, :A]) + 0.4 * torch.randn(len(state), A, dtype=state.dtype)
        self.calls.append((state, action, kwargs))
        return action


class StateSeekingCritic(nn.Module):
    """min(Q1, Q2)(s, a) = -|a - s[:, 1:]|^2: the best candidate depends on the state."""

    def q_min(self, state, action):
        return -(action - state[:, 1:]).pow(2).sum(-1, keepdim=True)


@pytest.mark.parametrize("acting_policy", ["ema", "online"])
def test_act_keeps_for_each_state_its_best_candidate_by_min_q_at_that_state(acting_policy):
    """Agent.act draws eas_samples candidates per state from the acting policy (EMA: paper preset; online: the
    released code's) with App. C.4's noise and policy scales, and at a low temperature keeps the candidate of
    the highest min(Q1, Q2) at ITS OWN state: scoring candidates at other states picks others."""
    n = 7
    agent = make_agent("edp_td3", eas_samples=n, eas_temperature=1e-6, noise_scale=0.5, policy_scale=1.3,
                       acting_policy=acting_policy)
    agent.ema_policy, agent.policy = RecordingPolicy(), RecordingPolicy()
    agent.critic = StateSeekingCritic()
    state = torch.randn(5, S, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 2
    torch.manual_seed(0)
    chosen = agent.act(state)

    acting, idle = (agent.ema_policy, agent.policy) if acting_policy == "ema" else (agent.policy, agent.ema_policy)
    assert len(acting.calls) == 1 and not idle.calls
    sampled_states, candidates, kwargs = acting.calls[0]
    assert kwargs["noise_scale"] == 0.5 and kwargs["policy_scale"] == 1.3 and kwargs["steps"] == agent.config.dpm_steps
    for b in range(len(state)):
        own = (sampled_states == state[b]).all(dim=1)
        assert own.sum() == n
        q = -(candidates[own] - state[b, 1:]).pow(2).sum(-1)
        torch.testing.assert_close(chosen[b], candidates[own][q.argmax()], rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# Flags that change the maths, trained end to end on the pendulum demo dataset
# ----------------------------------------------------------------------------------------------
def record_updates(monkeypatch, script):
    """Every batch the training loop hands to update(), recorded."""
    cls = agent_class(script)
    update, batches = cls.update, []

    def recording(self, batch):
        batches.append({key: value.clone() for key, value in batch.items()})
        return update(self, batch)

    monkeypatch.setattr(cls, "update", recording)
    return batches


def count_calls(monkeypatch, name):
    """Calls of DiffusionPolicy.<name> (with their keyword arguments and results), recorded."""
    original, calls = getattr(DiffusionPolicy, name), []

    def counting(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls.append((kwargs, result))
        return result

    monkeypatch.setattr(DiffusionPolicy, name, counting)
    return calls


def tiny_train(script, datasets, tmp_path, *flags, steps=6):
    return train(script, ["--env", datasets["pendulum"], "--run-dir", str(tmp_path / "run"), "--total-steps", str(steps),
                          "--eval-every", str(steps), *TINY, *flags])


@pytest.mark.parametrize("script", ["edp_crr", "edp_iql"])
def test_learn_std_trains_the_gaussian_log_std(script, datasets, tmp_path):
    """--learn-std: sigma of Eq. 13 is a parameter that training moves away from 1 and the checkpoint keeps."""
    agent = tiny_train(script, datasets, tmp_path, "--learn-std")
    assert isinstance(agent.policy.log_std, nn.Parameter)
    assert agent.policy.log_std.detach().abs().min() > 1e-4  # Adam's steps are about lr = 3e-4 each
    torch.testing.assert_close(agent.state_dict()["policy"]["log_std"], agent.policy.log_std.detach())


@pytest.mark.parametrize("script", ["edp_crr", "edp_iql"])
def test_likelihood_elbo_replaces_the_gaussian_surrogate(script, datasets, tmp_path, monkeypatch):
    """--likelihood elbo: every update takes log pi from Eq. 12 (a weighted noise error, <= 0), never from Eq. 13."""
    elbo, gaussian = count_calls(monkeypatch, "elbo_log_likelihood"), count_calls(monkeypatch, "gaussian_log_likelihood")
    tiny_train(script, datasets, tmp_path, "--likelihood", "elbo")
    assert len(elbo) == 6 and not gaussian
    assert all(result.shape == (32,) and (result <= 0).all() for _, result in elbo)


@pytest.mark.parametrize("script", ["edp_crr", "edp_iql"])
def test_likelihood_elbo_with_learn_std_is_refused_in_one_line(script, datasets, tmp_path, capsys):
    """--likelihood elbo --learn-std: the ELBO has no sigma to learn (it used to crash the first update with
    autograd's 'not used in the graph'): refused in one line, exit 2, nothing left behind."""
    code = run_main(script, "--env", datasets["pendulum"], "--run-dir", str(tmp_path / "run"), "--total-steps", "3",
                    "--eval-every", "3", *TINY, "--likelihood", "elbo", "--learn-std")
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and "--learn-std" in error and "elbo" in error, error
    assert not (tmp_path / "run").exists()


def test_no_action_approx_back_propagates_through_the_sampler(datasets, tmp_path, monkeypatch):
    """--no-action-approx (Diffusion-QL, 'EDP w/o AP'): each update samples the policy's action through the whole
    DPM-Solver chain with the graph kept (dpm_steps + 1 network calls of the policy, against 1 with Eq. 9)."""
    samples = count_calls(monkeypatch, "sample")
    calls_per_update = []
    update = agent_class("edp_td3").update

    def counting_update(self, batch):
        calls = []
        handle = self.policy.noise_net.register_forward_hook(lambda *args: calls.append(1))
        try:
            return update(self, batch)
        finally:
            handle.remove()
            calls_per_update.append(len(calls))

    monkeypatch.setattr(agent_class("edp_td3"), "update", counting_update)
    tiny_train("edp_td3", datasets, tmp_path, "--no-action-approx")
    with_graph = [result for kwargs, result in samples if kwargs.get("requires_grad")]
    assert len(with_graph) == 6 and all(result.requires_grad for result in with_graph)
    assert calls_per_update == [int(TINY[TINY.index("--dpm-steps") + 1]) + 1] * 6  # the chain, plus L_diff's call


def pendulum_rewards(dataset_id):
    episodes = list(minari.load_dataset(dataset_id).iterate_episodes())
    return np.concatenate([e.rewards for e in episodes]), np.array([e.rewards.sum() for e in episodes])


@pytest.mark.parametrize("transform", ["antmaze", "antmaze-iql", "minmax", "returns"])
def test_reward_transforms_reach_the_batches(transform, datasets, tmp_path, monkeypatch):
    """--reward-transform: the rewards update() sees are the dataset's rewards transformed as the released code
    does (REFERENCE.md): antmaze (r - 0.5) * 4, antmaze-iql r - 1, minmax to [-1, 1], returns r * 1000 / (max
    return - min return): each batch reward is the transform of a dataset reward (to float32), and most are no
    dataset reward themselves."""
    raw, returns = pendulum_rewards(datasets["pendulum"])
    expected = {"antmaze": (raw - 0.5) * 4, "antmaze-iql": raw - 1,
                "minmax": 2 * (raw - raw.min()) / (raw.max() - raw.min()) - 1,
                "returns": raw * 1000 / (returns.max() - returns.min())}[transform]
    batches = record_updates(monkeypatch, "edp_td3")
    tiny_train("edp_td3", datasets, tmp_path, "--reward-transform", transform, steps=3)
    seen = torch.cat([batch["rewards"] for batch in batches]).flatten().numpy().astype(np.float64)
    assert len(seen) == 3 * 32

    def matched(candidates):  # each seen reward is one of the candidates, to float32's precision
        return np.abs(seen[:, None] - candidates[None, :]).min(axis=1) <= 1e-6 * (1 + np.abs(seen))

    assert matched(expected).all()
    assert matched(raw).mean() < 0.5  # untransformed rewards would all match
