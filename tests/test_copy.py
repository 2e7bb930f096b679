"""A new algorithm in one copied file (issue 25): edp_iql.py copied and turned, by its Args, defaults table and
algorithm alone, into diffusion behaviour cloning weighted by advantages from returns-to-go, with no critic and an
extra batch field. It trains, evaluates, resumes exactly and runs --eval-only, and what it gets wrong is one line."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--env", "edp/pendulum-mixed-v0", "--num-diffusion-steps", "50", "--dpm-steps", "3", "--batch-size", "32",
        "--eval-episodes", "2", "--compile", "off", "--wandb-mode", "disabled", "--threads", "1"]

ARGS_AND_DEFAULTS = '''@dataclass
class Args(flags.LikelihoodArgs):
    beta: float = 1.0
    """weight exp(beta * (G - V(s))), G the discounted return-to-go"""
    weight_clip: float = 100.0
    """upper clip of the weight"""


PAPER = flags.PAPER | flags.LIKELIHOOD_PAPER | {"reward_transform": "none"}
RELEASED = flags.RELEASED | flags.LIKELIHOOD_RELEASED | {"reward_transform": "none"}


'''
ALGORITHM_CLASS = '''class AWR(Agent):
    """Diffusion behaviour cloning weighted by exp(beta * (G - V(s))), V fitted to the returns-to-go G."""

    critic = None  # no Q: the EMA policy acts by plain sampling

    def __init__(self, state_dim: int, action_dim: int, config: Args, device: torch.device):
        if config.beta <= 0:
            raise UsageError("need --beta > 0")
        self.config = config
        self.policy = DiffusionPolicy(state_dim, action_dim, config.num_diffusion_steps, config.schedule,
                                      init=config.init).to(device)
        self.ema_policy = copy.deepcopy(self.policy).requires_grad_(False)
        self.value = mlp(state_dim, 1, init=config.init).to(device)
        self.policy_optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr)
        self.value_optimizer = torch.optim.Adam(self.value.parameters(), lr=config.lr)
        self.step_count = torch.zeros((), dtype=torch.long, device=device)

    def transition_columns(self, data) -> dict:
        returns_to_go = data.rewards.astype("float64").copy()
        ends = list(data.episode_starts[1:]) + [len(returns_to_go)]
        for start, end in zip(data.episode_starts, ends):
            for index in range(end - 2, start - 1, -1):
                returns_to_go[index] += self.config.gamma * returns_to_go[index + 1]
        return {"returns_to_go": returns_to_go}

    def update(self, batch: dict) -> dict:
        self.step_count += 1
        state, action, returns_to_go = batch["observations"], batch["actions"], batch["returns_to_go"]
        value_loss = F.mse_loss(self.value(state), returns_to_go)
        adam_step(value_loss, self.value_optimizer, self.config.grad_clip)
        approximation = self.policy.approximate_action(state, action)
        with torch.no_grad():
            weight = torch.exp(self.config.beta * (returns_to_go - self.value(state))).clamp(max=self.config.weight_clip)
        weighted_loss = self.policy.weighted_likelihood_loss(action, approximation, weight, self.config.likelihood)
        policy_loss = approximation.diffusion_loss() + self.config.eta * weighted_loss
        adam_step(policy_loss, self.policy_optimizer, self.config.grad_clip)
        update_ema_policy(self.ema_policy, self.policy, self.step_count, self.config)
        return dict(value_loss=value_loss.detach(), policy_loss=policy_loss.detach(), weight_mean=weight.mean())


'''


def copied_script(folder, name: str = "my_awr", algorithm_class: str = ALGORITHM_CLASS) -> str:
    """edp_iql.py with its Args and defaults table, and its algorithm, replaced; the rest (the training loop) as is."""
    with open(os.path.join(ROOT, "edp_iql.py")) as file:
        source = file.read()
    source = re.sub(r"@dataclass\nclass Args.*?(?=# =+\n# Algorithm)", lambda _: ARGS_AND_DEFAULTS, source, flags=re.S)
    source = re.sub(r"def expectile_loss.*?(?=# =+\n# Training loop)", lambda _: algorithm_class, source, flags=re.S)
    source = source.replace("EDPIQL", "AWR")
    path = os.path.join(folder, f"{name}.py")
    with open(path, "w") as file:
        file.write(source)
    return path


def load(path: str):
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses looks its module up
    spec.loader.exec_module(module)
    return module


def history(run_dir) -> list:
    with open(os.path.join(run_dir, "summary.json")) as file:
        summary = json.load(file)
    return [{key: value for key, value in evaluation.items() if key != "eval_seconds"} for evaluation in summary["evaluations"]]


def test_a_copied_critic_free_script_trains_resumes_exactly_and_evaluates(datasets, tmp_path, capsys):
    script = load(copied_script(tmp_path))
    assert script.ALGORITHM == "my_awr" and script.AWR.acts_without_critic()
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert script.main([*TINY, "--total-steps", "20", "--eval-every", "10", "--run-dir", str(straight)]) == 0
    assert script.main([*TINY, "--total-steps", "10", "--eval-every", "10", "--run-dir", str(stopped)]) == 0
    assert script.main([*TINY, "--total-steps", "20", "--eval-every", "10", "--run-dir", str(stopped), "--resume"]) == 0
    assert len(history(straight)) == 2 and history(stopped) == history(straight)
    checkpoint = torch.load(straight / "checkpoint_last.pt", weights_only=True)
    assert set(checkpoint["agent"]) == {"policy", "ema_policy", "value", "policy_optimizer", "value_optimizer", "step"}
    assert script.main(["--eval-only", "--run-dir", str(straight)]) == 0
    assert (straight / "eval_checkpoint_last.json").exists() or list(straight.glob("eval_checkpoint_last*.json"))


def test_a_copied_script_refuses_in_one_line(datasets, tmp_path, capsys):
    script = load(copied_script(tmp_path))
    capsys.readouterr()
    cases = {  # flags -> words of the one line
        ("--eas-samples", "5"): "has no critic",
        ("--beta", "-1", "--wandb-mode", "offline"): "--beta > 0",  # in the agent's __init__, after the folder is made
    }
    for flags, words in cases.items():
        run_dir = tmp_path / "refused"
        assert script.main([*TINY, "--total-steps", "10", "--eval-every", "10", "--run-dir", str(run_dir), *flags]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and words in error, error
        assert not run_dir.exists()  # nothing left behind: no run.lock, no wandb folder


def test_a_resume_whose_checkpoint_lacks_an_optimiser_is_refused(datasets, tmp_path, capsys):
    script = load(copied_script(tmp_path))
    run_dir = tmp_path / "run"
    assert script.main([*TINY, "--total-steps", "10", "--eval-every", "10", "--run-dir", str(run_dir)]) == 0
    path = run_dir / "checkpoint_last.pt"
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["agent"]["value_optimizer"]  # as a script that forgot to save it would have written
    torch.save(checkpoint, path)
    capsys.readouterr()
    assert script.main([*TINY, "--total-steps", "20", "--eval-every", "10", "--run-dir", str(run_dir), "--resume"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "lacks value_optimizer" in error, error


def test_an_agent_that_breaks_the_contract_is_one_line_at_start(datasets, tmp_path, capsys):
    forgetful = ALGORITHM_CLASS.replace("        self.step_count = torch.zeros((), dtype=torch.long, device=device)\n", "")
    script = load(copied_script(tmp_path, "forgetful", forgetful))
    capsys.readouterr()
    run_dir = tmp_path / "run"
    assert script.main([*TINY, "--total-steps", "10", "--eval-every", "10", "--run-dir", str(run_dir)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "must set step_count" in error, error
    assert not run_dir.exists()


def test_a_transition_column_of_the_wrong_length_is_one_line(datasets, tmp_path, capsys):
    wrong = ALGORITHM_CLASS.replace('return {"returns_to_go": returns_to_go}', 'return {"returns_to_go": returns_to_go[1:]}')
    script = load(copied_script(tmp_path, "wrong_column", wrong))
    capsys.readouterr()
    assert script.main([*TINY, "--total-steps", "10", "--eval-every", "10", "--run-dir", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "returns_to_go" in error, error


@pytest.mark.parametrize("dropped", ["reward_transform", "eta"])
def test_a_defaults_row_left_out_is_one_line_naming_the_flag(datasets, tmp_path, capsys, dropped):
    script = load(copied_script(tmp_path))
    for table in (script.PAPER, script.RELEASED):
        del table[dropped]
    capsys.readouterr()
    assert script.main([*TINY, "--total-steps", "10", "--run-dir", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"--{dropped.replace('_', '-')}" in error, error


def test_reproduce_plans_a_copied_script_named_by_its_path(tmp_path):
    path = copied_script(tmp_path)
    out = subprocess.run([sys.executable, os.path.join(ROOT, "reproduce.py"), "--algos", path, "td3", "--tasks", "pen-human",
                          "--seeds", "0", "1", "--out-dir", str(tmp_path / "sweep"), "--dry-run"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    planned = [line for line in out.stdout.splitlines() if line.startswith("start")]
    assert len(planned) == 4 and sum(path in line and "runs/my_awr/pen-human/seed" in line for line in planned) == 2
