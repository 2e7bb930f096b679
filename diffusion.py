"""The diffusion policy of Efficient Diffusion Policies (Kang et al., 2023), shared by all scripts.

Read top to bottom:
  1. noise schedules (beta_k for k = 1..K)
  2. the noise-prediction network eps_theta(a_k, k; s)
  3. DiffusionPolicy: diffusion loss (Eq. 5), action approximation (Eq. 9), the likelihood
     surrogates (Eq. 12, Eq. 13), DDPM ancestral sampling (Eq. 4) and DPM-Solver (Lu et al. 2022)
  4. energy-based action selection (Alg. 2)

Indexing: the paper's step k in {1..K} is stored at index k - 1 of every schedule buffer, and the
network is fed that index (0..K-1) as in the authors' code. DPM-Solver works in continuous time
t in [1/K, 1] with t_n = (n + 1) / K, so its network input is the continuous index K * t - 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

SCHEDULES = ("linear", "vp", "cosine")
SAMPLERS = ("dpm", "ddpm")
DPM_METHODS = ("multistep", "singlestep")
DPM_SKIPS = ("logSNR", "time_uniform", "time_quadratic")


# ----------------------------------------------------------------------------------------------
# 1. Noise schedules
# ----------------------------------------------------------------------------------------------
def make_beta_schedule(name: str, num_steps: int) -> torch.Tensor:
    """beta_1..beta_K of the forward process, Eq. 1 (float64). ValueError for a bad name or schedule."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    K = num_steps
    if name == "linear":
        # authors' code: DDPM's 1e-4..0.02 rescaled by 1000 / K, i.e. 0.1 / K .. 20 / K
        betas = torch.linspace(0.1 / K, 20.0 / K, K, dtype=torch.float64)
    elif name == "vp":
        # Diffusion-QL's variance-preserving schedule, b_min = 0.1, b_max = 10
        t = torch.arange(1, K + 1, dtype=torch.float64)
        alphas = torch.exp(-0.1 / K - 0.5 * (10.0 - 0.1) * (2 * t - 1) / K**2)
        betas = 1 - alphas
    elif name == "cosine":
        # Nichol & Dhariwal (2021): s = 0.008, beta capped at 0.999
        s = 0.008
        t = torch.arange(K + 1, dtype=torch.float64) / K
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        abar = f / f[0]
        betas = (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    else:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    if not (betas > 0).all() or not (betas < 1).all():
        raise ValueError(
            f"the {name!r} schedule with K={K} gives beta outside (0, 1) (max {betas.max().item():.3g});"
            f" the rescaled linear schedule needs K >= 21"
        )
    return betas


# ----------------------------------------------------------------------------------------------
# 2. Noise-prediction network eps_theta(a_k, k; s)
# ----------------------------------------------------------------------------------------------
class _MishFunction(torch.autograd.Function):
    """mish(x) = x tanh(softplus(x)) = x n / (n + 2) with n = e^x (e^x + 2): one exp, no log or tanh.

    On a 2-core CPU this is 2.3x faster forward than aten's mish (53 vs 123 us at 256 x 256), which
    was 45% of an EDP training step (benchmark_speed.py); tests/test_diffusion.py checks it exact.
    """

    @staticmethod
    def forward(ctx, x):
        e = x.clamp(max=20.0).exp_()  # beyond 20, tanh(softplus(x)) is 1 in float32
        n = e.add(2.0).mul_(e)
        t = n.div_(n.add(2.0))  # tanh(softplus(x))
        ctx.save_for_backward(x, t, e)
        return x * t

    @staticmethod
    def backward(ctx, grad):
        x, t, e = ctx.saved_tensors
        sigmoid = e / (e + 1.0)
        # d/dx [x t(x)] = t + x (1 - t^2) sigmoid(x)
        return grad * t.mul(t).neg_().add_(1.0).mul_(sigmoid).mul_(x).add_(t)


class Mish(nn.Module):
    """The same values as torch's Mish, computed faster (see _MishFunction)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() <= 4096:  # up to ~16 rows of 256 aten's single kernel is faster (10 vs 19 us)
            return F.mish(x)
        return _MishFunction.apply(x)


class SinusoidalStepEmbedding(nn.Module):
    """Sinusoidal embedding of the (possibly fractional) step index, [cos, sin] of dim // 2 freqs."""

    def __init__(self, dim: int = 16):
        super().__init__()
        half = dim // 2
        # authors' code: freqs exp(-ln(10000) * i / half), i = 0..half-1
        self.register_buffer("freqs", torch.exp(-math.log(10000.0) * torch.arange(half) / half))

    def forward(self, step: torch.Tensor) -> torch.Tensor:
        angles = step.float()[:, None] * self.freqs[None, :]
        return torch.cat([angles.cos(), angles.sin()], dim=-1)


# LeCun-normal, Flax's nn.Dense default: a normal truncated at +-2 standard deviations, rescaled so that its standard
# deviation is exactly 1 / sqrt(fan_in) (jax.nn.initializers.variance_scaling, "truncated_normal"); 0.87962566 is
# the standard deviation of a standard normal truncated at +-2
TRUNCATED_NORMAL_STD = 0.87962566103423978


@torch.no_grad()
def initialize_layers(module: nn.Module, init: str = "lecun") -> nn.Module:
    """Every nn.Linear of `module` as the authors' Flax nn.Dense starts (lecun: LeCun-normal weights, zero biases;
    sail-sg/edp nets.py sets no initialiser, and trainer.py's orthogonal_init=False) or as PyTorch's (torch)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear) and init == "lecun":
            std = 1.0 / math.sqrt(layer.in_features) / TRUNCATED_NORMAL_STD
            nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.Linear):
            layer.reset_parameters()
    return module


class NoiseNetwork(nn.Module):
    """eps_theta(a_k, k; s): step embedding -> MLP; [state, a_k, embedding] -> 3 x (256, Mish)."""

    def __init__(self, state_dim: int, action_dim: int, hidden_dim: int = 256, step_dim: int = 16, init: str = "lecun"):
        super().__init__()
        self.step_mlp = nn.Sequential(
            SinusoidalStepEmbedding(step_dim),
            nn.Linear(step_dim, step_dim * 2),
            Mish(),
            nn.Linear(step_dim * 2, step_dim),
        )
        self.mlp = nn.Sequential(
            nn.Linear(state_dim + action_dim + step_dim, hidden_dim),
            Mish(),
            nn.Linear(hidden_dim, hidden_dim),
            Mish(),
            nn.Linear(hidden_dim, hidden_dim),
            Mish(),
            nn.Linear(hidden_dim, action_dim),
        )
        initialize_layers(self, init)

    def forward(self, state: torch.Tensor, noisy_action: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """step: (B,) per-sample indices, or (1,) for one index shared by the batch (embedded once)."""
        step_embedding = self.step_mlp(step).expand(state.shape[0], -1)
        return self.mlp(torch.cat([state, noisy_action, step_embedding], dim=-1))


# ----------------------------------------------------------------------------------------------
# 3. The diffusion policy
# ----------------------------------------------------------------------------------------------
@dataclass
class ActionApproximation:
    """One forward pass of eps_theta on a corrupted dataset action, and what follows from it."""

    action: torch.Tensor  # a0_hat, Eq. 9, clipped to +-max_action, differentiable
    noise: torch.Tensor  # the eps used to corrupt the action
    predicted_noise: torch.Tensor  # eps_theta(a_k, k; s)
    step: torch.Tensor  # index k - 1 of each sample, long, (B,)

    def noise_error(self) -> torch.Tensor:
        """Per-sample mean over action dims of (eps - eps_theta)^2, shape (B,)."""
        return (self.noise - self.predicted_noise).pow(2).mean(dim=-1)

    def diffusion_loss(self, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Eq. 5 (weighted by per-sample weights when given), a scalar."""
        error = self.noise_error()
        return error.mean() if weights is None else (weights * error).mean()


class DiffusionPolicy(nn.Module):
    """pi_theta(a | s) as the reverse process of a conditional DDPM (Eq. 3), K steps."""

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        num_steps: int = 1000,
        schedule: str = "linear",
        hidden_dim: int = 256,
        max_action: float = 1.0,
        learn_std: bool = False,
        init: str = "lecun",
    ):
        super().__init__()
        self.state_dim, self.action_dim = state_dim, action_dim
        self.num_steps, self.schedule, self.max_action = num_steps, schedule, float(max_action)
        self.noise_net = NoiseNetwork(state_dim, action_dim, hidden_dim, init=init)

        betas = make_beta_schedule(schedule, num_steps)
        alphas = 1 - betas
        abar = torch.cumprod(alphas, dim=0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        posterior_variance = betas * (1 - abar_prev) / (1 - abar)
        # Eq. 12 weight beta_k / (2 alpha_k (1 - abar_{k-1})) is infinite at k = 1 (abar_0 = 1);
        # there we use the sigma_1^2 = beta_1 decoder of DDPM, i.e. 1 / (2 alpha_1) (our choice).
        elbo_weights = betas / (2 * alphas * (1 - abar_prev).clamp(min=1e-300))
        elbo_weights[0] = 1 / (2 * alphas[0])
        # the authors' ELBO weights (sail-sg/edp diffusion.py:207-208): 1 - abar_k where Eq. 12 has 1 - abar_{k-1}
        authors_elbo_weights = betas / (2 * alphas * (1 - abar))
        buffers = {
            "betas": betas,
            "alphas_cumprod": abar,
            "sqrt_alphas_cumprod": abar.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - abar).sqrt(),
            "sqrt_recip_alphas_cumprod": (1 / abar).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1 / abar - 1).sqrt(),
            # DDPM posterior q(a_{k-1} | a_k, a_0), log-variance clipped at 1e-20 as in DDPM's code
            "posterior_log_variance": posterior_variance.clamp(min=1e-20).log(),
            "posterior_mean_coef_x0": betas * abar_prev.sqrt() / (1 - abar),
            "posterior_mean_coef_xk": (1 - abar_prev) * alphas.sqrt() / (1 - abar),
            "elbo_weights": elbo_weights / elbo_weights.mean(),  # normalised to mean 1
            "authors_elbo_weights": authors_elbo_weights / authors_elbo_weights.mean(),  # as theirs, mean 1
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.float())
        # DPM-Solver's continuous-time view of this discrete schedule, host floats in float64
        self.continuous_schedule = DiscreteVPSchedule((0.5 * abar.log()).tolist())

        # state-independent log-std of the Eq. 13 Gaussian surrogate (fixed at 0, i.e. sigma = 1)
        log_std = torch.zeros(action_dim)
        if learn_std:
            self.log_std = nn.Parameter(log_std)
        else:
            self.register_buffer("log_std", log_std)

    # -- training --------------------------------------------------------------------------------
    def forward(self, state: torch.Tensor, noisy_action: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        return self.noise_net(state, noisy_action, step)

    def approximate_action(
        self,
        state: torch.Tensor,
        action: torch.Tensor,
        step: Optional[torch.Tensor] = None,
        noise: Optional[torch.Tensor] = None,
    ) -> ActionApproximation:
        """Corrupt dataset actions to a uniform random step (Eq. 8), denoise them in one call (Eq. 9)."""
        if step is None:
            step = torch.randint(0, self.num_steps, (action.shape[0],), device=action.device)
        if noise is None:
            noise = torch.randn_like(action)
        noisy_action = (
            self.sqrt_alphas_cumprod[step, None] * action + self.sqrt_one_minus_alphas_cumprod[step, None] * noise
        )  # Eq. 8
        predicted_noise = self.noise_net(state, noisy_action, step)
        approx = (
            self.sqrt_recip_alphas_cumprod[step, None] * noisy_action
            - self.sqrt_recipm1_alphas_cumprod[step, None] * predicted_noise
        )  # Eq. 9
        approx = approx.clamp(-self.max_action, self.max_action)
        return ActionApproximation(approx, noise, predicted_noise, step)

    def loss(self, state: torch.Tensor, action: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Diffusion loss L_diff, Eq. 5 (weighted per sample when weights are given)."""
        return self.approximate_action(state, action).diffusion_loss(weights)

    def gaussian_log_likelihood(self, action: torch.Tensor, approximation: ActionApproximation) -> torch.Tensor:
        """Eq. 13: log N(a; a0_hat, sigma^2 I), sigma = exp(log_std) (1 unless learned), shape (B,)."""
        log_std = self.log_std.clamp(-5.0, 2.0)  # bounds of the authors' code
        z = (action - approximation.action) * torch.exp(-log_std)
        return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(dim=-1)

    def elbo_log_likelihood(self, approximation: ActionApproximation, weights: str = "eq12") -> torch.Tensor:
        """Eq. 12: the DDPM bound on log pi(a|s) up to constants, -w_k ||eps - eps_theta||^2, shape (B,). weights
        "authors": their w_k (1 - abar_k in the denominator) on the mean over action dims instead of the sum (sail-sg/edp
        diffusion.py:207-208, 727), which keeps the term, and so eta, independent of the action dimension."""
        if weights == "authors":
            return -self.authors_elbo_weights[approximation.step] * approximation.noise_error()
        squared_error = (approximation.noise - approximation.predicted_noise).pow(2).sum(dim=-1)
        return -self.elbo_weights[approximation.step] * squared_error

    def weighted_likelihood_loss(self, action: torch.Tensor, approximation: ActionApproximation, weight: torch.Tensor,
                                 surrogate: str = "gaussian", elbo_weights: str = "eq12") -> torch.Tensor:
        """Eq. 11's loss -E[f * log pi(a|s)] with the weight f (B, 1) given and log pi replaced by the Gaussian
        surrogate (Eq. 13) or the ELBO (Eq. 12, weighted as `elbo_weights` says)."""
        if surrogate == "gaussian":
            log_likelihood = self.gaussian_log_likelihood(action, approximation)
        else:
            log_likelihood = self.elbo_log_likelihood(approximation, elbo_weights)
        return -(weight.squeeze(1) * log_likelihood).mean()

    # -- sampling --------------------------------------------------------------------------------
    def sample(
        self,
        state: torch.Tensor,
        sampler: str = "dpm",
        steps: int = 15,
        order: int = 3,
        method: str = "multistep",
        skip: str = "logSNR",
        noise_scale: float = 1.0,
        policy_scale: float = 1.0,
        clip_denoised: bool = True,
        requires_grad: bool = False,
    ) -> torch.Tensor:
        """Actions in [-max_action, max_action] for a batch of states.

        sampler: "dpm" (DPM-Solver, `steps` model calls of the given order, method and time grid)
        or "ddpm" (ancestral sampling over all K steps, Eq. 4; the DPM arguments do not apply).
        Departure from the released code (singlestep, time_uniform): its last first-order step
        spans most of the log-SNR range and shrinks the std of Gaussian data by ~30% at 15 calls
        (tests/test_diffusion.py), so the default is multistep on a uniform log-SNR grid (~1%).
        `method="singlestep", skip="time_uniform"` reproduces the released configuration.
        noise_scale scales the initial noise a_K (0 gives deterministic DPM-Solver sampling) and
        policy_scale tau multiplies eps_theta (sharper policy for tau > 1), both from Appendix C.4.
        With requires_grad the graph through every model call is kept (Diffusion-QL training).
        """
        check_sampler_args(sampler, steps, order, method, skip)
        with torch.set_grad_enabled(requires_grad and torch.is_grad_enabled()):
            x = noise_scale * torch.randn(state.shape[0], self.action_dim, device=state.device, dtype=state.dtype)

            def eps(x: torch.Tensor, step: float) -> torch.Tensor:
                step_tensor = torch.full((1,), step, device=x.device)
                out = self.noise_net(state, x, step_tensor)
                return out if policy_scale == 1.0 else policy_scale * out

            if sampler == "ddpm":
                x = self._ddpm(x, eps)
            else:
                x = self._dpm_solver(x, eps, steps, order, method, skip, clip_denoised)
            return x.clamp(-self.max_action, self.max_action)

    def _ddpm(self, x: torch.Tensor, eps: Callable) -> torch.Tensor:
        """DDPM ancestral sampling of the reverse process (Eq. 2), Eq. 4 via the x0 prediction and posterior mean."""
        for i in reversed(range(self.num_steps)):
            x0 = self.sqrt_recip_alphas_cumprod[i] * x - self.sqrt_recipm1_alphas_cumprod[i] * eps(x, float(i))
            x0 = x0.clamp(-self.max_action, self.max_action)
            x = self.posterior_mean_coef_x0[i] * x0 + self.posterior_mean_coef_xk[i] * x
            if i > 0:  # no noise at the last step
                x = x + torch.exp(0.5 * self.posterior_log_variance[i]) * torch.randn_like(x)
        return x

    # DPM-Solver (Lu et al. 2022), noise-prediction form. All schedule values along the way are
    # host floats computed once per (steps, order, method), so the loop is model calls and axpys.
    def _dpm_solver(self, x, eps, steps: int, order: int, method: str, skip: str, clip_denoised: bool):
        schedule = self.continuous_schedule

        def model(x: torch.Tensor, t: float) -> torch.Tensor:
            e = eps(x, self.num_steps * t - 1)  # continuous index K t - 1
            if clip_denoised:  # keep the implied x0 in range, as the authors' code does
                a, s = schedule.alpha(t), schedule.sigma(t)
                x0 = ((x - s * e) / a).clamp(-self.max_action, self.max_action)
                e = (x - a * x0) / s
            return e

        t_end = 1.0 / self.num_steps  # DPM-Solver's default for discrete models (1e-3 at K = 1000)
        if method == "singlestep":
            for (s, t), step_order, ratios in zip(*_singlestep_plan(schedule, skip, steps, order, t_end)):
                x = _singlestep_update(schedule, model, x, s, t, step_order, *ratios)
            return x
        # multistep: the first order - 1 steps warm up with lower orders
        times = _time_grid(schedule, skip, steps, t_end)
        history = [(times[0], model(x, times[0]))]
        for n in range(1, steps + 1):
            step_order = min(order, n, steps + 1 - n) if steps < 10 else min(order, n)
            x = _multistep_update(schedule, x, history[-step_order:], times[n], step_order)
            if n < steps:
                history = history[-2:] + [(times[n], model(x, times[n]))]
        return x


class DiscreteVPSchedule:
    """log alpha_t piecewise linear in t on the grid t_n = (n + 1) / K (DPM-Solver's discrete VP)."""

    def __init__(self, log_alpha: list):
        self.log_alpha_grid = log_alpha
        self.K = len(log_alpha)

    def log_alpha(self, t: float) -> float:
        if self.K == 1:
            return self.log_alpha_grid[0]
        position = min(max(t * self.K - 1, 0.0), self.K - 1.0)  # grid index, clamped to the grid
        lo = min(int(position), self.K - 2)
        w = position - lo
        return (1 - w) * self.log_alpha_grid[lo] + w * self.log_alpha_grid[lo + 1]

    def alpha(self, t: float) -> float:
        return math.exp(self.log_alpha(t))

    def sigma(self, t: float) -> float:
        return math.sqrt(-math.expm1(2 * self.log_alpha(t)))

    def lam(self, t: float) -> float:  # half log-SNR, lambda_t = log alpha_t - log sigma_t
        return self.log_alpha(t) - 0.5 * math.log(-math.expm1(2 * self.log_alpha(t)))

    def t_of_lambda(self, lam: float) -> float:
        """Inverse of lam(t) on the grid (log alpha is monotone decreasing in t)."""
        log_alpha = -0.5 * math.log1p(math.exp(-2 * lam))
        grid = self.log_alpha_grid
        if log_alpha >= grid[0]:
            return 1.0 / self.K
        if log_alpha <= grid[-1]:
            return 1.0
        lo, hi = 0, self.K - 1  # grid decreasing: find grid[lo] >= log_alpha > grid[hi]
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if grid[mid] >= log_alpha else (lo, mid)
        w = (grid[lo] - log_alpha) / (grid[lo] - grid[hi])
        return (lo + 1 + w) / self.K


def _time_grid(schedule: DiscreteVPSchedule, skip: str, n: int, t_end: float, t_start: float = 1.0) -> list:
    """n + 1 times from t_start down to t_end, uniform in t, in sqrt(t), or in lambda (log-SNR)."""
    if skip == "time_uniform":
        return [t_start + (t_end - t_start) * i / n for i in range(n + 1)]
    if skip == "time_quadratic":
        return [(math.sqrt(t_start) + (math.sqrt(t_end) - math.sqrt(t_start)) * i / n) ** 2 for i in range(n + 1)]
    lam_start, lam_end = schedule.lam(t_start), schedule.lam(t_end)
    return [schedule.t_of_lambda(lam_start + (lam_end - lam_start) * i / n) for i in range(n + 1)]


def _singlestep_plan(schedule: DiscreteVPSchedule, skip: str, steps: int, order: int, t_end: float):
    """DPM-Solver's split of `steps` model calls into singlestep updates (e.g. 15 -> [3,3,3,3,2,1]): the
    intervals, their orders, and each update's inner nodes r1 (, r2) as fractions of its log-SNR step h. The
    inner nodes are the update's own grid of `order` cells in the chosen skip, as DPM-Solver's sample() does
    (time_uniform: the uniform-time points, so r1, r2 follow the schedule; logSNR: 1/3, 2/3 and 1/2)."""
    if order == 3:
        n = steps // 3 + 1
        orders = {0: [3] * (n - 2) + [2, 1], 1: [3] * (n - 1) + [1], 2: [3] * (n - 1) + [2]}[steps % 3]
    elif order == 2:
        orders = [2] * (steps // 2) + [1] * (steps % 2)
    else:
        orders = [1] * steps
    if skip == "logSNR":  # one uniform log-SNR cell per update
        grid = _time_grid(schedule, skip, len(orders), t_end)
        intervals = list(zip(grid[:-1], grid[1:]))
    else:  # a grid of steps + 1 points; each update spans as many cells as its order
        grid = _time_grid(schedule, skip, steps, t_end)
        bounds = [0]
        for o in orders:
            bounds.append(bounds[-1] + o)
        intervals = [(grid[bounds[i]], grid[bounds[i + 1]]) for i in range(len(orders))]
    ratios = []
    for (s, t), o in zip(intervals, orders):
        inner = _time_grid(schedule, skip, o, t, s)  # dpm_solver.py: timesteps_inner, lambda_inner, r1, r2
        h = schedule.lam(t) - schedule.lam(s)
        ratios.append([(schedule.lam(u) - schedule.lam(s)) / h for u in inner[1:-1]])
    return intervals, orders, ratios


def _singlestep_update(schedule: DiscreteVPSchedule, model, x, s: float, t: float, order: int, r1: float = 0.5,
                       r2: float = 2 / 3):
    """One DPM-Solver-1/2/3 step from time s to t with inner nodes at lambda_s + r1 h (, + r2 h) (DPM-Solver
    paper, Alg. 1 and 2, where r1 = 1/2 for order 2 and r1, r2 = 1/3, 2/3 for order 3 on a log-SNR grid)."""
    lam_s, lam_t = schedule.lam(s), schedule.lam(t)
    h = lam_t - lam_s
    eps_s = model(x, s)

    def first_order(u: float, r: float) -> torch.Tensor:  # DDIM step from s to u = lambda_s + r h
        return math.exp(schedule.log_alpha(u) - schedule.log_alpha(s)) * x - schedule.sigma(u) * math.expm1(r * h) * eps_s

    if order == 1:
        return first_order(t, 1.0)
    if order == 2:
        s1 = schedule.t_of_lambda(lam_s + r1 * h)
        eps_s1 = model(first_order(s1, r1), s1)
        return first_order(t, 1.0) - schedule.sigma(t) / (2 * r1) * math.expm1(h) * (eps_s1 - eps_s)
    s1, s2 = schedule.t_of_lambda(lam_s + r1 * h), schedule.t_of_lambda(lam_s + r2 * h)
    eps_s1 = model(first_order(s1, r1), s1)
    phi_22 = math.expm1(r2 * h) / (r2 * h) - 1.0
    x_s2 = first_order(s2, r2) - (r2 / r1) * schedule.sigma(s2) * phi_22 * (eps_s1 - eps_s)
    eps_s2 = model(x_s2, s2)
    phi_2 = math.expm1(h) / h - 1.0
    return first_order(t, 1.0) - schedule.sigma(t) / r2 * phi_2 * (eps_s2 - eps_s)


def _multistep_update(schedule: DiscreteVPSchedule, x, history, t: float, order: int):
    """One multistep DPM-Solver update to t from the last `order` (time, eps) pairs."""
    (t0, e0) = history[-1]
    h = schedule.lam(t) - schedule.lam(t0)
    phi_1 = math.expm1(h)
    x_t = math.exp(schedule.log_alpha(t) - schedule.log_alpha(t0)) * x - schedule.sigma(t) * phi_1 * e0
    if order == 1:
        return x_t
    (t1, e1) = history[-2]
    r0 = (schedule.lam(t0) - schedule.lam(t1)) / h
    d1_0 = (e0 - e1) / r0
    if order == 2:
        return x_t - 0.5 * schedule.sigma(t) * phi_1 * d1_0
    (t2, e2) = history[-3]
    r1 = (schedule.lam(t1) - schedule.lam(t2)) / h
    d1_1 = (e1 - e2) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi_2 = phi_1 / h - 1.0
    phi_3 = phi_2 / h - 0.5
    return x_t - schedule.sigma(t) * phi_2 * d1 - schedule.sigma(t) * phi_3 * d2


def check_sampler_args(sampler: str, steps: int, order: int, method: str, skip: str = "logSNR") -> None:
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if steps < 1:
        raise ValueError(f"sampler steps must be >= 1, got {steps}")
    if order not in (1, 2, 3):
        raise ValueError(f"DPM-Solver order must be 1, 2 or 3, got {order}")
    if method not in DPM_METHODS:
        raise ValueError(f"unknown DPM-Solver method {method!r}; choose one of {', '.join(DPM_METHODS)}")
    if skip not in DPM_SKIPS:
        raise ValueError(f"unknown DPM-Solver time grid {skip!r}; choose one of {', '.join(DPM_SKIPS)}")


# ----------------------------------------------------------------------------------------------
# 4. Energy-based action selection (Alg. 2)
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def energy_based_action_selection(
    policy: DiffusionPolicy,
    q_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    state: torch.Tensor,
    num_samples: int = 10,
    temperature: float = 1.0,
    greedy: bool = False,
    **sample_kwargs,
) -> torch.Tensor:
    """For each of B states draw N actions in one batched call, keep one with prob softmax(Q / T).

    q_function(states, actions) returns (B * N,) or (B * N, 1) values (e.g. min of twin critics);
    greedy=True keeps the argmax instead of sampling. Returns (B, action_dim).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    batch = state.shape[0]
    repeated_state = state.repeat_interleave(num_samples, dim=0)
    candidates = policy.sample(repeated_state, **sample_kwargs).view(batch, num_samples, -1)
    q = q_function(repeated_state, candidates.view(batch * num_samples, -1)).view(batch, num_samples)
    if greedy:
        index = q.argmax(dim=1)
    else:
        index = torch.multinomial(F.softmax(q.float() / temperature, dim=1), 1).squeeze(1)
    return candidates[torch.arange(batch, device=state.device), index]
