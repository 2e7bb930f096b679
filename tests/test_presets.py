"""--preset paper|released: each resolves to the values of its README row, per task where the authors'
values are per task; the sampler and Appendix C.4 flags reach DiffusionPolicy.sample()."""

import importlib

import pytest
import torch

from test_scripts import SCRIPTS, TINY, resolve, run_main, summary, train
from tasks import TASKS

import edp_td3

# The README table "Paper and released code", row by row: (flag, paper value, released value).
COMMON_ROWS = [
    ("eas_samples", 10, 50),
    ("dpm_method", "multistep", "singlestep"),
    ("dpm_skip", "logSNR", "time_uniform"),
    ("action_clip", 1.0, 0.999),
    ("acting_policy", "ema", "online"),
]
# sail-sg/edp diffusion/hps.py `gn`, typed from the authors' table (Table 3: 5 everywhere)
RELEASED_GRAD_CLIP = {
    "halfcheetah-medium": 9, "halfcheetah-medium-replay": 2, "halfcheetah-medium-expert": 7,
    "hopper-medium": 9, "hopper-medium-replay": 4, "hopper-medium-expert": 5,
    "walker2d-medium": 1, "walker2d-medium-replay": 4, "walker2d-medium-expert": 5,
    "antmaze-umaze": 2, "antmaze-umaze-diverse": 3, "antmaze-medium-play": 2, "antmaze-medium-diverse": 1,
    "antmaze-large-play": 10, "antmaze-large-diverse": 7, "pen-human": 7, "pen-cloned": 8,
    "kitchen-complete": 9, "kitchen-partial": 10, "kitchen-mixed": 10,
}




# The authors' code (sail-sg/edp at b019648), typed from the source: file:line beside each value
RELEASED_CODE = {
    "total_steps": 2_000_000,  # diffusion/trainer.py:81-82, n_epochs=2000, n_train_step_per_epoch=1000
    "lr": 3e-4,  # diffusion/dql.py:61 (the trainer reads only `gn` from hps.py, trainer.py:222)
    "eta": 1.0,  # diffusion/dql.py:63 guide_coef
    "ema_warmup": "initial",  # diffusion/dql.py:675-678, the target policy moves only after step 1000
    "eval_episodes": 10,  # diffusion/trainer.py:84 eval_n_trajs
    "normalize_obs": "off",  # diffusion/trainer.py:89 obs_norm=False
}
RELEASED_IQL = {"expectile": 0.7, "beta": 3.0}  # diffusion/dql.py:84-85


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("task", sorted(TASKS))
def test_each_preset_resolves_to_its_table_row(script, task):
    paper, released = resolve(script, task, preset="paper"), resolve(script, task, preset="released")
    domain = TASKS[task].domain
    for flag, paper_value, released_value in COMMON_ROWS:
        assert (getattr(paper, flag), getattr(released, flag)) == (paper_value, released_value), flag
    assert paper.grad_clip == 5.0 and released.grad_clip == RELEASED_GRAD_CLIP[task]
    for flag, value in RELEASED_CODE.items() | (RELEASED_IQL.items() if script == "edp_iql" else set()):
        assert getattr(released, flag) == value, flag
    # the paper: Table 3 (lr, loss weight, epochs: 2000 on locomotion, 1000 elsewhere) and Sec. 5
    assert paper.lr == (3e-5 if domain == "adroit" else 3e-4)
    assert paper.eta == {"adroit": 0.1, "kitchen": 0.005}.get(domain, 1.0)
    assert paper.total_steps == (2_000_000 if domain == "locomotion" else 1_000_000)
    assert paper.normalize_obs == ("off" if domain == "locomotion" else "per-dimension")
    assert paper.eval_episodes == (100 if domain == "antmaze" else 10)
    assert paper.ema_warmup == "copy"
    if script == "edp_iql":  # App. A.3: beta = 1, expectile 0.9 on AntMaze; the authors' README adds --norm_reward
        assert paper.beta == 1.0 and paper.expectile == (0.9 if domain == "antmaze" else 0.7)
        assert released.reward_transform == ("returns" if domain == "locomotion" else paper.reward_transform)
    else:
        assert released.reward_transform == paper.reward_transform
    if script == "edp_td3":  # the authors' code: no max-Q backup (dql.py:56), on every domain, in both presets
        assert paper.max_q_backup is False and released.max_q_backup is False


def test_a_flag_given_wins_over_the_preset():
    config = resolve("edp_td3", "hopper-medium", preset="released", grad_clip=3.0, eas_samples=4, dpm_method="multistep")
    assert (config.grad_clip, config.eas_samples, config.dpm_method) == (3.0, 4, "multistep")


def test_released_preset_off_the_paper_tasks_keeps_table_3_clip(datasets):
    config = resolve("edp_td3", datasets["pendulum"], preset="released")
    assert config.grad_clip == 5.0 and config.dpm_method == "singlestep"


@pytest.mark.parametrize("script", SCRIPTS)
def test_both_presets_run_end_to_end(script, datasets, tmp_path):
    for preset in ("paper", "released"):
        run_dir = tmp_path / preset
        assert run_main(script, "--env", datasets["pendulum"], "--preset", preset, "--total-steps", "10",
                        "--eval-every", "10", "--run-dir", str(run_dir), *TINY) == 0
        assert summary(run_dir)["config"]["preset"] == preset


def test_sampler_and_appendix_c4_flags_reach_sample(datasets, tmp_path, monkeypatch):
    """TD-target sampling gets the method, order and grid; acting also gets the noise and policy scales,
    and samples from the policy the preset names."""
    from diffusion import DiffusionPolicy

    calls = []
    original = DiffusionPolicy.sample

    def spy(self, state, **kwargs):
        calls.append((self, kwargs))
        return original(self, state, **kwargs)

    monkeypatch.setattr(DiffusionPolicy, "sample", spy)
    agent = train("edp_td3", [
        "--env", datasets["pendulum"], "--run-dir", str(tmp_path / "run"), "--total-steps", "2", "--eval-every", "2",
        "--dpm-method", "singlestep", "--dpm-order", "2", "--dpm-skip", "time_quadratic", "--noise-scale", "0.5",
        "--policy-scale", "1.5", "--acting-policy", "online", "--eas-samples", "3", "--eval-episodes", "1",
        "--batch-size", "32", *TINY[:2], *TINY[-4:]])
    expected = dict(sampler="dpm", steps=15, order=2, method="singlestep", skip="time_quadratic")
    training = [kwargs for _, kwargs in calls if "noise_scale" not in kwargs]
    assert training and all(kwargs == expected for kwargs in training)
    calls.clear()
    agent.act(torch.zeros(4, 3))
    (policy, kwargs), = calls
    assert policy is agent.policy and kwargs == expected | dict(noise_scale=0.5, policy_scale=1.5)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_lists_the_preset_and_sampler_flags(script, capsys):
    with pytest.raises(SystemExit):
        run_main(script, "--help")
    text = capsys.readouterr().out
    for flag in ("--preset", "--dpm-method", "--dpm-order", "--dpm-skip", "--noise-scale", "--policy-scale",
                 "--acting-policy", "--action-clip", "--eval-env"):
        assert flag in text, flag


# -- every preset-driven default is visible in --help ------------------------------------------------
PRESET_DRIVEN = ["lr", "grad_clip", "eval_episodes", "normalize_obs", "action_clip", "dpm_method", "dpm_skip",
                 "eas_samples", "acting_policy", "reward_transform", "eta", "ema_warmup", "expectile", "beta"]
ONE_TASK_PER_DOMAIN = ["hopper-medium", "antmaze-umaze", "pen-human", "kitchen-mixed"]


def field_docstrings(script):
    """Args field -> its docstring (what tyro shows in --help), read from the source."""
    import ast
    import inspect

    docs = {}
    for cls in importlib.import_module(script).Args.__mro__[:-1]:  # the script's own flags and CommonArgs'
        body = ast.parse(inspect.getsource(cls)).body[0].body
        docs |= {node.target.id: following.value.value for node, following in zip(body, body[1:])
                 if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr)}
    return docs


def spelled(value):
    """How a value may be written in a docstring: 0.0003 as 3e-4, 5.0 as 5, True as True."""
    if isinstance(value, float):
        mantissa, exponent = f"{value:.0e}".split("e")
        return {f"{value:g}", f"{mantissa}e{int(exponent)}"}
    return {str(value)}


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_shows_every_preset_value_of_every_preset_driven_flag(script):
    docs = field_docstrings(script)
    for flag in [f for f in PRESET_DRIVEN if f in importlib.import_module(script).PAPER]:
        values = {getattr(resolve(script, task, preset=preset), flag)
                  for task in ONE_TASK_PER_DOMAIN for preset in ("paper", "released")}
        if flag == "grad_clip":  # per task in the released preset: the README has the table, --help the range
            values = {5.0, min(RELEASED_GRAD_CLIP.values()), max(RELEASED_GRAD_CLIP.values())}
        for value in values:
            assert any(text in docs[flag] for text in spelled(value)), (flag, value, docs[flag])


def test_help_output_carries_the_per_domain_values(capsys):
    with pytest.raises(SystemExit):
        run_main("edp_td3", "--help")
    text = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "(default: 3e-4; 3e-5 on adroit; Table 3)" in text


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_defaults_table_covers_exactly_the_flags_left_unset(script):
    """Every row of PAPER and RELEASED is a flag whose Args default is None, and every such flag that a preset
    fills has a row: a reader finds each default in the one table at the top."""
    module = importlib.import_module(script)
    unset = {name for name, value in vars(module.Args()).items() if value is None}
    not_preset = {"dataset_path", "eval_env", "run_dir", "wandb_group", "wandb_entity", "checkpoint",  # no default
                  "eval_max_steps",  # None: the task's D4RL horizon (tasks.py), not a preset's
                  "threads"}  # None: 1, or the count a resumed run was saved with (runs.run_threads)
    assert set(module.PAPER) == set(module.RELEASED) == unset - not_preset
    for task in ONE_TASK_PER_DOMAIN:
        config = resolve(script, task)
        assert all(getattr(config, name) is not None for name in module.PAPER)
    assert resolve(script, "hopper-medium").total_steps == 2_000_000 and resolve(script, "pen-human").total_steps == 1_000_000
