"""Unit tests of diffusion.py against closed forms and values computed here independently of its buffers."""

import math

import numpy as np
import pytest
import torch

import diffusion
from diffusion import DPM_SKIPS, DiffusionPolicy, energy_based_action_selection, make_beta_schedule


def linear_alphas_cumprod(K):
    """abar_1..abar_K of the released code's linear schedule, beta_k from 0.1 / K to 20 / K (REFERENCE.md), float64."""
    return np.cumprod(1 - np.linspace(0.1 / K, 20 / K, K))


class ConstantNoise(torch.nn.Module):
    """Stands in for eps_theta: returns a fixed tensor, and records the noisy actions it was given."""

    def __init__(self, noise):
        super().__init__()
        self.noise, self.inputs = noise, []

    def forward(self, state, noisy_action, step):
        self.inputs.append(noisy_action)
        return self.noise


class GaussianOracle(torch.nn.Module):
    """The exact eps prediction E[eps | a_k] for data a_0 ~ N(mu, sd^2), at any continuous index; records the indices.

    log alpha is interpolated linearly between grid indices, as DPM-Solver's discrete schedule is.
    """

    def __init__(self, alphas_cumprod, mu, sd):
        super().__init__()
        self.log_alpha = 0.5 * alphas_cumprod.double().log()
        self.mu, self.sd = mu, sd
        self.calls = 0
        self.indices = []

    def alpha(self, index):
        index = torch.as_tensor(index, dtype=torch.float64)
        lo = index.floor().clamp(0, len(self.log_alpha) - 2).long()
        w = index - lo
        return ((1 - w) * self.log_alpha[lo] + w * self.log_alpha[lo + 1]).exp()

    def lam(self, index):
        """Half log-SNR log(alpha / sigma) at a continuous index."""
        alpha = self.alpha(index)
        return (alpha.log() - 0.5 * (1 - alpha**2).log()).item()

    def forward(self, state, x, step):
        self.calls += 1
        self.indices.append(step.double().item())
        alpha = self.alpha(step.double().expand(x.shape[0]))[:, None]
        var_noise = 1 - alpha**2
        return (var_noise.sqrt() * (x.double() - alpha * self.mu) / (alpha**2 * self.sd**2 + var_noise)).float()


def oracle_policy(mu=0.3, sd=0.2, num_steps=1000):
    """A linear-schedule policy whose eps_theta is the oracle of the closed-form (float64) schedule."""
    policy = DiffusionPolicy(1, 1, num_steps=num_steps)
    policy.noise_net = GaussianOracle(torch.tensor(linear_alphas_cumprod(num_steps)), mu, sd)
    return policy


# -- schedules ---------------------------------------------------------------------------------
def test_linear_schedule_matches_ddpm_at_1000_and_rescales():
    # DDPM (Ho et al. 2020, Sec. 4): beta_1 = 1e-4 .. beta_T = 0.02 at T = 1000; rescaled by 1000 / K
    betas = make_beta_schedule("linear", 1000)
    assert betas.dtype == torch.float64
    assert betas[0].item() == pytest.approx(1e-4, rel=1e-12) and betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    assert make_beta_schedule("linear", 100)[[0, -1]].tolist() == pytest.approx([1e-3, 0.2], rel=1e-12)


def test_linear_schedule_alpha_bar_at_k_1000():
    """log abar_K = sum_k log(1 - beta_k) = -(S1 + S2 / 2 + S3 / 3 + ...), S_m = sum_k beta_k^m, beta_k = a + d j
    (j = 0..K-1, a = 1e-4, d = (0.02 - 1e-4) / 999) summed by Faulhaber: S1 = K (a + 0.02) / 2 = 10.05 (the
    integral of the continuous beta(t) = 0.1 + 19.9 t: abar_K ~ exp(-10.05) to first order), S2 ~ 0.134,
    S3 ~ 0.0020; the rest is below S4 / 4 ~ 1e-5."""
    K, a = 1000, 1e-4
    d = (0.02 - a) / (K - 1)
    j1, j2, j3 = (K - 1) * K / 2, (K - 1) * K * (2 * K - 1) / 6, ((K - 1) * K / 2) ** 2  # sums of j, j^2, j^3
    s1 = K * a + d * j1
    s2 = K * a**2 + 2 * a * d * j1 + d**2 * j2
    s3 = K * a**3 + 3 * a**2 * d * j1 + 3 * a * d**2 * j2 + d**3 * j3
    assert s1 == pytest.approx(10.05, rel=1e-12)
    log_abar = -(s1 + s2 / 2 + s3 / 3)
    policy = DiffusionPolicy(1, 1, num_steps=K)
    assert math.log(policy.alphas_cumprod[-1].item()) == pytest.approx(log_abar, abs=2e-5)
    assert math.log(policy.alphas_cumprod[-1].item()) != pytest.approx(-10.05, abs=0.05)  # the S2 term matters


@pytest.mark.parametrize("K", [1, 5, 1000])
def test_vp_schedule_alpha_bar_closed_form(K):
    """Diffusion-QL's vp: alpha_t = exp(-0.1 / K - 4.95 (2t - 1) / K^2); as sum_{t<=k} (2t - 1) = k^2,
    abar_k = exp(-0.1 k / K - 4.95 k^2 / K^2) and abar_K = exp(-5.05) for every K (-(0.1 + 9.9 / 2))."""
    k = torch.arange(1, K + 1, dtype=torch.float64)
    abar = torch.cumprod(1 - make_beta_schedule("vp", K), 0)
    torch.testing.assert_close(abar, torch.exp(-0.1 * k / K - 4.95 * k**2 / K**2), rtol=1e-12, atol=0)
    assert abar[-1].item() == pytest.approx(math.exp(-5.05), rel=1e-12)


def test_cosine_schedule_closed_form():
    """Nichol & Dhariwal (2021): abar(t) = f(t) / f(0), f(t) = cos((t + s) / (1 + s) pi / 2)^2, s = 0.008."""
    abar = torch.cumprod(1 - make_beta_schedule("cosine", 1000), 0)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert abar[499].item() == pytest.approx(f(0.5) / f(0.0), rel=1e-9)
    assert abar[99].item() == pytest.approx(f(0.1) / f(0.0), rel=1e-9)


@pytest.mark.parametrize("K", [10, 20])
def test_linear_schedule_with_beta_at_least_one_is_rejected(K):
    with pytest.raises(ValueError, match="beta outside"):
        DiffusionPolicy(3, 2, num_steps=K)


def test_ddpm_posterior_coefficients_by_gaussian_conditioning():
    """q(a_{k-1} | a_k, a_0) from the joint Gaussian of a_{k-1} = sqrt(abar_{k-1}) a_0 + sqrt(1 - abar_{k-1}) e and
    a_k = sqrt(alpha_k) a_{k-1} + sqrt(beta_k) e': mean E[a_{k-1}] + C / V (a_k - E[a_k]) with C = sqrt(alpha_k)
    (1 - abar_{k-1}), V = 1 - abar_k; variance (1 - abar_{k-1}) - C^2 / V, clipped at 1e-20 before its log (k = 1)."""
    K = 1000
    policy = DiffusionPolicy(1, 1, num_steps=K)
    abar = linear_alphas_cumprod(K)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    alpha = abar / abar_prev
    cov, var = np.sqrt(alpha) * (1 - abar_prev), 1 - abar
    coef_xk = cov / var
    coef_x0 = np.sqrt(abar_prev) - coef_xk * np.sqrt(abar)
    variance = (1 - abar_prev) - cov**2 / var
    np.testing.assert_allclose(policy.posterior_mean_coef_xk.numpy(), coef_xk, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(policy.posterior_mean_coef_x0.numpy(), coef_x0, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(policy.posterior_log_variance[1:].numpy(), np.log(variance[1:]), rtol=1e-5)
    assert policy.posterior_log_variance[0].item() == pytest.approx(math.log(1e-20), rel=1e-6)  # variance 0 at k = 1


# -- Eq. 8, 9 and the losses ---------------------------------------------------------------------
def test_action_approximation_corrupts_with_the_schedule_and_recovers_the_action_from_the_true_noise():
    """Eq. 8: a_k = sqrt(abar_k) a + sqrt(1 - abar_k) eps with abar from the closed-form schedule (so a wrong
    schedule buffer fails here, not only a wrong inversion); Eq. 9 with eps_theta = eps gives a back."""
    K = 1000
    policy = DiffusionPolicy(4, 3, num_steps=K)
    action = torch.rand(K, 3) * 1.8 - 0.9
    noise = torch.randn(K, 3)
    policy.noise_net = ConstantNoise(noise)
    approx = policy.approximate_action(torch.randn(K, 4), action, step=torch.arange(K), noise=noise)
    abar = torch.tensor(linear_alphas_cumprod(K))[:, None]
    expected_noisy = abar.sqrt() * action.double() + (1 - abar).sqrt() * noise.double()
    torch.testing.assert_close(policy.noise_net.inputs[0].double(), expected_noisy, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(approx.action, action, atol=2e-4, rtol=0)
    assert approx.diffusion_loss().item() == 0.0


def test_action_approximation_inverts_eq_8_and_clips():
    """Eq. 9 with a prediction other than the true noise: a0_hat = (a_k - sqrt(1 - abar_k) eps_hat) / sqrt(abar_k),
    clipped to +-max_action (it binds for some rows here)."""
    K = 100
    policy = DiffusionPolicy(2, 2, num_steps=K, max_action=1.0)
    step = torch.tensor([0, 10, 50, 99] * 4)
    action, noise, predicted = torch.rand(16, 2) * 2 - 1, torch.randn(16, 2), torch.randn(16, 2) * 2
    policy.noise_net = ConstantNoise(predicted)
    approx = policy.approximate_action(torch.zeros(16, 2), action, step=step, noise=noise)
    abar = torch.tensor(linear_alphas_cumprod(K))[step, None]
    noisy = abar.sqrt() * action.double() + (1 - abar).sqrt() * noise.double()
    unclipped = (noisy - (1 - abar).sqrt() * predicted.double()) / abar.sqrt()
    assert (unclipped.abs() > 1).any() and (unclipped.abs() < 1).any()
    torch.testing.assert_close(approx.action.double(), unclipped.clamp(-1, 1), rtol=1e-4, atol=1e-5)


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


def elbo_weights_by_hand(K):
    """DDPM's L_{k-1} weight beta_k^2 / (2 sigma_k^2 alpha_k (1 - abar_k)) (Ho et al. 2020, Eq. 12 there) with the
    posterior variance sigma_k^2 = beta_k (1 - abar_{k-1}) / (1 - abar_k) for k >= 2, which is EDP's Eq. 12 weight
    beta_k / (2 alpha_k (1 - abar_{k-1})), and the sigma_1^2 = beta_1 decoder at k = 1, i.e. 1 / (2 alpha_1);
    normalised to mean 1."""
    abar = linear_alphas_cumprod(K)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    beta = 1 - abar / abar_prev
    sigma2 = np.concatenate([beta[:1], beta[1:] * (1 - abar_prev[1:]) / (1 - abar[1:])])
    weights = beta**2 / (2 * sigma2 * (1 - beta) * (1 - abar))
    return weights / weights.mean()


def test_losses_and_likelihood_surrogates_have_their_closed_forms():
    """A prediction off the true noise by a fixed c: per-sample error mean(c^2), weighted Eq. 5 mean(w) mean(c^2),
    Eq. 12 -w_k sum(c^2) with w_k by hand (k = 1 included), Eq. 13 the Gaussian log-density with log-std clamped to
    [-5, 2] (set here to -7, 0, 3)."""
    K, n = 100, 32
    policy = DiffusionPolicy(2, 3, num_steps=K, learn_std=True)
    with torch.no_grad():
        policy.log_std.copy_(torch.tensor([-7.0, 0.0, 3.0]))
    noise, c = torch.randn(n, 3), torch.tensor([0.5, -1.0, 2.0])
    policy.noise_net = ConstantNoise(noise + c)
    step = torch.arange(n) * 3  # includes k = 1 (index 0)
    state, action = torch.randn(n, 2), torch.rand(n, 3) * 2 - 1
    approx = policy.approximate_action(state, action, step=step, noise=noise)
    weights = torch.rand(n)
    torch.testing.assert_close(approx.noise_error(), torch.full((n,), 5.25 / 3))  # (0.25 + 1 + 4) / 3
    assert approx.diffusion_loss(weights).item() == pytest.approx(weights.mean().item() * 5.25 / 3, rel=1e-5)
    np.testing.assert_allclose(policy.elbo_weights.numpy(), elbo_weights_by_hand(K), rtol=1e-5)
    expected_elbo = -torch.tensor(elbo_weights_by_hand(K))[step] * 5.25
    torch.testing.assert_close(policy.elbo_log_likelihood(approx).double(), expected_elbo, rtol=1e-4, atol=1e-5)
    normal = torch.distributions.Normal(approx.action, torch.tensor([-5.0, 0.0, 2.0]).exp())
    torch.testing.assert_close(policy.gaussian_log_likelihood(action, approx), normal.log_prob(action).sum(-1))


# -- samplers against the Gaussian closed form ----------------------------------------------------
@pytest.mark.parametrize("mu,sd", [(0.3, 0.2), (-0.2, 0.25)])
@pytest.mark.parametrize("sampler,n", [("dpm", 100_000), ("ddpm", 20_000)])
def test_samplers_reproduce_gaussian_data(sampler, n, mu, sd):
    torch.manual_seed(0)
    policy = oracle_policy(mu, sd)
    sample = policy.sample(torch.zeros(n, 1), sampler=sampler)
    assert policy.noise_net.calls == (15 if sampler == "dpm" else 1000)
    assert sample.mean().item() == pytest.approx(mu, abs=0.02 * max(abs(mu), sd))  # 4+ standard errors
    assert sample.std().item() == pytest.approx(sd, rel=0.03)


def exact_flow(policy, x_start, mu, sd, policy_scale=1.0):
    """The probability-flow ODE of Gaussian data with eps scaled by tau, in closed form. With z = x / alpha and
    u = sigma^2 / alpha^2, the exact eps is e^-lambda (z - mu) / (sd^2 + u), and dz/dlambda = -tau e^-lambda eps
    gives dz/du = tau (z - mu) / (2 (sd^2 + u)): z - mu scales by ((sd^2 + u_end) / (sd^2 + u_start))^(tau / 2)
    (tau = 1: quantiles to quantiles). Clipped to +-1 as the samplers' output is."""
    alpha_start, alpha_end = policy.noise_net.alpha(policy.num_steps - 1), policy.noise_net.alpha(0)
    u_start, u_end = 1 / alpha_start**2 - 1, 1 / alpha_end**2 - 1
    ratio = ((sd**2 + u_end) / (sd**2 + u_start)) ** (policy_scale / 2)
    return (alpha_end * (mu + (x_start.double() / alpha_start - mu) * ratio)).clamp(-1, 1)


def flow_error(order, steps, method, skip, noise_scale=1.0, policy_scale=1.0, mu=0.3, sd=0.2, n=5000):
    """Mean |sample - exact flow of the same initial noise| of a DPM-Solver run (no x0 clipping)."""
    policy = oracle_policy(mu, sd)
    torch.manual_seed(1)
    sample = policy.sample(torch.zeros(n, 1), steps=steps, order=order, method=method, skip=skip, clip_denoised=False,
                           noise_scale=noise_scale, policy_scale=policy_scale)
    assert policy.noise_net.calls == steps
    torch.manual_seed(1)
    exact = exact_flow(policy, noise_scale * torch.randn(n, 1), mu, sd, policy_scale)
    return (sample.double() - exact).abs().mean().item()


def test_multistep_dpm_solver_error_decreases_with_order():
    errors = [flow_error(order, 15, "multistep", "logSNR") for order in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 3e-3, errors  # measured 1.8e-3 (sd of the data 0.2)


# Mean error against the exact flow of the singlestep solver at order 3 (measured: logSNR 1.65e-2, 3.7e-4, 2.1e-5;
# time_uniform 4.75e-2, 1.56e-2, 3.2e-3 at 15, 30, 60 calls; order 1 at 60 calls: 6.3e-3 and 1.6e-2). The bounds
# are 1.5x the measured values. At 15 calls the [3, 3, 3, 3, 2, 1] split ends in a first-order step, which sets the
# error; time_uniform converges more slowly (its steps are uneven in log-SNR).
SINGLESTEP_BOUNDS = {"logSNR": [2.5e-2, 6e-4, 3.2e-5], "time_uniform": [7e-2, 2.4e-2, 5e-3]}


@pytest.mark.parametrize("skip", ["logSNR", "time_uniform"])
def test_singlestep_third_order_dpm_solver_is_held_to_error_bounds(skip):
    errors = [flow_error(3, steps, "singlestep", skip) for steps in (15, 30, 60)]
    assert all(error < bound for error, bound in zip(errors, SINGLESTEP_BOUNDS[skip])), errors
    assert errors[2] < errors[1] < errors[0], errors
    assert errors[2] < 0.4 * flow_error(1, 60, "singlestep", skip), errors  # third order beats first by far
    if skip == "logSNR":
        assert errors[1] / errors[2] > 8, errors  # third order: halving the steps divides the error by 8 or more


def test_singlestep_time_uniform_calls_the_model_at_the_uniform_time_grid():
    """The released configuration: 15 calls as [3, 3, 3, 3, 2, 1] over a grid of 16 uniform times from 1 to 1 / K,
    each update taking its inner nodes from the grid (DPM-Solver's sample(): timesteps_inner): the model is called
    at exactly the first 15 grid times (network index K t - 1)."""
    K = 1000
    policy = oracle_policy(num_steps=K)
    policy.sample(torch.zeros(4, 1), steps=15, order=3, method="singlestep", skip="time_uniform")
    grid = [1 + (1 / K - 1) * i / 15 for i in range(15)]
    np.testing.assert_allclose(policy.noise_net.indices, [K * t - 1 for t in grid], rtol=0, atol=1e-4)  # float32 index


def test_singlestep_logsnr_calls_the_model_at_thirds_and_halves_of_uniform_log_snr_cells():
    """logSNR: six updates on six uniform log-SNR cells from t = 1 to 1 / K, order 3 with nodes at 1/3 and 2/3 of
    the cell, order 2 at 1/2 (Lu et al. 2022, Alg. 1 and 2), order 1 at its start."""
    K = 1000
    policy = oracle_policy(num_steps=K)
    policy.sample(torch.zeros(4, 1), steps=15, order=3, method="singlestep", skip="logSNR")
    oracle = policy.noise_net
    lam_start, lam_end = oracle.lam(K - 1), oracle.lam(0)
    cell = (lam_end - lam_start) / 6
    expected = [lam_start + cell * (i + r) for i in range(4) for r in (0, 1 / 3, 2 / 3)]
    expected += [lam_start + cell * (4 + r) for r in (0, 1 / 2)] + [lam_start + cell * 5]
    np.testing.assert_allclose([oracle.lam(index) for index in oracle.indices], expected, rtol=0, atol=1e-5)


def test_multistep_calls_the_model_on_a_uniform_log_snr_grid():
    K = 1000
    policy = oracle_policy(num_steps=K)
    policy.sample(torch.zeros(4, 1), steps=15, order=3)
    oracle = policy.noise_net
    lam_start, lam_end = oracle.lam(K - 1), oracle.lam(0)
    expected = [lam_start + (lam_end - lam_start) * i / 15 for i in range(15)]
    np.testing.assert_allclose([oracle.lam(index) for index in oracle.indices], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("steps,expected", [(5, [1, 2, 3, 2, 1]), (6, [1, 2, 3, 3, 2, 1]), (9, [1, 2, 3, 3, 3, 3, 3, 2, 1]),
                                            (12, [1, 2] + [3] * 10)])
def test_multistep_warms_up_and_lowers_the_order_at_the_end_under_10_steps(steps, expected, monkeypatch):
    """DPM-Solver's multistep sample() (lower_order_final): order n at the n-th step while the history fills, and
    min(order, steps + 1 - n) at the end when steps < 10; from 10 steps on, order 3 to the end."""
    orders, update = [], diffusion._multistep_update
    monkeypatch.setattr(diffusion, "_multistep_update", lambda *args: orders.append(args[-1]) or update(*args))
    oracle_policy().sample(torch.zeros(4, 1), steps=steps, order=3)
    assert orders == expected


@pytest.mark.parametrize("noise_scale,policy_scale", [(0.5, 1.0), (2.0, 1.0), (1.0, 0.5), (1.0, 1.5)])
def test_controlled_sampling_follows_the_scaled_probability_flow(noise_scale, policy_scale):
    """App. C.4: a_K scaled by noise_scale, eps_theta by policy_scale tau; DPM-Solver (15 calls, multistep) follows
    the exact flow of that initial noise under tau eps (measured mean errors 0.9e-3, 3.2e-3, 4.4e-3, 7.0e-3)."""
    error = flow_error(3, 15, "multistep", "logSNR", noise_scale=noise_scale, policy_scale=policy_scale)
    assert error < 0.012, error
    # the scales change the output far more than the bound: an ignored scale fails
    policy = oracle_policy()
    torch.manual_seed(1)
    start = torch.randn(5000, 1)
    unscaled = exact_flow(policy, start, 0.3, 0.2)
    assert (exact_flow(policy, noise_scale * start, 0.3, 0.2, policy_scale) - unscaled).abs().mean() > 5 * 0.012


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


def test_policy_scale_zero_leaves_the_noise_but_for_alpha():
    # with tau = 0 the solver never moves away from the (scaled) initial noise but for alpha_t
    policy = oracle_policy()
    torch.manual_seed(3)
    sample = policy.sample(torch.zeros(1000, 1), policy_scale=0.0, method="singlestep", order=1, steps=1,
                           clip_denoised=False)
    torch.manual_seed(3)
    start = torch.randn(1000, 1)
    ratio = math.sqrt(linear_alphas_cumprod(1000)[0] / linear_alphas_cumprod(1000)[-1])
    torch.testing.assert_close(sample, (ratio * start).clamp(-1, 1), rtol=1e-5, atol=1e-5)


class StepNoise(torch.nn.Module):
    """eps_hat = -5 at index 1 (the implied x0 is far above 1: the clip binds), 0 at index 0; records its inputs."""

    def __init__(self):
        super().__init__()
        self.inputs = []

    def forward(self, state, x, step):
        self.inputs.append(x.clone())
        return torch.full_like(x, -5.0) if step.item() == 1 else torch.zeros_like(x)


def test_ddpm_clips_x0_then_steps_to_the_posterior_mean_with_noise_and_adds_none_at_the_end():
    """K = 2 (vp): from a_2, x0 = clip((a_2 - sqrt(1 - abar_2) eps_hat) / sqrt(abar_2)) = 1, then a_1 = c_x0 x0 +
    c_xk a_2 + sigma_2 z, z ~ N(0, 1) (coefficients by hand); from a_1 the result is clip(a_1 / sqrt(abar_1))
    exactly: at k = 1 the posterior mean is x0 and no noise is added."""
    K, n = 2, 20_000
    policy = DiffusionPolicy(1, 1, num_steps=K, schedule="vp")
    policy.noise_net = StepNoise()
    torch.manual_seed(0)
    out = policy.sample(torch.zeros(n, 1), sampler="ddpm").double()
    a2, a1 = (x.double() for x in policy.noise_net.inputs)
    abar1, abar2 = math.exp(-0.05 - 4.95 / 4), math.exp(-0.1 - 4.95)  # test_vp_schedule_alpha_bar_closed_form
    beta2 = 1 - abar2 / abar1
    c_x0, c_xk = beta2 * math.sqrt(abar1) / (1 - abar2), (1 - abar1) * math.sqrt(1 - beta2) / (1 - abar2)
    sigma2 = math.sqrt(beta2 * (1 - abar1) / (1 - abar2))
    z = (a1 - c_x0 * 1.0 - c_xk * a2) / sigma2
    assert abs(z.mean().item()) < 0.05 and z.std().item() == pytest.approx(1.0, abs=0.05)  # 7 standard errors
    inside = (a1 / math.sqrt(abar1)).abs() < 1
    assert inside.float().mean() > 0.05
    torch.testing.assert_close(out, (a1 / math.sqrt(abar1)).clamp(-1, 1), rtol=1e-5, atol=1e-6)


# -- DPM-Solver's continuous time, grids and singlestep plan -----------------------------------------
def lam_by_hand(t, K=1000):
    """lambda(t) = log alpha - log sigma with log alpha = 0.5 log abar interpolated linearly at index K t - 1."""
    log_alpha = 0.5 * np.log(linear_alphas_cumprod(K))
    index = min(max(K * t - 1, 0.0), K - 1.0)
    lo = min(int(index), K - 2)
    la = (1 - (index - lo)) * log_alpha[lo] + (index - lo) * log_alpha[lo + 1]
    return la - 0.5 * math.log(-math.expm1(2 * la))


def test_half_log_snr_and_its_inverse():
    """lambda at the grid points t_n = (n + 1) / K is 0.5 log(abar_n / (1 - abar_n)); t_of_lambda inverts lambda on
    [1 / K, 1] and clamps outside."""
    K = 1000
    schedule = DiffusionPolicy(1, 1, num_steps=K).continuous_schedule
    abar = linear_alphas_cumprod(K)
    for n in (0, 1, 499, 998, 999):
        assert schedule.lam((n + 1) / K) == pytest.approx(0.5 * math.log(abar[n] / (1 - abar[n])), rel=1e-6)
    for t in np.random.default_rng(0).uniform(1 / K, 1, 200):
        assert schedule.lam(t) == pytest.approx(lam_by_hand(t), rel=1e-6, abs=1e-6)
        assert schedule.t_of_lambda(schedule.lam(t)) == pytest.approx(t, abs=1e-9)
    assert schedule.t_of_lambda(schedule.lam(1 / K) + 1) == 1 / K and schedule.t_of_lambda(schedule.lam(1.0) - 1) == 1.0


@pytest.mark.parametrize("skip", DPM_SKIPS)
def test_time_grids_are_uniform_in_their_variable(skip):
    """From t = 1 to t_end: uniform in t (time_uniform), in sqrt(t) (time_quadratic), in lambda (logSNR)."""
    K, n = 1000, 15
    schedule = DiffusionPolicy(1, 1, num_steps=K).continuous_schedule
    grid = diffusion._time_grid(schedule, skip, n, 1 / K)
    assert len(grid) == n + 1 and grid[0] == pytest.approx(1.0, abs=1e-12) and grid[-1] == pytest.approx(1 / K, abs=1e-12)
    variable = {"time_uniform": lambda t: t, "time_quadratic": math.sqrt, "logSNR": lam_by_hand}[skip]
    steps = np.diff([variable(t) for t in grid])
    np.testing.assert_allclose(steps, steps[0], rtol=1e-6)


@pytest.mark.parametrize("steps,order,expected", [(15, 3, [3, 3, 3, 3, 2, 1]), (16, 3, [3] * 5 + [1]),
                                                  (17, 3, [3] * 5 + [2]), (15, 2, [2] * 7 + [1]), (14, 2, [2] * 7),
                                                  (4, 1, [1] * 4)])
@pytest.mark.parametrize("skip", DPM_SKIPS)
def test_singlestep_plan_splits_the_calls_as_dpm_solver(steps, order, expected, skip):
    """DPM-Solver's get_orders_and_timesteps_for_singlestep_solver (order 3: [3] * (m - 2) + [2, 1] with
    m = steps // 3 + 1 when steps % 3 == 0, [3] * (m - 1) + [steps % 3] otherwise; order 2: 2s then a 1 if odd).
    The updates tile [t_end, 1]; logSNR: one uniform log-SNR cell each, inner nodes at 1/3, 2/3 (order 3) or 1/2;
    else each spans `order` cells of a grid of steps + 1 points, the inner nodes at its own inner grid points."""
    K = 1000
    schedule = DiffusionPolicy(1, 1, num_steps=K).continuous_schedule
    intervals, orders, ratios = diffusion._singlestep_plan(schedule, skip, steps, order, 1 / K)
    assert orders == expected
    assert intervals[0][0] == pytest.approx(1.0) and intervals[-1][1] == pytest.approx(1 / K)
    assert all(a[1] == b[0] for a, b in zip(intervals, intervals[1:]))
    if skip == "logSNR":
        widths = [lam_by_hand(t) - lam_by_hand(s) for s, t in intervals]
        np.testing.assert_allclose(widths, widths[0], rtol=1e-6)
        for r, o in zip(ratios, orders):
            assert r == pytest.approx({3: [1 / 3, 2 / 3], 2: [1 / 2], 1: []}[o])
        return
    to_variable, from_variable = {"time_uniform": (lambda t: t, lambda v: v),
                                  "time_quadratic": (math.sqrt, lambda v: v * v)}[skip]
    grid = [from_variable(1 + (to_variable(1 / K) - 1) * i / steps) for i in range(steps + 1)]
    bounds = np.cumsum([0] + orders)
    for (s, t), o, r, start in zip(intervals, orders, ratios, bounds):
        assert (s, t) == pytest.approx((grid[start], grid[start + o]), abs=1e-12)
        inner = [from_variable(to_variable(s) + (to_variable(t) - to_variable(s)) * j / o) for j in range(1, o)]
        h = lam_by_hand(t) - lam_by_hand(s)
        assert r == pytest.approx([(lam_by_hand(u) - lam_by_hand(s)) / h for u in inner], rel=1e-6)


def test_the_released_singlestep_time_uniform_split_shrinks_gaussian_data():
    # why the default departs from the released code: its [3,3,3,3,2,1] split on a time-uniform grid
    # ends with a first-order step across most of the log-SNR range, which collapses towards the mean
    torch.manual_seed(0)
    released = oracle_policy(0.3, 0.2).sample(torch.zeros(100_000, 1), method="singlestep", skip="time_uniform")
    default = oracle_policy(0.3, 0.2).sample(torch.zeros(100_000, 1))
    assert released.std().item() < 0.8 * 0.2 < 0.97 * 0.2 < default.std().item()


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


class StateDependentPolicy:
    """Samples a = s[:, :1] + 0.5 z for each row it is given, and records the states and the samples."""

    def sample(self, state, **kwargs):
        self.states, self.kwargs = state, kwargs
        self.samples = state[:, :1] + 0.5 * torch.randn(len(state), 1)
        return self.samples


@pytest.mark.parametrize("greedy,temperature", [(True, 1.0), (False, 1e-6)])
def test_energy_based_action_selection_scores_each_candidate_at_its_own_state(greedy, temperature):
    """N candidates per state, drawn with that state, scored by Q(s, a) = -(a - s_2)^2 at that state: the choice
    for each state is its own candidate nearest to its s_2 (greedy, or softmax at a tiny temperature); the
    sampler's arguments pass through."""
    n = 6
    policy = StateDependentPolicy()
    state = torch.randn(8, 2) * 3
    torch.manual_seed(0)
    chosen = energy_based_action_selection(policy, lambda s, a: -(a - s[:, 1:]).pow(2).squeeze(-1), state, n,
                                           temperature=temperature, greedy=greedy, steps=7)
    assert policy.kwargs == {"steps": 7}
    for b in range(len(state)):
        own = (policy.states == state[b]).all(dim=1)
        assert own.sum() == n
        candidates = policy.samples[own]
        assert chosen[b] == candidates[(candidates - state[b, 1]).abs().argmin()]


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
