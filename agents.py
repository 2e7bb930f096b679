"""What every EDP agent shares around its own update(): the paper's MLP and twin critic, an optimiser step that
torch.compile can trace, target-network and EMA updates, acting by energy-based action selection, compiling, and
the checkpoint state. Each edp_*.py subclasses `Agent` and writes its update() with these.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.optim.adam import adam as functional_adam  # a module-level name: torch.compile traces it

from diffusion import Mish, energy_based_action_selection, initialize_layers
from errors import UsageError, one_line


# ==============================================================================================
# Networks
# ==============================================================================================
def mlp(in_dim: int, out_dim: int, hidden_dim: int = 256, init: str = "lecun") -> nn.Sequential:
    """The paper's backbone (Sec. 5): 3 x (Linear 256 + Mish), then a linear head; layers initialised as `init`."""
    return initialize_layers(nn.Sequential(
        nn.Linear(in_dim, hidden_dim), Mish(),
        nn.Linear(hidden_dim, hidden_dim), Mish(),
        nn.Linear(hidden_dim, hidden_dim), Mish(),
        nn.Linear(hidden_dim, out_dim),
    ), init)


class TwinCritic(nn.Module):
    def __init__(self, state_dim: int, action_dim: int, init: str = "lecun"):
        super().__init__()
        self.q1, self.q2 = mlp(state_dim + action_dim, 1, init=init), mlp(state_dim + action_dim, 1, init=init)

    def parameter_groups(self) -> list:
        """Q1 and Q2 as two optimiser groups: adam_step clips each critic's gradient on its own."""
        return [dict(params=list(self.q1.parameters())), dict(params=list(self.q2.parameters()))]

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> tuple:
        state_action = torch.cat([state, action], dim=-1)
        return self.q1(state_action), self.q2(state_action)

    def q_min(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return torch.min(*self(state, action))


# ==============================================================================================
# Optimiser step, target and EMA updates
# ==============================================================================================
def check_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """adam_step does Adam's and AdamW's arithmetic only; any other optimiser or option is refused in one line."""
    if not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):  # AdamW: decoupled weight decay
        raise TypeError(f"adam_step takes torch.optim.Adam or AdamW, not {type(optimizer).__name__}; for another"
                        " optimiser use loss.backward(), clip_grad_norm_ and optimizer.step()")
    unsupported = sorted({key for group in optimizer.param_groups for key in ("amsgrad", "maximize", "differentiable")
                          if group.get(key)})
    if unsupported:
        raise TypeError(f"adam_step does not implement Adam's {', '.join(unsupported)} option")


def make_capturable(optimizer: torch.optim.Adam, capturable: bool = True) -> None:
    """Adam with its step counts on the parameters' device, as a CUDA graph needs (torch refuses it on CPU)."""
    for group in optimizer.param_groups:
        group["capturable"] = capturable
    for param, state in optimizer.state.items():
        if "step" in state:
            state["step"] = state["step"].to(param.device if capturable else "cpu")


def init_adam_state(optimizer: torch.optim.Adam) -> None:
    """Adam's state as torch.optim.Adam creates it lazily, made up front (a compiled graph cannot create it)."""
    check_optimizer(optimizer)
    for group in optimizer.param_groups:
        for param in group["params"]:
            if not optimizer.state[param]:
                step_device = param.device if group["capturable"] else "cpu"  # where torch.optim.Adam keeps it
                optimizer.state[param] = dict(step=torch.zeros((), device=step_device), exp_avg=torch.zeros_like(param),
                                              exp_avg_sq=torch.zeros_like(param))


def adam_step(loss: torch.Tensor, optimizer: torch.optim.Adam, grad_clip: float) -> torch.Tensor:
    """Back-propagate, clip each parameter group's gradient norm, take one Adam (or AdamW) step; returns the
    largest group's norm before clipping (a tensor, no host sync).

    The same arithmetic as loss.backward(), clip_grad_norm_(group) for each group and optimizer.step(), written
    with autograd.grad and the functional Adam so that torch.compile traces it without a graph break
    (optimizer.step() forces one). One group per network clips each network on its own, as the authors' code
    does (sail-sg/edp dql.py:125-172: one clip_by_global_norm per network, Q1 and Q2 apart); every group takes its
    own lr, betas and weight decay.
    """
    if not optimizer.state:  # the first step (torch.optim.Adam would make its state here)
        init_adam_state(optimizer)
    params = [param for group in optimizer.param_groups for param in group["params"]]
    grads = list(torch.autograd.grad(loss, params))
    norms, start = [], 0
    with torch.no_grad():
        for group in optimizer.param_groups:
            group_params, group_grads = group["params"], grads[start:start + len(group["params"])]
            start += len(group_params)
            norms.append(nn.utils.get_total_norm(group_grads))
            torch._foreach_mul_(group_grads, (grad_clip / (norms[-1] + 1e-6)).clamp(max=1.0))  # clip_grad_norm_'s rule
            states = [optimizer.state[param] for param in group_params]
            functional_adam(group_params, group_grads, [state["exp_avg"] for state in states],
                            [state["exp_avg_sq"] for state in states], [], [state["step"] for state in states],
                            foreach=True, capturable=group["capturable"], amsgrad=False, beta1=group["betas"][0],
                            beta2=group["betas"][1], lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
                            maximize=False, decoupled_weight_decay=group.get("decoupled_weight_decay", False))
    return torch.stack(norms).max()


@torch.no_grad()
def polyak(target: nn.Module, source: nn.Module, tau) -> None:
    """target <- (1 - tau) * target + tau * source, all parameters in one fused call (tau: a float or a tensor)."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def update_ema_policy(ema_policy: nn.Module, policy: nn.Module, step: torch.Tensor, config) -> None:
    """Up to step ema_start the EMA policy is a copy of the policy (--ema-warmup copy) or keeps its initial weights
    (initial: the authors, sail-sg/edp dql.py:675-678); after it, an EMA every ema_every steps (Diffusion-QL's).

    One lerp whose weight is a tensor (1: copy, ema_tau: average, 0: keep), so the step never reaches Python.
    """
    warmup = 1.0 if config.ema_warmup == "copy" else 0.0
    weight = torch.where(step <= config.ema_start, warmup, torch.where(step % config.ema_every == 0, config.ema_tau, 0.0))
    polyak(ema_policy, policy, weight)


# ==============================================================================================
# Compiling: when it pays, and whether it can
# ==============================================================================================
# --compile auto compiles a run with at least this many steps to go. Break-even on a 2-core CPU (README, Speed):
# compiling took 56 s from an empty cache (7 s from inductor's cache) and saves about 6.5 ms of a 22 ms step, so it
# pays after 1,000-9,000 steps; 50,000 keeps a margin of 5x over the worst and leaves the quick-start (6,000 steps),
# the tests and --eval-only eager.
AUTO_COMPILE_STEPS = 50_000


def compiler_problem(device: torch.device) -> str | None:
    """Why torch.compile cannot build kernels here, or None. CPU: inductor needs a C++ compiler ($CXX or g++);
    CUDA: triton, which ships with torch's CUDA wheels."""
    if device.type == "cuda":
        return None
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as error:  # InvalidCxxCompiler: none on PATH, or $CXX names none
        return f"no working C++ compiler for torch.compile on CPU ({one_line(error)})"
    return None


def should_compile(choice: str, steps_left: int, device: torch.device) -> bool:
    """--compile on / off force it; auto compiles runs of AUTO_COMPILE_STEPS or more steps where it can, and says
    in one line when it cannot."""
    if choice == "off":
        return False
    problem = compiler_problem(device)
    if choice == "on" and problem:
        raise UsageError(f"--compile on: {problem}; install one (e.g. g++) or use --compile off")
    if choice == "auto" and steps_left < AUTO_COMPILE_STEPS:
        return False
    if problem:
        print(f"warning: --compile auto: {problem}; training eager (slower)", flush=True)
        return False
    return True


# ==============================================================================================
# The agent base: acting, compiling, checkpoint state
# ==============================================================================================
class Agent:
    """The contract between an algorithm (an edp_*.py) and the runs around it (runs.py), checked by run.start().

    A subclass's __init__(state_dim, action_dim, config, device) must set
        config               the resolved Args
        policy, ema_policy   the DiffusionPolicy trained and its EMA copy
        step_count           a long tensor on the device that update() increments: the run's one step counter
        critic               a module with q_min(state, action): act() selects by EAS (Alg. 2) over it; or
                             `critic = None` in the class body: the acting policy samples plainly, and the
                             --eas-* flags are refused before the run starts
    and write update(batch) -> dict of metric tensors. It may override transition_columns(data) to add
    per-transition fields to every batch. Every network (nn.Module) and optimiser it holds as an attribute is
    checkpointed and restored, found by type: no list to keep, and a --resume whose checkpoint lacks one of them is
    refused."""

    REQUIRED = ("config", "policy", "ema_policy", "step_count")

    @classmethod
    def acts_without_critic(cls) -> bool:
        return "critic" in vars(cls) and cls.critic is None

    def check_contract(self) -> None:
        """One line naming what a subclass's __init__ left out."""
        missing = [name for name in self.REQUIRED if getattr(self, name, None) is None]
        if not hasattr(self, "critic"):
            missing.append("critic (or `critic = None` in the class body, to act by plain sampling)")
        if not missing and not (isinstance(self.step_count, torch.Tensor) and self.step_count.dtype == torch.long
                                and self.step_count.dim() == 0):
            missing = ["step_count as a long scalar tensor"]
        if missing:
            raise UsageError(f"{type(self).__name__}.__init__ must set {', '.join(missing)} (agents.Agent's contract)")

    @property
    def checkpointed(self) -> tuple:
        """The names of every network and optimiser the agent holds, in the order __init__ set them."""
        return tuple(name for name, value in vars(self).items() if isinstance(value, nn.Module | torch.optim.Optimizer))

    def state_tensors(self) -> list:
        """Every tensor of the agent's state, as the objects themselves: networks' parameters and buffers, optimisers'
        state (made now if no step made it yet: the same zeros a first step makes), the step counter."""
        tensors = [self.step_count]
        for name in self.checkpointed:
            part = getattr(self, name)
            if isinstance(part, torch.optim.Optimizer):
                if isinstance(part, torch.optim.Adam | torch.optim.AdamW):
                    init_adam_state(part)
                tensors += [value for state in part.state.values() for value in state.values()
                            if isinstance(value, torch.Tensor)]
            else:
                tensors += list(part.state_dict(keep_vars=True).values())
        return tensors

    def transition_columns(self, data) -> dict:
        """Extra per-transition fields for every batch, computed once at load from the task's data (tasks.OfflineData:
        raw rewards, dones, episode_starts; one value or row per transition); they go to the device with the rest and
        batch[name] holds them. None here."""
        return {}

    def compile(self) -> None:
        """torch.compile update() into one graph (no graph breaks: sampler loop unrolled, optimiser steps included)
        and act() likewise; random draws stay torch's eager ones, so a compiled update computes what an eager one does.
        On CUDA the optimisers become capturable (their step counts on the device) and both graphs are captured as
        CUDA graphs (mode="reduce-overhead"): no host sync and one launch per step. UNTESTED here: no GPU."""
        torch._dynamo.config.trace_autograd_ops = True  # autograd.grad inside the graph
        torch._dynamo.config.specialize_float = True  # the solver's host floats are constants (else a guard bug, torch 2.13)
        cuda = self.step_count.device.type == "cuda"
        for name in self.checkpointed:
            optimizer = getattr(self, name)
            if isinstance(optimizer, torch.optim.Optimizer):
                make_capturable(optimizer, cuda)
                init_adam_state(optimizer)
        options = dict(fullgraph=True, options=dict(fallback_random=True), mode="reduce-overhead" if cuda else None)
        self.update = torch.compile(self.update, dynamic=False, **options)  # one batch shape
        self.act = torch.compile(self.act, dynamic=False, **options)  # the Evaluator acts on every episode's state

    @property
    def sample_kwargs(self) -> dict:
        """How TD-target actions are sampled (DPM-Solver's method, order and grid, or DDPM)."""
        config = self.config
        return dict(sampler=config.sampler, steps=config.dpm_steps, order=config.dpm_order, method=config.dpm_method,
                    skip=config.dpm_skip)

    @torch.no_grad()
    def act(self, state: torch.Tensor) -> torch.Tensor:
        """Energy-based action selection (Alg. 2) with min(Q1, Q2), or a plain sample without a critic; App. C.4's
        noise and policy scales apply here."""
        # paper preset: the EMA policy (the one giving TD-target actions) acts (our choice); released: the online one
        policy = self.ema_policy if self.config.acting_policy == "ema" else self.policy
        scales = dict(noise_scale=self.config.noise_scale, policy_scale=self.config.policy_scale)
        if self.acts_without_critic():
            return policy.sample(state, **scales, **self.sample_kwargs)
        return energy_based_action_selection(policy, self.critic.q_min, state, self.config.eas_samples,
                                             self.config.eas_temperature, **scales, **self.sample_kwargs)

    def state_dict(self) -> dict:
        return {name: getattr(self, name).state_dict() for name in self.checkpointed} | {"step": int(self.step_count)}

    def load_state_dict(self, state: dict) -> None:
        """The agent's state from a checkpoint, which must hold exactly its networks and optimisers."""
        saved, held = set(state) - {"step"}, set(self.checkpointed)
        if saved != held:
            wrong = [f"lacks {', '.join(sorted(held - saved))}"] * bool(held - saved) + [
                f"holds {', '.join(sorted(saved - held))} that {type(self).__name__} does not"] * bool(saved - held)
            raise UsageError(f"the checkpoint {' and '.join(wrong)}: it was not saved by this algorithm's agent, and"
                             " going on would start those parts afresh")
        for name in self.checkpointed:
            getattr(self, name).load_state_dict(state[name])
        self.step_count.fill_(state["step"])
