"""Unit tests of diffusion.py against closed forms."""

import math

import pytest
import torch

from diffusion import DiffusionPolicy, energy_based_action_selection, make_beta_schedule


class ConstantNoise(torch.nn.Module):
    """Stands in for eps_theta and returns a fixed tensor: the true noise of Eq. 8."""

    def __init__(self, noise):
        super().__init__()
        self.noise = noise

    def forward(self, state, noisy_action, step):
        return self.noise


class GaussianOracle(torch.nn.Module):
    """The exact eps prediction E[eps | a_k] for data a_0 ~ N(mu, sd^2), at any continuous index.

    log alpha is interpolated linearly between grid indices, as DPM-Solver's discrete schedule is.
    """

    def __init__(self, alphas_cumprod, mu, sd):
        super().__init__()
        self.log_alpha = 0.5 * alphas_cumprod.double().log()
        self.mu, self.sd = mu, sd
        self.calls = 0

    def forward(self, state, x, step):
        self.calls += 1
        index = step.double().expand(x.shape[0])
        lo = index.floor().clamp(0, len(self.log_alpha) - 2).long()
        w = index - lo
        alpha = ((1 - w) * self.log_alpha[lo] + w * self.log_alpha[lo + 1]).exp()[:, None]
        var_noise = 1 - alpha**2
        return (var_noise.sqrt() * (x.double() - alpha * self.mu) / (alpha**2 * self.sd**2 + var_noise)).float()


def oracle_policy(mu=0.3, sd=0.2, num_steps=1000):
    policy = DiffusionPolicy(1, 1, num_steps=num_steps)
    policy.noise_net = GaussianOracle(policy.alphas_cumprod, mu, sd)
    return policy


# -- schedules ---------------------------------------------------------------------------------
def test_linear_schedule_matches_ddpm_at_1000_and_rescales():
    betas = make_beta_schedule("linear", 1000)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    assert make_beta_schedule("linear", 100)[-1].item() == pytest.approx(0.2)


def test_vp_and_cosine_schedules_match_closed_forms():
    K = 5
    t = torch.arange(1, K + 1, dtype=torch.float64)
    expected = 1 - torch.exp(-0.1 / K - 0.5 * 9.9 * (2 * t - 1) / K**2)
    torch.testing.assert_close(make_beta_schedule("vp", K), expected)
    abar = torch.cumprod(1 - make_beta_schedule("cosine", 1000), 0)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert abar[499].item() == pytest.approx(f(0.5) / f(0.0), rel=1e-9)


@pytest.mark.parametrize("K", [10, 20])
def test_linear_schedule_with_beta_at_least_one_is_rejected(K):
    with pytest.raises(ValueError, match="beta outside"):
        DiffusionPolicy(3, 2, num_steps=K)


# -- Eq. 9 ---------------------------------------------------------------------------------------
def test_action_approximation_with_true_noise_recovers_action_at_every_step():
    K = 1000
    policy = DiffusionPolicy(4, 3, num_steps=K)
    action = torch.rand(K, 3) * 1.8 - 0.9
    noise = torch.randn(K, 3)
    policy.noise_net = ConstantNoise(noise)
    approx = policy.approximate_action(torch.randn(K, 4), action, step=torch.arange(K), noise=noise)
    torch.testing.assert_close(approx.action, action, atol=2e-4, rtol=0)
    assert approx.diffusion_loss().item() == 0.0


def test_action_approximation_is_one_network_call_and_differentiable():
    policy = DiffusionPolicy(4, 3, num_steps=1000)
    calls = []
    policy.noise_net.register_forward_hook(lambda *args: calls.append(1))
    state, action = torch.randn(64, 4), torch.rand(64, 3) * 2 - 1
    approx = policy.approximate_action(state, action)
    loss = approx.diffusion_loss() - approx.action.sum()
    loss.backward()
    assert len(calls) == 1
    assert approx.action.abs().max() <= 1.0
    for name, parameter in policy.noise_net.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_weighted_diffusion_loss_and_likelihood_surrogates():
    policy = DiffusionPolicy(2, 3, num_steps=100, learn_std=True)
    with torch.no_grad():
        policy.log_std.copy_(torch.tensor([-0.5, 0.0, 0.3]))
    state, action = torch.randn(32, 2), torch.rand(32, 3) * 2 - 1
    approx = policy.approximate_action(state, action)
    weights = torch.rand(32)
    per_sample = (approx.noise - approx.predicted_noise).pow(2).mean(-1)
    torch.testing.assert_close(approx.diffusion_loss(weights), (weights * per_sample).mean())
    # Eq. 13 is the diagonal Gaussian log-density around a0_hat
    normal = torch.distributions.Normal(approx.action, policy.log_std.exp())
    torch.testing.assert_close(policy.gaussian_log_likelihood(action, approx), normal.log_prob(action).sum(-1))
    # Eq. 12 weights: beta_k / (2 alpha_k (1 - abar_{k-1})) for k >= 2, normalised to mean 1
    betas = make_beta_schedule("linear", 100)
    abar = torch.cumprod(1 - betas, 0)
    raw = betas[1:] / (2 * (1 - betas[1:]) * (1 - abar[:-1]))
    ratio = policy.elbo_weights[1:].double() / raw
    torch.testing.assert_close(ratio, ratio[0].expand_as(ratio), rtol=1e-5, atol=0)
    assert policy.elbo_weights.mean().item() == pytest.approx(1.0, rel=1e-5)
    squared = (approx.noise - approx.predicted_noise).pow(2).sum(-1)
    torch.testing.assert_close(policy.elbo_log_likelihood(approx), -policy.elbo_weights[approx.step] * squared)


# -- samplers against the Gaussian closed form ----------------------------------------------------
@pytest.mark.parametrize("mu,sd", [(0.3, 0.2), (-0.2, 0.25)])
@pytest.mark.parametrize("sampler", ["dpm", "ddpm"])
def test_samplers_reproduce_gaussian_data(sampler, mu, sd):
    torch.manual_seed(0)
    policy = oracle_policy(mu, sd)
    sample = policy.sample(torch.zeros(100_000, 1), sampler=sampler)
    assert policy.noise_net.calls == (15 if sampler == "dpm" else 1000)
    assert sample.mean().item() == pytest.approx(mu, abs=0.02 * max(abs(mu), sd))
    assert sample.std().item() == pytest.approx(sd, rel=0.03)


def exact_flow(policy, x_start, mu, sd):
    """The probability-flow ODE of Gaussian data is affine: it maps quantiles to quantiles."""
    alpha_start, alpha_end = policy.alphas_cumprod[-1].double().sqrt(), policy.alphas_cumprod[0].double().sqrt()
    std = lambda a: (a**2 * sd**2 + 1 - a**2).sqrt()  # noqa: E731
    return alpha_end * mu + std(alpha_end) / std(alpha_start) * (x_start.double() - alpha_start * mu)


@pytest.mark.parametrize("method", ["multistep", "singlestep"])
def test_dpm_solver_error_decreases_with_order(method):
    # singlestep splits 15 calls into [3,3,3,3,2,1] / [2]*7+[1] updates, so orders 2 and 3 end alike
    mu, sd = 0.3, 0.2
    errors = []
    for order in (1, 2, 3):
        policy = oracle_policy(mu, sd)
        torch.manual_seed(1)
        sample = policy.sample(torch.zeros(5000, 1), steps=15, order=order, method=method, clip_denoised=False)
        assert policy.noise_net.calls == 15
        torch.manual_seed(1)
        errors.append((sample.double() - exact_flow(policy, torch.randn(5000, 1), mu, sd)).abs().mean().item())
    if method == "multistep":
        assert errors[0] > errors[1] > errors[2], errors
    else:
        assert errors[0] > 1.3 * max(errors[1], errors[2]), errors


def test_noise_scale_zero_is_deterministic_and_sampling_builds_no_graph_by_default():
    policy = DiffusionPolicy(3, 2, num_steps=100)
    state = torch.randn(8, 3)
    first = policy.sample(state, noise_scale=0.0)
    assert not first.requires_grad
    torch.testing.assert_close(first, policy.sample(state, noise_scale=0.0))
    with_grad = policy.sample(state, sampler="ddpm", requires_grad=True)
    with_grad.sum().backward()
    assert policy.noise_net.mlp[0].weight.grad.abs().sum() > 0
    assert with_grad.abs().max() <= 1.0


def test_policy_scale_multiplies_the_noise_prediction():
    # with tau = 0 the solver never moves away from the (scaled) initial noise but for alpha_t
    policy = oracle_policy()
    torch.manual_seed(3)
    sample = policy.sample(torch.zeros(1000, 1), policy_scale=0.0, method="singlestep", order=1, steps=1,
                           clip_denoised=False)
    torch.manual_seed(3)
    start = torch.randn(1000, 1)
    ratio = (policy.alphas_cumprod[0] / policy.alphas_cumprod[-1]).sqrt()
    torch.testing.assert_close(sample, (ratio * start).clamp(-1, 1))


# -- multi-modal behaviour cloning -----------------------------------------------------------------
def test_behaviour_cloning_reproduces_every_mode_in_proportion():
    torch.manual_seed(0)
    modes = torch.tensor([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])
    proportions = torch.tensor([0.4, 0.3, 0.2, 0.1])

    def data(n):
        which = torch.multinomial(proportions, n, replacement=True)
        return torch.zeros(n, 2), modes[which] + 0.05 * torch.randn(n, 2)

    policy = DiffusionPolicy(2, 2, num_steps=100, hidden_dim=128)
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 4000)
    for _ in range(4000):
        state, action = data(256)
        loss = policy.loss(state, action)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    for sampler in ("dpm", "ddpm"):
        sample = policy.sample(torch.zeros(4000, 2), sampler=sampler)
        nearest = torch.cdist(sample, modes).argmin(dim=1)
        observed = torch.bincount(nearest, minlength=4).float() / len(sample)
        assert (observed - proportions).abs().max() < 0.05, (sampler, observed)
        assert torch.cdist(sample, modes).min(dim=1).values.median() < 0.1


# -- energy-based action selection ------------------------------------------------------------------
class FixedCandidates:
    """A policy whose N samples per state are always the same fixed candidates."""

    def __init__(self, candidates):
        self.candidates = candidates  # (N, action_dim)

    def sample(self, state, **kwargs):
        return self.candidates.repeat(state.shape[0] // len(self.candidates), 1).to(state)


def test_energy_based_action_selection_follows_softmax_of_q():
    torch.manual_seed(0)
    candidates = torch.tensor([[-0.5], [0.0], [0.5], [1.0]])
    q_function = lambda s, a: 2.0 * a.squeeze(-1) + s[:, 0] * 0  # noqa: E731
    state = torch.zeros(40_000, 3)
    chosen = energy_based_action_selection(FixedCandidates(candidates), q_function, state, num_samples=4)
    assert chosen.shape == (40_000, 1) and chosen.dtype == state.dtype and chosen.device == state.device
    observed = torch.stack([(chosen == c).float().mean() for c in candidates.squeeze(-1)])
    expected = torch.softmax(2.0 * candidates.squeeze(-1), 0)
    torch.testing.assert_close(observed, expected, atol=0.01, rtol=0)
    # a temperature sharpens the choice, greedy takes the argmax
    sharp = energy_based_action_selection(FixedCandidates(candidates), q_function, state, 4, temperature=0.1)
    assert (sharp == 1.0).float().mean() > 0.99
    greedy = energy_based_action_selection(FixedCandidates(candidates), q_function, state[:5], 4, greedy=True)
    assert (greedy == 1.0).all()


def test_energy_based_action_selection_with_a_real_policy_keeps_dtype_and_shape():
    policy = DiffusionPolicy(3, 2, num_steps=50).double()
    state = torch.randn(7, 3, dtype=torch.float64)
    action = energy_based_action_selection(policy, lambda s, a: a.sum(-1), state, num_samples=5, steps=5)
    assert action.shape == (7, 2) and action.dtype == torch.float64 and action.abs().max() <= 1


# -- bad arguments ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sampler="euler"), "unknown sampler"),
        (dict(order=0), "order must be 1, 2 or 3"),
        (dict(order=4), "order must be 1, 2 or 3"),
        (dict(steps=0), "steps must be >= 1"),
        (dict(method="adaptive"), "unknown DPM-Solver method"),
        (dict(skip="random"), "unknown DPM-Solver time grid"),
    ],
)
def test_bad_sampler_arguments_raise_clear_errors(kwargs, match):
    policy = DiffusionPolicy(3, 2, num_steps=50)
    with pytest.raises(ValueError, match=match):
        policy.sample(torch.zeros(2, 3), **kwargs)


def test_bad_schedule_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown schedule 'quadratic'"):
        DiffusionPolicy(3, 2, schedule="quadratic")
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        DiffusionPolicy(3, 2, num_steps=0)


def test_fast_mish_matches_torch_mish_in_value_and_gradient():
    from diffusion import Mish

    x = (torch.randn(20_000, dtype=torch.float64) * 8).requires_grad_()
    reference = torch.nn.functional.mish(x)
    (reference_grad,) = torch.autograd.grad(reference.sum(), x)
    value = Mish()(x)
    (grad,) = torch.autograd.grad(value.sum(), x)
    torch.testing.assert_close(value, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-10, atol=1e-10)
    x32 = torch.tensor([-100.0, -20.0, -1.0, 0.0, 1.0, 20.0, 100.0, 1e4]).repeat(1000)  # above the size switch
    torch.testing.assert_close(Mish()(x32), torch.nn.functional.mish(x32))
    torch.autograd.gradcheck(Mish(), (torch.randn(5000, dtype=torch.float64, requires_grad=True),))


def test_the_released_singlestep_time_uniform_split_shrinks_gaussian_data():
    # why the default departs from the released code: its [3,3,3,3,2,1] split on a time-uniform grid
    # ends with a first-order step across most of the log-SNR range, which collapses towards the mean
    torch.manual_seed(0)
    released = oracle_policy(0.3, 0.2).sample(torch.zeros(100_000, 1), method="singlestep", skip="time_uniform")
    default = oracle_policy(0.3, 0.2).sample(torch.zeros(100_000, 1))
    assert released.std().item() < 0.8 * 0.2 < 0.97 * 0.2 < default.std().item()
