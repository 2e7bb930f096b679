"""Numbers on D4RL's and the authors' terms (issue 24): pen ended at the drop as D4RL's env ended it, pen-cloned's drop
terminals, the authors' initialisation, the ELBO weights per preset, D4RL's qlearning_dataset rows, and the same
numbers for the same command and seed whatever else the machine runs."""

import json
import math
import subprocess
import sys

import gymnasium as gym
import gymnasium_robotics
import h5py
import numpy as np
import pytest
import torch

import edp_crr
import edp_iql
import edp_td3
import runs
import tasks
from test_scripts import resolve

gym.register_envs(gymnasium_robotics)
# d4rl/hand_manipulation_suite/pen_v0.py step(): `if obj_pos[2] < 0.075: reward -= 5; done = True`, with obj_pos the
# body "Object", observation entries 24:27 (get_obs: qp[:-6] (24 joints), obj_pos, ...)
D4RL_PEN_DROP_Z, PEN_Z = 0.075, 26
D4RL_PEN_REFERENCE = (96.262799, 3076.8331017826877)  # d4rl/infos.py pen-human-v0 (the v1 keys copy it, L305-310)
TINY = ["--num-diffusion-steps", "50", "--dpm-steps", "3", "--batch-size", "32", "--compile", "off", "--wandb-mode",
        "disabled"]


# ---- pen: evaluation ends at the drop --------------------------------------------------------------------------
def random_pen_episode(make_env, seed: int) -> tuple:
    env = make_env()
    env.action_space.seed(seed)
    env.reset(seed=seed)
    heights, rewards = [], []
    while True:
        observation, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        heights.append(observation[PEN_Z])
        rewards.append(reward)
        if terminated or truncated:
            env.close()
            return np.array(heights), np.array(rewards), terminated


@pytest.mark.parametrize("seed", [0, 1])
def test_a_pen_evaluation_episode_ends_at_the_step_the_pen_falls(seed):
    d4rl = tasks.env_maker("AdroitHandPen-v1", "adroit", 100)
    heights, rewards, terminated = random_pen_episode(d4rl, seed)
    assert terminated and heights[-1] < D4RL_PEN_DROP_Z and (heights[:-1] >= D4RL_PEN_DROP_Z).all()
    assert len(heights) < 100  # random actions drop the pen within ~60 steps (seeds 0, 1: 33 and 39)
    own_heights, own_rewards, own_terminated = random_pen_episode(tasks.env_maker("AdroitHandPen-v1", "adroit", 100,
                                                                                  d4rl_termination=False), seed)
    assert not own_terminated and len(own_heights) == 100  # Gymnasium-Robotics' own env never ends before the limit
    np.testing.assert_array_equal(own_rewards[:len(rewards)], rewards)  # the same episode until the drop
    assert (own_heights[len(rewards):] < D4RL_PEN_DROP_Z).any()


def test_a_pen_run_scores_episodes_ended_at_the_drop_and_the_flag_keeps_the_envs_own(replicas, tmp_path):
    import edp_td3 as script

    scores = {}
    for flag in ("d4rl", "env"):
        run_dir = tmp_path / flag
        assert script.main(["--env", "pen-human", "--total-steps", "4", "--eval-every", "4", "--eval-episodes", "3",
                            "--eval-terminations", flag, "--run-dir", str(run_dir), *TINY]) == 0
        summary = json.loads((run_dir / "summary.json").read_text())
        evaluation, card = summary["evaluations"][0], summary["task"]
        low, high = D4RL_PEN_REFERENCE
        assert math.isclose(evaluation["normalized_score"], 100 * (evaluation["return"] - low) / (high - low), rel_tol=1e-4)
        scores[flag] = evaluation
        assert ("0.075" in card["evaluation_ends"]) == (flag == "d4rl")
    # a barely trained policy drops the pen: D4RL's env ends the episodes there, the Gymnasium env runs all 100 steps
    assert scores["d4rl"]["episode_length"] < 100 and scores["env"]["episode_length"] == 100


# ---- pen-cloned: D4RL's drop terminals -------------------------------------------------------------------------
def test_pen_cloned_transitions_into_a_dropped_pen_are_terminal(replicas):
    import minari

    episodes = list(minari.load_dataset(replicas["pen-cloned"]).iterate_episodes())
    expected = np.concatenate([episode.observations[1:, PEN_Z] < D4RL_PEN_DROP_Z for episode in episodes])
    assert 0 < expected.sum() < len(expected)  # the replica drops the pen, and not from the first step
    assert not any(episode.terminations.any() for episode in episodes)  # Minari's: never terminal
    data = tasks.load_minari(tasks.TASKS["pen-cloned"], edp_td3.Args(env="pen-cloned"))
    np.testing.assert_array_equal(data.dones.astype(bool), expected)
    assert "0.075" in data.card["terminals"]
    kept = tasks.load_minari(tasks.TASKS["pen-cloned"], edp_td3.Args(env="pen-cloned", terminals="dataset"))
    assert kept.dones.sum() == 0
    human = tasks.load_minari(tasks.TASKS["pen-human"], edp_td3.Args(env="pen-human"))  # D4RL's demos mark none
    assert human.dones.sum() == 0 and "none" in human.card["terminals"]


# ---- the authors' initialisation ---------------------------------------------------------------------------------
def linear_layers(agent) -> list:
    networks = [agent.policy, agent.critic] + ([agent.value] if hasattr(agent, "value") else [])
    return [layer for network in networks for layer in network.modules() if isinstance(layer, torch.nn.Linear)]


@pytest.mark.parametrize("script", [edp_td3, edp_crr, edp_iql])
@pytest.mark.parametrize("preset", ["paper", "released"])
def test_every_layer_starts_lecun_normal_with_zero_biases(script, preset):
    """Flax's nn.Dense default (the authors' networks): weights N(0, 1 / fan_in) truncated at 2 standard deviations
    and rescaled to that standard deviation (jax.nn.initializers.lecun_normal), biases zero."""
    torch.manual_seed(0)
    config = resolve(script.__name__, "edp/pendulum-mixed-v0", preset=preset)
    assert config.init == "lecun"
    agent_class = {edp_td3: edp_td3.EDPTD3, edp_crr: edp_crr.EDPCRR, edp_iql: edp_iql.EDPIQL}[script]
    agent = agent_class(3, 1, config, torch.device("cpu"))
    layers = linear_layers(agent)
    assert len(layers) == 6 + 8 + (4 if script is edp_iql else 0)  # policy: 2 step + 4 main; critic 2 x 4; value 4
    big = []
    for layer in layers:
        std = 1 / math.sqrt(layer.in_features)
        assert (layer.bias == 0).all()
        assert layer.weight.abs().max() <= 2 * std / 0.87962566103423978 + 1e-6  # truncated at +-2 sigma of the normal
        if layer.weight.numel() >= 256 * 64:
            big.append(layer.weight.std().item() / std)
    assert big and all(0.97 < ratio < 1.03 for ratio in big)  # 1 / sqrt(fan_in); PyTorch's default gives 0.577


def test_init_torch_keeps_pytorchs_default():
    torch.manual_seed(0)
    agent = edp_td3.EDPTD3(3, 1, resolve("edp_td3", "edp/pendulum-mixed-v0", init="torch"), torch.device("cpu"))
    layer = agent.policy.noise_net.mlp[2]  # 256 x 256: uniform in +-1/sqrt(256), standard deviation 1/sqrt(3 * 256)
    assert (layer.bias != 0).all() and layer.weight.abs().max() <= 1 / 16
    assert abs(layer.weight.std().item() * math.sqrt(3 * 256) - 1) < 0.03


# ---- ELBO weights per preset --------------------------------------------------------------------------------------
def test_the_authors_elbo_weights_and_mean_over_action_dimensions():
    """sail-sg/edp diffusion.py:207-208 ws = betas / (2 (1 - alphas_cumprod) alphas), normalised to mean 1, times
    mean_flat((eps - eps_theta)^2) (L727); Eq. 12 has 1 - abar_(k-1) and the sum over action dimensions."""
    from diffusion import ActionApproximation, DiffusionPolicy

    K, dims = 30, 4
    policy = DiffusionPolicy(2, dims, num_steps=K)
    betas = np.linspace(0.1 / K, 20.0 / K, K)  # the rescaled linear schedule (authors' code)
    alphas = 1 - betas
    abar = np.cumprod(alphas)
    authors = betas / (2 * alphas * (1 - abar))
    authors /= authors.mean()
    eq12 = betas / (2 * alphas * (1 - np.r_[1.0, abar[:-1]]).clip(1e-300))
    eq12[0] = 1 / (2 * alphas[0])
    eq12 /= eq12.mean()
    step = torch.tensor([0, 7, K - 1])
    noise, predicted = torch.ones(3, dims), torch.zeros(3, dims)
    predicted[:, 0] = 3.0  # squared errors (4, 1, 1, 1): sum 7, mean 1.75
    approximation = ActionApproximation(torch.zeros(3, dims), noise, predicted, step)
    np.testing.assert_allclose(policy.elbo_log_likelihood(approximation, "authors").numpy(), -1.75 * authors[step],
                               rtol=1e-5)
    np.testing.assert_allclose(policy.elbo_log_likelihood(approximation, "eq12").numpy(), -7.0 * eq12[step], rtol=1e-5)
    for script in (edp_crr, edp_iql):
        assert resolve(script.__name__, "edp/pendulum-mixed-v0").elbo_weights == "eq12"
        assert resolve(script.__name__, "edp/pendulum-mixed-v0", preset="released").elbo_weights == "authors"


# ---- D4RL's qlearning_dataset rows --------------------------------------------------------------------------------
def test_a_d4rl_file_with_next_observations_drops_the_timeout_rows_as_qlearning_dataset(tmp_path):
    """d4rl/__init__.py qlearning_dataset: i in range(N - 1), skipping i where timeouts[i] (its next row is another
    episode's start); next_observations, where the file has them, are the true next states."""
    n = 7
    observations = np.arange(n * 11, dtype=np.float32).reshape(n, 11)
    path = tmp_path / "hopper.hdf5"
    with h5py.File(path, "w") as file:
        file["observations"], file["actions"] = observations, np.zeros((n, 3), np.float32)
        file["rewards"] = np.arange(n, dtype=np.float32)
        file["terminals"] = np.array([0, 0, 0, 0, 1, 0, 0], bool)
        file["timeouts"] = np.array([0, 0, 1, 0, 0, 0, 0], bool)
        file["next_observations"] = observations + 1000
    for with_next in (True, False):
        if not with_next:
            with h5py.File(path, "a") as file:
                del file["next_observations"]
        data = tasks.load_hdf5(tasks.TASKS["hopper-medium"], edp_td3.Args(env="hopper-medium", dataset_path=str(path)))
        np.testing.assert_array_equal(data.rewards, [0, 1, 3, 4, 5])  # rows 0..5 less the time-out row 2
        np.testing.assert_array_equal(data.dones, [0, 0, 0, 1, 0])
        expected_next = observations[[0, 1, 3, 4, 5]] + 1000 if with_next else observations[[1, 2, 4, 5, 6]]
        np.testing.assert_array_equal(data.next_observations, expected_next)


# ---- the same numbers whatever else runs -------------------------------------------------------------------------
def test_a_resume_repeats_the_saved_thread_count():
    saved = {"config": {"threads": 2}}
    assert runs.run_threads(edp_td3.Args(), None) == 0  # the default: all cores or one, where the numbers allow it
    assert runs.run_threads(edp_td3.Args(), saved) == 2
    assert runs.run_threads(edp_td3.Args(threads=3), saved) == 3


class ThreadSensitiveAgent:
    """An agent whose update lands on other bits with other thread counts, as EDP's does on some AVX-512 CPUs."""

    def __init__(self):
        self.weight, self.step_count = torch.zeros(3), torch.zeros((), dtype=torch.long)

    def state_tensors(self):
        return [self.step_count, self.weight]

    def update(self, batch):
        self.step_count += 1
        self.weight += torch.rand(3) + 1e-7 * torch.get_num_threads()

    def act(self, states):
        return self.weight.expand(len(states), 3)


def test_threads_0_keeps_one_fixed_thread_where_the_count_changes_the_numbers(monkeypatch):
    busy = iter([(0.0, 0.0, 0.0)] + [(10.0 * k, 20.0 * k, 0.5 * k) for k in range(1, 5)])  # others keep the CPUs busy
    monkeypatch.setattr(runs.CpuThreads, "usage", staticmethod(lambda: next(busy)))
    agent, states = ThreadSensitiveAgent(), torch.zeros(4, 3)
    torch.set_num_threads(2)
    try:
        threads = runs.CpuThreads(0, interval=0.0)
        generator = torch.get_rng_state()
        card = threads.check(agent, {}, states)
        assert card.startswith("1, fixed") and not threads.adapt and torch.get_num_threads() == 1
        assert torch.equal(torch.get_rng_state(), generator) and agent.weight.sum() == 0 and agent.step_count == 0
        threads.tick()
        assert torch.get_num_threads() == 1  # and it stays so
    finally:
        torch.set_num_threads(2)


@pytest.mark.parametrize("script", [edp_td3, edp_iql])
def test_the_thread_check_puts_the_agent_and_the_generator_back(script):
    torch.manual_seed(0)
    config = resolve(script.__name__, "edp/pendulum-mixed-v0", num_diffusion_steps=50, dpm_steps=3, eas_samples=2)
    agent = {edp_td3: edp_td3.EDPTD3, edp_iql: edp_iql.EDPIQL}[script](3, 1, config, torch.device("cpu"))
    batch = dict(observations=torch.randn(8, 3), actions=torch.rand(8, 1) * 2 - 1, rewards=torch.randn(8, 1),
                 next_observations=torch.randn(8, 3), dones=torch.zeros(8, 1))
    states, before = torch.randn(2, 3), [tensor.clone() for tensor in agent.state_tensors()]
    generator, threads = torch.get_rng_state(), torch.get_num_threads()
    from threads import thread_count_changes_numbers

    thread_count_changes_numbers(agent, batch, states, 2)  # its answer is the CPU's; what it leaves behind is checked
    assert all(torch.equal(a, b) for a, b in zip(before, agent.state_tensors()))
    assert torch.equal(torch.get_rng_state(), generator) and torch.get_num_threads() == threads


def evaluations_of(run_dir) -> list:
    summary = json.loads((run_dir / "summary.json").read_text())
    return [{key: value for key, value in evaluation.items() if key != "eval_seconds"} for evaluation in summary["evaluations"]]


def test_the_same_command_gives_the_same_numbers_alone_and_beside_a_busy_process(datasets, tmp_path):
    """One configuration alone, then beside a process that keeps a core busy, then stopped half-way and resumed
    beside it: the same evaluation history, to the bit (summary.json records the thread count)."""
    command = ["--env", "edp/pendulum-mixed-v0", "--seed", "3", "--eval-every", "15", "--eval-episodes", "2",
               "--log-every", "5", *TINY]
    assert edp_td3.main([*command, "--total-steps", "30", "--run-dir", str(tmp_path / "alone")]) == 0
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert edp_td3.main([*command, "--total-steps", "30", "--run-dir", str(tmp_path / "busy")]) == 0
        assert edp_td3.main([*command, "--total-steps", "15", "--run-dir", str(tmp_path / "resumed")]) == 0
        assert edp_td3.main([*command, "--total-steps", "30", "--run-dir", str(tmp_path / "resumed"), "--resume"]) == 0
    finally:
        hog.kill()
        hog.wait()
    alone = evaluations_of(tmp_path / "alone")
    assert len(alone) == 2
    assert evaluations_of(tmp_path / "busy") == alone and evaluations_of(tmp_path / "resumed") == alone
    summary = json.loads((tmp_path / "busy" / "summary.json").read_text())
    assert summary["config"]["threads"] == 0 and summary["task"]["cpu_threads"]  # the check's outcome is recorded
