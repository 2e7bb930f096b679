"""Training and sampling speed of EDP and its ablations (paper Fig. 2, App. C.5), on this machine.

    python benchmark_speed.py --json speed.json --plot speed.png
    python benchmark_speed.py --quick            # under two minutes on a 2-core CPU (CI smoke test)
    python benchmark_speed.py --compile          # adds the rows of --compile (torch.compile of the whole update)

Training: iterations per second of the real update step of edp_td3.py (imported, not rewritten) on a
synthetic batch with the paper's testbed shapes (walker2d: 17-d state, 6-d action, batch 256):

  dql_k5      Diffusion-QL at its released default: K = 5, vp schedule, DDPM, back-propagation through it
  dql         Diffusion-QL with K = 100: DDPM chain for the TD target, and back-propagation through it for L_pi
  edp_no_dpm  action approximation; DDPM chain for the TD target
  edp_no_ap   DPM-Solver for the TD target and, with gradients, for L_pi (no action approximation)
  edp         action approximation + DPM-Solver (K = 1000, as the paper trains EDP)
  td3bc_ff    a feed-forward TD3+BC policy of the same 3 x 256 backbone (App. C.5)

The ablations use K = 100, the authors' released default, since a K = 1000 DDPM chain per training
step is what EDP exists to avoid (Diffusion-QL itself uses K = 5..100). EDP's cost does not depend on K.

Sampling: environment steps per second in a real Walker2d-v5 with EAS (10 candidates) for each
variant's sampler; and evaluation throughput with 10 episodes stepped together (evaluation.py's Evaluator)
versus one episode at a time. The limit: this machine's matrix-multiply throughput at the network's
shapes, the FLOPs of one EDP iteration (torch.utils.flop_counter), and the fraction reached. Side by
side (CPU): the EDP update loop in one process alone, then in two processes at once, with the
scripts' thread setting (--threads): the per-process throughput ratio (0.5 = fair sharing).
With --compile, dql_k5, edp_no_ap and edp again as the scripts' --compile runs them (agents.Agent.compile: the
whole update and EAS acting, each one graph), with their compile time and their own roofline fraction.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
import tyro
from torch.utils.flop_counter import FlopCounterMode

import edp_td3
from agents import TwinCritic, mlp, polyak, should_compile
from flags import resolve_config
from evaluation import Evaluator
from runs import CpuThreads
from tasks import TASKS

STATE_DIM, ACTION_DIM, BATCH = 17, 6, 256  # walker2d, paper Fig. 2 testbed
VARIANTS = {  # name: (K, schedule, action approximation, sampler)
    "dql_k5": (5, "vp", False, "ddpm"),  # Diffusion-QL's released default (REFERENCE: K = 5, vp)
    "dql": (100, "linear", False, "ddpm"),
    "edp_no_dpm": (100, "linear", True, "ddpm"),
    "edp_no_ap": (100, "linear", False, "dpm"),
    "edp": (1000, "linear", True, "dpm"),
}
COMPILED = ("dql_k5", "edp_no_ap", "edp")  # dql's 100-step chain, unrolled with its gradient, takes minutes to compile


@dataclass
class Args:
    json: Optional[str] = None
    """write the results to this JSON file"""
    plot: Optional[str] = None
    """write a bar chart in the manner of Fig. 2 to this PNG file"""
    quick: bool = False
    """fewer iterations: a smoke test in under two minutes on a 2-core CPU"""
    device: str = "auto"
    """cpu, cuda, or auto"""
    compile: bool = False
    """also time dql_k5, edp_no_ap and edp compiled (as the scripts' --compile), beside the eager rows"""
    threads: int = 0
    """the scripts' --threads in the side-by-side figure (0: their default, following the load; 1 or 2: fixed)"""
    seed: int = 0


# ---- the feed-forward TD3+BC baseline (App. C.5): the same 3 x 256 backbone, deterministic actor ----
class TD3BCFeedForward:
    """TD3+BC (Fujimoto & Gu 2021) with edp_td3's critics: a comparator, not part of the project."""

    def __init__(self, config: edp_td3.Args, device: torch.device):
        self.actor = mlp(STATE_DIM, ACTION_DIM).to(device)
        self.actor_target = mlp(STATE_DIM, ACTION_DIM).to(device).requires_grad_(False)
        self.actor_target.load_state_dict(self.actor.state_dict())
        self.critic = TwinCritic(STATE_DIM, ACTION_DIM).to(device)
        self.critic_target = TwinCritic(STATE_DIM, ACTION_DIM).to(device).requires_grad_(False)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=config.lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.lr)
        self.config = config

    def update(self, batch: dict) -> dict:
        with torch.no_grad():
            noise = (0.2 * torch.randn_like(batch["actions"])).clamp(-0.5, 0.5)
            next_action = (torch.tanh(self.actor_target(batch["next_observations"])) + noise).clamp(-1, 1)
            next_q = self.critic_target.q_min(batch["next_observations"], next_action)
            target = batch["rewards"] + (1 - batch["dones"]) * self.config.gamma * next_q
        q1, q2 = self.critic(batch["observations"], batch["actions"])
        critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()
        action = torch.tanh(self.actor(batch["observations"]))
        q = self.critic(batch["observations"], action)[0]
        actor_loss = -2.5 / q.abs().mean().detach() * q.mean() + F.mse_loss(action, batch["actions"])
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optimizer.step()
        polyak(self.critic_target, self.critic, self.config.tau)
        polyak(self.actor_target, self.actor, self.config.tau)
        return dict(critic_loss=critic_loss.detach(), actor_loss=actor_loss.detach())

    @torch.no_grad()
    def act(self, state: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.actor(state))


# ---- set-up -----------------------------------------------------------------------------------------
def make_config(device: str, num_diffusion_steps: int = 1000, schedule: str = "linear", action_approx: bool = True,
                sampler: str = "dpm"):
    """edp_td3's configuration with its locomotion presets (Table 3)."""
    args = edp_td3.Args(env="walker2d-medium-expert", device=device, num_diffusion_steps=num_diffusion_steps,
                        schedule=schedule, action_approx=action_approx, sampler=sampler, eval_episodes=10)
    return resolve_config(args, TASKS["walker2d-medium-expert"], edp_td3.PAPER, edp_td3.RELEASED)


def synthetic_batch(device: torch.device) -> dict:
    generator = torch.Generator(device="cpu").manual_seed(0)
    tensors = dict(observations=torch.randn(BATCH, STATE_DIM, generator=generator),
                   actions=torch.rand(BATCH, ACTION_DIM, generator=generator) * 2 - 1,
                   rewards=torch.randn(BATCH, 1, generator=generator),
                   next_observations=torch.randn(BATCH, STATE_DIM, generator=generator),
                   dones=torch.zeros(BATCH, 1))
    return {key: value.to(device) for key, value in tensors.items()}


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def rate(run: Callable[[], int], device: torch.device, warmup: int, repeats: int) -> float:
    """Median over `repeats` of (work units / second) of run(), after `warmup` calls."""
    for _ in range(warmup):
        run()
    rates = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        units = run()
        synchronize(device)
        rates.append(units / (time.perf_counter() - start))
    return statistics.median(rates)


# ---- measurements -------------------------------------------------------------------------------------
def train_ips(agent, batch: dict, device: torch.device, iterations: int, repeats: int) -> float:
    def run():
        for _ in range(iterations):
            agent.update(batch)
        return iterations

    return rate(run, device, warmup=1, repeats=repeats)


def sample_sps(agent, device: torch.device, env_steps: int, repeats: int) -> float:
    """Environment steps per second in a real Walker2d-v5, one EAS (10 candidates) call per step."""
    env = gym.make("Walker2d-v5")
    observation, _ = env.reset(seed=0)

    def run():
        nonlocal observation
        for _ in range(env_steps):
            state = torch.as_tensor(observation, dtype=torch.float32, device=device)[None]
            action = agent.act(state)[0].cpu().numpy()
            observation, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                observation, _ = env.reset()
        return env_steps

    result = rate(run, device, warmup=1, repeats=repeats)
    env.close()
    return result


def evaluation_sps(agent, device: torch.device, episodes: int) -> tuple:
    """evaluation.py's Evaluator: `episodes` episodes stepped together versus one episode at a time."""
    identity_statistics = dict(observation_mean=np.zeros(STATE_DIM, np.float32), observation_std=np.ones(STATE_DIM, np.float32),
                               observation_clip=np.inf, action_low=-np.ones(ACTION_DIM, np.float32),
                               action_high=np.ones(ACTION_DIM, np.float32))
    make_env = lambda: gym.make("Walker2d-v5")  # noqa: E731

    def steps_per_second(evaluators):
        start, steps = time.perf_counter(), 0
        for evaluator in evaluators:
            steps += evaluator(agent.act)["episode_length"] * evaluator.episodes
            evaluator.close()
        return steps / (time.perf_counter() - start)

    raw_returns = lambda returns: returns  # noqa: E731  (only speed is measured, no score)
    together = [Evaluator(make_env, episodes, 0, identity_statistics, "locomotion", raw_returns, device)]
    one_by_one = [Evaluator(make_env, 1, i, identity_statistics, "locomotion", raw_returns, device)
                  for i in range(episodes)]
    return steps_per_second(together), steps_per_second(one_by_one)


def gemm_shapes(agent, batch: dict) -> dict:
    """(M, K, N) -> count of every matrix multiply in one training iteration, from the profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
        agent.update(batch)
    shapes = {}
    for event in profiler.events():
        if event.name in ("aten::mm", "aten::addmm"):  # addmm's inputs: bias, mat1, mat2, beta, alpha
            (m, k), (_, n) = event.input_shapes[1:3] if event.name == "aten::addmm" else event.input_shapes[:2]
            shapes[(m, k, n)] = shapes.get((m, k, n), 0) + 1
    return shapes


def gemm_gflops(shapes: dict, device: torch.device, repeats: int) -> float:
    """The machine's matrix-multiply throughput at these shapes: total FLOPs over the summed time of
    each shape multiplied on its own, back to back (the best these GEMMs can do here)."""
    total_flops, total_seconds = 0.0, 0.0
    for (m, k, n), count in shapes.items():
        a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
        calls = max(10, int(2e8 // (2 * m * k * n)))  # about 0.2 GFLOP per timing

        def run(a=a, b=b, calls=calls):
            for _ in range(calls):
                torch.mm(a, b)
            return calls

        calls_per_second = rate(run, device, warmup=1, repeats=repeats)
        total_flops += count * 2 * m * k * n
        total_seconds += count / calls_per_second
    return total_flops / total_seconds / 1e9


def _update_loop(seconds: float, threads: int, ready, start, results) -> None:
    """One process of the side-by-side figure: edp_td3's update loop with the scripts' thread setting."""
    threads = CpuThreads(threads)
    device = torch.device("cpu")
    agent = edp_td3.EDPTD3(STATE_DIM, ACTION_DIM, make_config("cpu"), device)
    batch = synthetic_batch(device)
    for _ in range(3):
        agent.update(batch)
    ready.put(True)
    start.wait()  # every process starts timing at the same moment
    iterations, begin = 0, time.perf_counter()
    while time.perf_counter() < begin + seconds:
        agent.update(batch)
        threads.tick()
        iterations += 1
    results.put(iterations / (time.perf_counter() - begin))


class WorkerDied(RuntimeError):
    """A process of the side-by-side figure ended without its result."""


def from_workers(queue, workers: list):
    """The next item of `queue`, waiting only while every worker is alive (or ended after putting its item)."""
    import queue as queues

    while True:
        try:
            return queue.get(timeout=1.0)
        except queues.Empty:
            dead = [worker for worker in workers if not worker.is_alive() and worker.exitcode != 0]
            if dead:
                raise WorkerDied(f"a side-by-side worker died (exit code {dead[0].exitcode}) before giving its result")


def side_by_side(seconds: float, threads: int = 0) -> dict:
    """Per-process EDP update throughput with two processes at once, over one process alone (0.5 = fair sharing
    of the machine; much less means the processes get in each other's way, e.g. spinning thread teams)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # fresh interpreters, as two runs started by hand

    def rates(processes: int) -> list:
        ready, start, results = context.Queue(), context.Event(), context.Queue()
        workers = [context.Process(target=_update_loop, args=(seconds, threads, ready, start, results))
                   for _ in range(processes)]
        for worker in workers:
            worker.start()
        try:
            for _ in workers:
                from_workers(ready, workers)
            start.set()
            values = [from_workers(results, workers) for _ in workers]
        finally:
            for worker in workers:  # a worker that failed leaves the others waiting for the start: end them
                if worker.is_alive() and not start.is_set():
                    worker.terminate()
                worker.join()
        return values

    alone, together = rates(1)[0], rates(2)
    return dict(alone_ips=alone, together_ips=together, ratio=min(together) / alone, seconds=seconds, threads=threads)


def compiled_row(name: str, batch: dict, device: torch.device, iterations: int, repeats: int, env_steps: int,
                 seed: int) -> dict:
    """A variant as --compile runs it: compile time (the first update and the first EAS call), then its speeds."""
    num_steps, schedule, action_approx, sampler = VARIANTS[name]
    torch._dynamo.reset()  # each row from dynamo's empty cache: EDPTD3.update's recompiles must not reach its limit
    torch.manual_seed(seed)
    agent = edp_td3.EDPTD3(STATE_DIM, ACTION_DIM, make_config(str(device), num_steps, schedule, action_approx, sampler), device)
    agent.compile()
    start = time.perf_counter()
    agent.update(batch)
    agent.act(torch.zeros(1, STATE_DIM, device=device))
    synchronize(device)
    compile_seconds = time.perf_counter() - start
    return dict(train_ips=train_ips(agent, batch, device, iterations, repeats),
                sample_sps=sample_sps(agent, device, env_steps, repeats), compile_s=compile_seconds)


def default_row(batch: dict, device: torch.device, iterations: int, repeats: int, env_steps: int, seed: int) -> dict:
    """EDP as a default paper run trains it: --compile auto on a 2,000,000-step run (compiled where a compiler
    works). Compile time cold (an empty inductor cache) and warm (a second agent compiled from the cache)."""
    import tempfile

    num_steps, schedule, action_approx, sampler = VARIANTS["edp"]
    config = make_config(str(device), num_steps, schedule, action_approx, sampler)
    compiled = should_compile(config.compile, 2_000_000, device)
    seconds = []
    with tempfile.TemporaryDirectory() as cache, patched_environment(TORCHINDUCTOR_CACHE_DIR=cache):
        for _ in range(2 if compiled else 1):  # cold, then warm
            torch._dynamo.reset()
            torch.manual_seed(seed)
            agent = edp_td3.EDPTD3(STATE_DIM, ACTION_DIM, config, device)
            start = time.perf_counter()
            if compiled:
                agent.compile()
                agent.update(batch)
                agent.act(torch.zeros(1, STATE_DIM, device=device))  # sample_sps acts on one state
                synchronize(device)
            seconds.append(time.perf_counter() - start)
        row = dict(train_ips=train_ips(agent, batch, device, iterations, repeats),
                   sample_sps=sample_sps(agent, device, env_steps, repeats))
    return row | dict(num_diffusion_steps=num_steps, schedule=schedule, sampler=sampler, steps=config.dpm_steps,
                      compiled=compiled, compile_cold_s=seconds[0] if compiled else 0.0,
                      compile_warm_s=seconds[-1] if compiled else 0.0)


@contextlib.contextmanager
def patched_environment(**values):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


def update_flops(agent, batch: dict) -> int:
    with FlopCounterMode(display=False) as counter:
        agent.update(batch)
    return counter.get_total_flops()


# ---- report -------------------------------------------------------------------------------------------
def plot(results: dict, path: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["variants"])
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for axis, key, title in [(axes[0], "train_ips", "training (iterations / s)"),
                             (axes[1], "sample_sps", "sampling with EAS (env steps / s)")]:
        values = [results["variants"][name][key] for name in names]
        bars = axis.bar(names, values, color=["#999999", "#7aa6c2", "#c2a37a", "#d9534f", "#5cb85c"][: len(names)])
        axis.bar_label(bars, labels=[f"{value:.1f}" for value in values], fontsize=8)
        axis.set_title(title)
        axis.tick_params(axis="x", rotation=20)
    axes[1].set_yscale("log")  # the feed-forward policy samples ~20x faster than any diffusion row
    figure.suptitle(f"EDP speed on {results['device']} (torch {results['torch']}, {results['threads']} threads)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_output(flag: str, path: Optional[str]):
    """--json / --plot: a file in a folder that exists and can be written, found out before minutes of measuring."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        fail(f"{flag} {path} is a folder; give a file name")
    if not os.path.isdir(folder):
        fail(f"{flag} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        fail(f"{flag} {path} cannot be written")


def check(args: Args):
    """Bad flags: one line, exit code 2, before any measurement."""
    if args.device not in ("auto", "cpu", "cuda") or (args.device == "cuda" and not torch.cuda.is_available()):
        fail(f"--device {args.device}: use cpu, auto, or cuda where torch sees a CUDA device"
             f" ({'it sees one' if torch.cuda.is_available() else 'it sees none'})")
    if args.threads < 0:
        fail(f"--threads must be 0 (adaptive) or a thread count >= 1, got {args.threads}")
    check_output("--json", args.json)
    check_output("--plot", args.plot)
    if args.plot is not None:
        from matplotlib.backend_bases import FigureCanvasBase

        extension = os.path.splitext(args.plot)[1].lstrip(".").lower()
        formats = FigureCanvasBase.get_supported_filetypes()
        if extension and extension not in formats:
            fail(f"--plot {args.plot}: matplotlib writes no .{extension} files (it writes {', '.join(sorted(formats))})")


def main(args: Args) -> dict:
    check(args)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(args.seed)
    iterations, repeats, env_steps = (3, 3, 5) if args.quick else (20, 5, 50)
    batch = synthetic_batch(device)
    results = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                   torch=torch.__version__, threads=torch.get_num_threads(), variants={})
    agents = {}
    for name, (num_steps, schedule, action_approx, sampler) in VARIANTS.items():
        config = make_config(str(device), num_steps, schedule, action_approx, sampler)
        agent = agents[name] = edp_td3.EDPTD3(STATE_DIM, ACTION_DIM, config, device)
        # the slow rows need fewer iterations for the same timing precision
        scale = max(1, iterations // (4 if sampler == "ddpm" and num_steps > 5 else 1))
        results["variants"][name] = dict(train_ips=train_ips(agent, batch, device, scale, repeats),
                                         sample_sps=sample_sps(agent, device, max(2, env_steps // (10 if sampler == "ddpm" else 1)), repeats),
                                         num_diffusion_steps=num_steps, schedule=schedule, sampler=sampler,
                                         steps=config.dpm_steps if sampler == "dpm" else num_steps)
        print(f"{name:11s} K={num_steps:<5d} {sampler:4s} train {results['variants'][name]['train_ips']:8.2f} it/s"
              f"   sample {results['variants'][name]['sample_sps']:8.2f} steps/s", flush=True)
    # the compiled rows run 3x the iterations: at 60 it/s, 20 iterations are a third of a second, too noisy to compare
    results["variants"]["default"] = row = default_row(batch, device, 3 * iterations, repeats, env_steps, args.seed)
    print(f"{'default':11s} {'compiled' if row['compiled'] else 'eager':12s} train {row['train_ips']:8.2f} it/s"
          f"   sample {row['sample_sps']:8.2f} steps/s   compile {row['compile_cold_s']:.0f} s cold,"
          f" {row['compile_warm_s']:.0f} s warm", flush=True)
    feed_forward = TD3BCFeedForward(make_config(str(device)), device)
    results["variants"]["td3bc_ff"] = dict(train_ips=train_ips(feed_forward, batch, device, iterations * 5, repeats),
                                           sample_sps=sample_sps(feed_forward, device, env_steps * 5, repeats),
                                           num_diffusion_steps=0, schedule="none", sampler="none", steps=0)
    print(f"{'td3bc_ff':11s} {'':12s} train {results['variants']['td3bc_ff']['train_ips']:8.2f} it/s"
          f"   sample {results['variants']['td3bc_ff']['sample_sps']:8.2f} steps/s", flush=True)

    vectorized, sequential = evaluation_sps(agents["edp"], device, 3 if args.quick else 10)
    results["eval"] = dict(vectorized_sps=vectorized, sequential_sps=sequential)
    shapes = gemm_shapes(agents["edp"], batch)
    limit = gemm_gflops(shapes, device, repeats)
    peak = gemm_gflops({(BATCH, 256, 256): 1}, device, repeats)
    flops = update_flops(agents["edp"], batch)
    achieved = flops * results["variants"]["edp"]["train_ips"] / 1e9
    results["roofline"] = dict(gemm_gflops=limit, edp_flops_per_iter=flops, edp_achieved_gflops=achieved,
                               edp_fraction=achieved / limit, gemm_peak_gflops=peak)
    if args.compile:
        results["compiled"] = {}
        for name in COMPILED:
            results["compiled"][name] = row = compiled_row(name, batch, device, 3 * iterations, repeats, env_steps,
                                                           args.seed)
            print(f"{name:11s} compiled in {row['compile_s']:5.1f} s   train {row['train_ips']:8.2f} it/s"
                  f"   sample {row['sample_sps']:8.2f} steps/s", flush=True)
        compiled_edp = results["compiled"]["edp"]
        results["roofline"]["edp_compiled_fraction"] = flops * compiled_edp["train_ips"] / 1e9 / limit
        compiled_edp["vs_eager"] = dict(train=compiled_edp["train_ips"] / results["variants"]["edp"]["train_ips"],
                                        sample=compiled_edp["sample_sps"] / results["variants"]["edp"]["sample_sps"])
    died = None
    if device.type == "cpu":
        try:
            results["side_by_side"] = side_by_side(3.0 if args.quick else 20.0, args.threads)
        except WorkerDied as error:  # the other results are still written; the exit code says it
            died = error
    edp = results["variants"]["edp"]
    results["edp_vs"] = {name: dict(train=edp["train_ips"] / results["variants"][name]["train_ips"],
                                    sample=edp["sample_sps"] / results["variants"][name]["sample_sps"])
                         for name in ("dql_k5", "dql")}
    if args.compile:  # both sides compiled
        results["edp_vs"]["dql_k5_compiled"] = dict(
            train=results["compiled"]["edp"]["train_ips"] / results["compiled"]["dql_k5"]["train_ips"],
            sample=results["compiled"]["edp"]["sample_sps"] / results["compiled"]["dql_k5"]["sample_sps"])
    print(f"evaluation: {vectorized:.1f} env steps/s with the episodes stepped together, {sequential:.1f} one at a time")
    for name, ratio in results["edp_vs"].items():
        print(f"edp vs {name}: training {ratio['train']:.1f}x, sampling {ratio['sample']:.1f}x"
              f" (paper Fig. 2: 5.2x and 3.3x against JAX DQL)")
    print(f"limit: matmul {limit:.1f} GFLOP/s at the {len(shapes)} GEMM shapes of an EDP iteration ({peak:.1f} at"
          f" 256x256x256); one EDP iteration is {flops / 1e9:.3f} GFLOP, achieved {achieved:.1f} GFLOP/s ="
          f" {100 * achieved / limit:.0f}% of the limit")
    if args.compile:
        compiled_edp = results["compiled"]["edp"]
        print(f"compiled edp: {compiled_edp['vs_eager']['train']:.2f}x eager in training, {compiled_edp['vs_eager']['sample']:.2f}x"
              f" in sampling; {100 * results['roofline']['edp_compiled_fraction']:.0f}% of the limit")
    if "side_by_side" in results:
        pair = results["side_by_side"]
        print(f"side by side: {pair['alone_ips']:.1f} it/s alone, {' and '.join(f'{v:.1f}' for v in pair['together_ips'])}"
              f" it/s with two processes at once: each keeps {100 * pair['ratio']:.0f}% (50% = fair sharing)")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=1)
    if args.plot:
        plot(results, args.plot)
    if died is not None:
        print(f"error: {died}; the other results are written", file=sys.stderr)
        sys.exit(1)
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))
    sys.exit(0)
