"""Every constant that a number in a table rests on, typed here from its source (issue 27): D4RL's reference
returns and evaluation horizons, the paper's published scores (Tables 2 and 5), and every default of every script
that the presets do not set. The source of each value is named beside it; nothing is read back from the module
under test to form an expected value.

Sources: D4RL = Farama-Foundation/D4RL at 89141a6; sail-sg/edp = the authors' code at b019648; "paper" = Kang et
al. 2023, arXiv:2305.20081 (the text in shared/paper/efficient_diffusion_policies.txt).
"""

import importlib

import numpy as np
import pytest

import reproduce
import tasks
from test_scripts import SCRIPTS, resolve

# ----------------------------------------------------------------------------------------------
# D4RL's reference returns: d4rl/infos.py REF_MIN_SCORE (from line 106) and REF_MAX_SCORE (from line 196).
# The -v2 locomotion entries copy the -random-v0 ones (infos.py:287-302), pen's -v1 the -human-v0 ones (:305-310).
# ----------------------------------------------------------------------------------------------
D4RL_INFOS = {
    "hopper": (-20.272305, 3234.3),  # infos.py:139 'hopper-random-v0', :229
    "halfcheetah": (-280.178953, 12135.0),  # infos.py:129, :219
    "walker2d": (1.629008, 4592.3),  # infos.py:134, :224
    "pen": (96.262799, 3076.8331017826877),  # infos.py:117 'pen-human-v0', :207
    "kitchen": (0.0, 4.0),  # infos.py:161-163, :251-253 (complete, partial, mixed)
    "antmaze": (0.0, 1.0),  # infos.py:149-154, :239-244 (success: 0 or 1 per episode)
}
# the 20 tasks of the paper's Table 2 -> the key of their reference returns, and D4RL's evaluation horizon
TASK_REFERENCES = {
    **{f"{robot}-{quality}": robot for robot in ("hopper", "halfcheetah", "walker2d")
       for quality in ("medium", "medium-replay", "medium-expert")},
    "pen-human": "pen", "pen-cloned": "pen",
    "kitchen-complete": "kitchen", "kitchen-partial": "kitchen", "kitchen-mixed": "kitchen",
    **{f"antmaze-{maze}": "antmaze" for maze in ("umaze", "umaze-diverse", "medium-play", "medium-diverse",
                                                  "large-play", "large-diverse")},
}
D4RL_HORIZONS = {
    **{task: 1000 for task in TASK_REFERENCES if task.split("-")[0] in ("hopper", "halfcheetah", "walker2d")},
    # d4rl/gym_mujoco/__init__.py:13 max_episode_steps=1000
    "pen-human": 100, "pen-cloned": 100,  # d4rl/hand_manipulation_suite/__init__.py:11 MAX_STEPS['pen'] = 100
    "kitchen-complete": 280, "kitchen-partial": 280, "kitchen-mixed": 280,  # d4rl/kitchen/__init__.py:8, 21, 35
    "antmaze-umaze": 700, "antmaze-umaze-diverse": 700,  # d4rl/locomotion/__init__.py:9, 43 (the -v0 tasks)
    "antmaze-medium-play": 1000, "antmaze-medium-diverse": 1000,  # :60, :77
    "antmaze-large-play": 1000, "antmaze-large-diverse": 1000,  # :111, :94
}


def test_d4rl_reference_returns_are_d4rls():
    assert set(tasks.D4RL_REFERENCE) == set(D4RL_INFOS)
    for key, (low, high) in D4RL_INFOS.items():
        # 1e-9 relative: tasks.py rounds pen's 3076.8331017826877 to 3076.8331 (a score changes by < 1e-6)
        assert tasks.D4RL_REFERENCE[key] == (pytest.approx(low, rel=1e-9, abs=1e-12),
                                             pytest.approx(high, rel=1e-9)), key


@pytest.mark.parametrize("task", sorted(TASK_REFERENCES))
def test_each_paper_task_is_scored_with_its_domains_reference_returns_and_horizon(task):
    """The task's score function at D4RL's random return is 0, at its expert return 100, and halfway between is 50;
    evaluated on D4RL's horizon."""
    low, high = D4RL_INFOS[TASK_REFERENCES[task]]
    assert tasks.TASKS[task].horizon == D4RL_HORIZONS[task]
    score = tasks.d4rl_score(tasks.TASKS[task].ref_scores)
    np.testing.assert_allclose(score(np.array([low, high, (low + high) / 2])), [0.0, 100.0, 50.0], atol=1e-6)


def test_scores_of_typed_returns_worked_by_hand():
    """100 (R - low) / (high - low) for a few returns, worked out by hand from D4RL's numbers."""
    cases = [
        ("hopper-medium", 1607.0138475, 50.0),  # (3234.3 - 20.272305) / 2 = 1607.0138475, halfway
        ("halfcheetah-medium", -280.178953, 0.0),
        ("walker2d-medium-expert", 4592.3 + (4592.3 - 1.629008), 200.0),  # one more span above the expert: 200
        ("pen-human", 96.262799 + 0.25 * (3076.8331017826877 - 96.262799), 25.0),
        ("kitchen-mixed", 3.0, 75.0),  # 3 tasks of 4
    ]
    for task, episode_return, expected in cases:
        assert float(tasks.d4rl_score(tasks.TASKS[task].ref_scores)(np.array(episode_return))) == \
            pytest.approx(expected, abs=1e-6), task


# ----------------------------------------------------------------------------------------------
# The paper's published scores: Table 5 (RAT "Average", OMS "Best"); Table 2's EDP columns are its Average columns
# ----------------------------------------------------------------------------------------------
TABLE_5 = {  # task: (TD3 Average, TD3 Best, CRR Average, CRR Best, IQL Average, IQL Best), typed row by row
    "halfcheetah-medium": (52.1, 52.8, 49.2, 50.2, 48.1, 48.7),
    "hopper-medium": (81.9, 98.6, 78.7, 95.0, 63.1, 97.3),
    "walker2d-medium": (86.9, 89.6, 82.5, 85.8, 85.4, 88.7),
    "halfcheetah-medium-replay": (49.4, 50.4, 43.5, 47.8, 43.8, 45.5),
    "hopper-medium-replay": (101.0, 102.7, 99.0, 101.7, 99.1, 100.9),
    "walker2d-medium-replay": (94.9, 97.7, 63.3, 89.8, 84.0, 93.4),
    "halfcheetah-medium-expert": (95.5, 97.1, 85.6, 93.5, 86.7, 80.9),
    "hopper-medium-expert": (97.4, 112.0, 92.9, 109.4, 99.6, 95.7),
    "walker2d-medium-expert": (110.2, 112.0, 110.1, 112.3, 109.0, 111.5),
    "kitchen-complete": (61.5, 93.4, 73.9, 95.8, 75.5, 95.0),
    "kitchen-partial": (52.8, 66.0, 40.0, 56.7, 46.3, 72.5),
    "kitchen-mixed": (60.8, 88.0, 46.1, 59.2, 56.5, 70.0),
    "pen-human": (48.2, 60.0, 70.2, 127.8, 72.7, 130.3),
    "pen-cloned": (15.9, 64.0, 54.0, 106.0, 70.0, 138.2),
    "antmaze-umaze": (96.6, 98.3, 95.9, 98.0, 94.2, 98.0),
    "antmaze-umaze-diverse": (69.5, 79.9, 15.9, 80.0, 79.0, 90.0),
    "antmaze-medium-play": (0.0, 89.1, 33.5, 82.0, 81.8, 89.0),
    "antmaze-medium-diverse": (6.4, 97.0, 32.7, 72.0, 82.3, 88.0),
    "antmaze-large-play": (1.6, 71.5, 26.0, 57.0, 42.3, 52.0),
    "antmaze-large-diverse": (4.4, 73.0, 58.5, 71.0, 60.6, 68.0),
}
TABLE_5_AVERAGES = {  # Table 5's "average" rows: (TD3 Average, TD3 Best, CRR ..., IQL ...). None: the paper's
    # printed average is not the mean of its own rows (a slip in the paper, not here): TD3 Best prints 96.0 on
    # kitchen (rows: 82.5), 77.9 on adroit (62.0), 80.5 on antmaze (84.8); IQL Best 89.2 on antmaze (80.8)
    "locomotion": (85.5, 90.3, 78.3, 87.3, 79.9, 84.7),
    "kitchen": (58.4, None, 53.3, 70.6, 59.4, 79.2),
    "adroit": (32.1, None, 62.1, 116.9, 71.3, 134.3),
    "antmaze": (29.8, None, 43.8, 76.7, 73.4, None),
}


def test_published_scores_are_the_papers_table_5_cell_by_cell():
    """All 60 cells (20 tasks x 3 algorithms x RAT and OMS)."""
    expected = {task: dict(td3=row[0:2], crr=row[2:4], iql=row[4:6]) for task, row in TABLE_5.items()}
    assert reproduce.PUBLISHED_SCORES == expected


def test_the_typed_table_agrees_with_the_papers_average_rows():
    """A typo in the typed table would likely break the paper's own averages (to its rounding, 0.05)."""
    domains = {"locomotion": list(TABLE_5)[:9], "kitchen": list(TABLE_5)[9:12], "adroit": list(TABLE_5)[12:14],
               "antmaze": list(TABLE_5)[14:]}
    for domain, members in domains.items():
        for column, average in enumerate(TABLE_5_AVERAGES[domain]):
            if average is not None:
                assert np.mean([TABLE_5[task][column] for task in members]) == pytest.approx(average, abs=0.051), \
                    (domain, column)


# ----------------------------------------------------------------------------------------------
# Defaults that no preset sets: each typed with its source
# ----------------------------------------------------------------------------------------------
COMMON_DEFAULTS = {
    "batch_size": 256,  # paper Table 3; sail-sg/edp diffusion/trainer.py:70
    "gamma": 0.99,  # sail-sg/edp diffusion/dql.py:48 cfg.discount
    "tau": 0.005,  # dql.py:49 cfg.tau, the target critics every step (dql.py:366-371)
    "ema_tau": 0.005,  # dql.py:49 cfg.tau, also the target policy's rate (dql.py:363-364)
    "ema_every": 5,  # dql.py:50 cfg.policy_tgt_freq
    "ema_start": 1000,  # dql.py:676 `self._total_steps > 1000`
    "num_diffusion_steps": 1000,  # paper Sec. 5.1 (K = 1000); the authors' README runs K = 1000
    "schedule": "linear",  # dql.py:52 cfg.schedule_name
    "sampler": "dpm",  # paper Sec. 4.4 and 5 (DPM-Solver); the authors' README --sample_method=dpm
    "dpm_steps": 15,  # paper Sec. 5 ("set the model call steps to 15"); dql.py:88
    "dpm_order": 3,  # paper Sec. 5 ("the third-order version"); diffusion/dpm_solver.py:1202 sample(order=3)
    "noise_scale": 1.0,  # App. C.4: 1 is plain sampling (the initial noise unscaled)
    "policy_scale": 1.0,  # App. C.4: 1 is plain sampling (eps_theta unscaled)
    "eas_temperature": 1.0,  # Sec. 4.5 / Alg. 2: weights proportional to e^Q; trainer.py:151, 170 categorical(q)
    "terminals": "d4rl",  # D4RL's data definitions (README, Paper tasks): what the reference returns assume
    # D4RL's envs end pen episodes when the pen falls (d4rl/hand_manipulation_suite/pen_v0.py:85-87, z < 0.075):
    # its reference returns were measured so
    "eval_terminations": "d4rl",
    "init": "lecun",  # the authors' networks are Flax nn.Dense (sail-sg/edp diffusion/nets.py:101, 249): LeCun-normal
    "preset": "paper",  # ours: the paper's values unless --preset released
}
SCRIPT_DEFAULTS = {
    "edp_td3": {
        "alpha": 2.0,  # dql.py:54 cfg.alpha
        "action_approx": True,  # paper Alg. 1 / Eq. 9; dql.py:55 use_pred_astart
        "max_q_backup": False,  # dql.py:56
    },
    "edp_crr": {
        "beta": 1.0,  # paper App. A.2 (beta = 1); dql.py:76 crr_beta
        "weight_clip": 20.0,  # dql.py:75 crr_ratio_upper_bound
        "advantage_samples": 10,  # paper App. A.2 (N = 10); dql.py:74 sample_actions
        "likelihood": "gaussian",  # paper App. A.2 ("we use Eqn. 13")
        "learn_std": False,  # paper App. A.2 (sigma = I, fixed); dql.py:78 fixed_std
    },
    "edp_iql": {
        "weight_clip": 100.0,  # dql.py:585 jnp.minimum(exp_a, 100.0)
        "likelihood": "gaussian",  # paper App. A.3 (policy loss as CRR's, Eq. 13)
        "learn_std": False,  # paper App. A.3 (a fixed sigma = I)
    },
}
# IQL's preset-driven expectile and beta, per domain: paper App. A.3; released dql.py:84-85
IQL_PRESETS = {"paper": dict(expectile=dict(locomotion=0.7, antmaze=0.9, adroit=0.7, kitchen=0.7), beta=1.0),
               "released": dict(expectile=dict(locomotion=0.7, antmaze=0.7, adroit=0.7, kitchen=0.7), beta=3.0)}
EVAL_EVERY = 10_000  # both presets: every 10 epochs of 1000 steps (sail-sg/edp trainer.py:83 eval_period=10, :262)
# flags that enter no number of a table: where things go, how fast, what is logged; and the per-run choices
NOT_SCORING = {"env", "dataset_path", "eval_env", "eval_max_steps", "seed", "device", "run_dir", "resume", "wandb_mode",
               "wandb_project", "wandb_group", "wandb_entity", "log_every", "compile", "torch_deterministic",
               "capture_video", "eval_only", "checkpoint", "threads"}
ONE_TASK_PER_DOMAIN = {"locomotion": "hopper-medium", "antmaze": "antmaze-umaze", "adroit": "pen-human",
                       "kitchen": "kitchen-mixed"}


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_default_outside_the_presets_is_its_sources(script):
    """Each flag of the script is a typed default here, a preset row (tests/test_presets.py), or enters no score;
    a new flag with a default fails until its value is typed here with its source."""
    module = importlib.import_module(script)
    defaults = vars(module.Args())
    typed = COMMON_DEFAULTS | SCRIPT_DEFAULTS[script]
    preset_rows = set(module.PAPER)
    assert set(defaults) == set(typed) | preset_rows | NOT_SCORING, set(defaults) ^ (set(typed) | preset_rows | NOT_SCORING)
    for name, value in typed.items():
        assert defaults[name] == value and type(defaults[name]) is type(value), name
    for domain, task in ONE_TASK_PER_DOMAIN.items():  # and they survive resolving on every domain, both presets
        for preset in ("paper", "released"):
            config = resolve(script, task, preset=preset)
            for name, value in typed.items():
                if name != "preset":
                    assert getattr(config, name) == value, (name, task, preset)
            assert config.eval_every == EVAL_EVERY
            if script == "edp_iql":
                assert config.expectile == IQL_PRESETS[preset]["expectile"][domain], (task, preset)
                assert config.beta == IQL_PRESETS[preset]["beta"], (task, preset)


def test_the_antmaze_radii_are_d4rls_and_the_envs():
    assert tasks.ANTMAZE_RELABEL_RADIUS == 0.5  # D4RL scripts/generation/relabel_antmaze_rewards.py:31, 36
    assert tasks.ANTMAZE_SUCCESS_RADIUS == 0.45  # gymnasium_robotics maze_v4.py (the success the env reports)


def test_kitchen_is_evaluated_as_d4rls_kitchen_env():
    """d4rl/kitchen/kitchen_envs.py:34-35 REMOVE_TASKS_WHEN_COMPLETE = TERMINATE_ON_TASK_COMPLETE = True: a task pays
    once, and the episode ends when all are done (the 0-4 scale of the kitchen reference returns)."""
    assert tasks.D4RL_KITCHEN_EVAL == dict(remove_task_when_completed=True, terminate_on_tasks_completed=True)
