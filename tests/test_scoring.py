"""From a policy's episodes to the numbers of a table, against answers worked out by hand (issue 27).

A scripted environment with typed episodes (rewards, early terminations, time limits, goal steps, observations)
is evaluated by evaluation.Evaluator: the returns, lengths, success rates and normalised scores expected here are
computed by hand in the comments, never by the code under test. Then RAT and OMS on a typed list of scores, the
seeds of each evaluation (seed + 10000 + step), the scores a run writes to summary.json and the checkpoint it
keeps as the best, and the "paper" columns of reproduce.py's tables.
"""

import json
import math
import os
from dataclasses import dataclass
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

import evaluation
import reproduce
import runs
import tasks
from evaluation import Evaluator, summarize
from test_scripts import TINY, run_main


# ----------------------------------------------------------------------------------------------
# The scripted environment
# ----------------------------------------------------------------------------------------------
@dataclass
class Script:
    """One sub-environment's episodes. Step t (1-based) of every episode pays rewards[t - 1] (0 past the list)
    plus action_weight x the env action; the FIRST episode ends (terminated) at step terminate_at, later ones run
    to the time limit, so an evaluation that kept counting after an episode ended would see more steps and
    rewards. With goal=True every step's info holds "success" (True at the steps in success_at), as AntMaze's."""

    rewards: tuple = ()
    limit: int = 10  # time limit (TimeLimit: truncated)
    terminate_at: int = 0  # 0: never terminated
    success_at: tuple = ()
    goal: bool = False
    action_weight: float = 0.0
    observation: tuple = (0.0,)


class ScriptedEnv(gym.Env):
    action_space = gym.spaces.Box(-1.0, 3.0, (1,), np.float32)  # asymmetric: scaling [-1, 1] to it matters

    def __init__(self, script: Script, resets: list):
        self.script, self.resets, self.episode, self.t = script, resets, -1, 0
        self.observation_space = gym.spaces.Box(-100.0, 100.0, (len(script.observation),), np.float32)

    def observe(self):
        return np.asarray(self.script.observation, dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.resets.append(seed)
        self.episode, self.t = self.episode + 1, 0
        return self.observe(), {}

    def step(self, action):
        self.t += 1
        script = self.script
        reward = (script.rewards[self.t - 1] if self.t <= len(script.rewards) else 0.0)
        reward += script.action_weight * float(np.asarray(action).reshape(-1)[0])
        terminated = self.episode == 0 and self.t == script.terminate_at
        info = {"success": self.t in script.success_at} if script.goal else {}
        return self.observe(), float(reward), terminated, False, info


def scripted(scripts):
    """A make_env for the Evaluator: its i-th call makes sub-env i (SyncVectorEnv calls them in order); each env
    records the seeds it was reset with, in `maker.resets[i]`."""
    made = []

    def make_env(**kwargs):
        resets = []
        made.append(resets)
        return gym.wrappers.TimeLimit(ScriptedEnv(scripts[len(made) - 1], resets), max_episode_steps=scripts[len(made) - 1].limit)

    make_env.resets = made
    return make_env


def statistics(mean=(0.0,), std=(1.0,), clip=np.inf):
    return dict(observation_mean=np.array(mean, np.float32), observation_std=np.array(std, np.float32),
                observation_clip=clip, action_low=np.array([-1.0], np.float32), action_high=np.array([3.0], np.float32))


def evaluate(scripts, domain, score, stats=None, act=None, seed=0, step=0):
    make_env = scripted(scripts)
    evaluator = Evaluator(make_env, len(scripts), seed, stats or statistics(), domain, score, "cpu")
    try:
        result = evaluator(act or (lambda state: torch.zeros(len(state), 1)), step)
    finally:
        evaluator.close()
    return result, make_env.resets


# ----------------------------------------------------------------------------------------------
# Returns, lengths and normalised scores
# ----------------------------------------------------------------------------------------------
EPISODES = [
    Script(rewards=(1, 2, 3, 4, 5, 6, 7, 8), limit=8, terminate_at=3),  # terminated at 3: 1 + 2 + 3 = 6, length 3
    Script(rewards=(0.5,) * 8, limit=8),  # truncated at 8: 8 x 0.5 = 4, length 8
    Script(rewards=(10, -2, 7, 7, 7, 7, 7, 7), limit=8, terminate_at=1),  # terminated at 1: 10, length 1
    Script(rewards=(-1, -1, -1, -1, -1, 4, 9, 9), limit=6),  # truncated at 6: -5 + 4 = -1, length 6
]


def test_returns_lengths_and_scores_of_episodes_that_end_early_or_at_the_time_limit():
    """Returns [6, 4, 10, -1] (mean 19 / 4 = 4.75), lengths [3, 8, 1, 6] (mean 4.5). With reference returns
    (-10, 40) the scores are 100 (R + 10) / 50 = 2 (R + 10) = [32, 28, 40, 18]: mean 29.5. Population std of the
    returns: deviations 1.25, -0.75, 5.25, -5.75, squares summing to 62.75, so sqrt(62.75 / 4); the scores' is
    twice that."""
    result, _ = evaluate(EPISODES, "locomotion", tasks.d4rl_score((-10.0, 40.0)))
    assert result["return"] == pytest.approx(4.75)
    assert result["episode_length"] == pytest.approx(4.5)
    assert result["normalized_score"] == pytest.approx(29.5)
    assert result["return_std"] == pytest.approx(math.sqrt(62.75 / 4))
    assert result["normalized_score_std"] == pytest.approx(2 * math.sqrt(62.75 / 4))
    assert "success_rate" not in result  # no goal task here


def test_the_policy_acts_on_normalised_and_clipped_observations_and_its_action_is_scaled_to_the_bounds():
    """Observation [7, -3], statistics mean [6, 1], std [2, 0.5], clip 5: the policy must see [(7 - 6) / 2,
    clip((-3 - 1) / 0.5)] = [0.5, -5]. It returns its first input, so its action is 0.5 in [-1, 1], which is
    (3 + -1) / 2 + (3 - -1) / 2 x 0.5 = 2 in the env's [-1, 3]; the env pays the action: 5 steps x 2 = 10, score
    100 x 10 / 20 = 50 with reference returns (0, 20). (Unnormalised the policy would see 7 -> action 1 -> env 3,
    return 15; unscaled the env would get 0.5, return 2.5.)"""
    seen = []

    def act(state):
        seen.append(state.clone())
        return state[:, :1].clamp(-1, 1)

    scripts = [Script(limit=5, action_weight=1.0, observation=(7.0, -3.0))] * 2
    result, _ = evaluate(scripts, "adroit", tasks.d4rl_score((0.0, 20.0)),
                         statistics(mean=(6.0, 1.0), std=(2.0, 0.5), clip=5.0), act)
    assert len(seen) == 5
    for state in seen:
        torch.testing.assert_close(state, torch.tensor([[0.5, -5.0], [0.5, -5.0]]))
    assert result["return"] == pytest.approx(10.0)
    assert result["normalized_score"] == pytest.approx(50.0)


GOALS = [
    Script(rewards=(0, 0, 1, 1), goal=True, success_at=(3, 4)),  # at the goal at steps 3-4, then walks away: return 2
    Script(goal=True),  # never: return 0
    Script(goal=True, terminate_at=1, success_at=(2,)),  # ended at step 1; only its NEXT episode reaches step 2
    Script(rewards=(0,) * 9 + (1,), goal=True, success_at=(10,)),  # at the goal at the last step (truncated): return 1
]


def test_antmaze_is_scored_by_success_at_any_step_of_the_episode():
    """AntMaze scores 100 x success: episodes 0 and 3 succeeded (at steps 3-4 and walking away, and at the last
    step), 1 never did, 2 ended before its success step: success rate 2 / 4 = 0.5, score 50 (std of [100, 0, 0,
    100] = 50). By return it would be 100 x mean([2, 0, 0, 1]) = 75. Lengths [10, 10, 1, 10]: mean 7.75."""
    result, _ = evaluate(GOALS, "antmaze", tasks.d4rl_score((0.0, 1.0)))
    assert result["success_rate"] == pytest.approx(0.5)
    assert result["normalized_score"] == pytest.approx(50.0)
    assert result["normalized_score_std"] == pytest.approx(50.0)
    assert result["return"] == pytest.approx(0.75)
    assert result["episode_length"] == pytest.approx(7.75)


def test_a_goal_task_outside_antmaze_is_scored_by_its_return_and_reports_its_success_rate():
    """The same episodes on another domain (PointMaze-like): scored by return, 100 x 0.75 = 75 with (0, 1)."""
    result, _ = evaluate(GOALS, "locomotion", tasks.d4rl_score((0.0, 1.0)))
    assert result["normalized_score"] == pytest.approx(75.0)
    assert result["success_rate"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------------
# RAT and OMS
# ----------------------------------------------------------------------------------------------
SCORES = [10.0, 95.0, 30.0, 40.0, 20.0, 50.0, 60.0, 70.0, 80.0, 20.0, 30.0, 40.0]
# RAT: mean of the last 10 = (30 + 40 + 20 + 50 + 60 + 70 + 80 + 20 + 30 + 40) / 10 = 440 / 10 = 44.0 (the last 5
# would give 48.0, all 12 45.42); OMS: the best of all, 95.0 at the 2nd evaluation (step 2 below), which is not
# among the last 10 (their best: 80.0)
RAT, OMS, BEST_INDEX = 44.0, 95.0, 1


def test_rat_is_the_mean_of_the_last_ten_evaluations_and_oms_the_best():
    rat, oms = summarize([dict(step=i + 1, normalized_score=score) for i, score in enumerate(SCORES)])
    assert (rat, oms) == (pytest.approx(RAT), pytest.approx(OMS))
    # fewer than ten evaluations: the mean of all of them, (10 + 20 + 60) / 3 = 30
    assert summarize([dict(normalized_score=s) for s in (10.0, 20.0, 60.0)]) == (pytest.approx(30.0), pytest.approx(60.0))


# ----------------------------------------------------------------------------------------------
# Seeds: evaluation at step k resets its episodes with seed + 10000 + k
# ----------------------------------------------------------------------------------------------
def test_an_evaluation_at_step_k_draws_its_episodes_and_policy_noise_from_seed_plus_10000_plus_k():
    """runs.make_evaluator with --seed 7, evaluated at step 250: sub-env i is reset with 7 + 10000 + 250 + i
    (SyncVectorEnv seeds env i with seed + i), the policy's noise comes from torch.manual_seed(10257), and
    training's torch generator is left as it was."""
    make_env = scripted([Script(limit=2)] * 3)
    config = SimpleNamespace(eval_episodes=3, seed=7, device="cpu", capture_video=False)
    evaluator = runs.make_evaluator(config, SimpleNamespace(make_env=make_env, score=lambda returns: returns),
                                    statistics(), SimpleNamespace(domain="locomotion"), "unused-video-folder")
    noise = []

    def act(state):
        noise.append(torch.rand(1))
        return torch.zeros(len(state), 1)

    torch.manual_seed(123)
    try:
        evaluator(act, 250)
    finally:
        evaluator.close()
    assert [resets[0] for resets in make_env.resets] == [10257, 10258, 10259]
    torch.testing.assert_close(noise[0], torch.rand(1, generator=torch.Generator().manual_seed(10257)))
    torch.testing.assert_close(torch.rand(1), torch.rand(1, generator=torch.Generator().manual_seed(123)))


# ----------------------------------------------------------------------------------------------
# A run: its summary.json and the checkpoint kept as the best
# ----------------------------------------------------------------------------------------------
def test_a_run_writes_rat_oms_and_keeps_the_best_evaluation_as_checkpoint_best(datasets, tmp_path, monkeypatch):
    """A 12-step run with an evaluation every step and --seed 3, whose evaluations score SCORES: each is looked
    up by the seed the run gives it (3 + 10000 + step), so a wrong seed offset fails here too. summary.json holds
    RAT 44.0 and OMS 95.0, and checkpoint_best.pt is the agent at step 2, the best score."""
    def typed_episodes(self, act, seed, stop):
        step = seed - 10_003
        assert 1 <= step <= len(SCORES), f"evaluation seed {seed}: not 3 + 10000 + a step of this run"
        return dict(normalized_score=SCORES[step - 1], normalized_score_std=0.0, episode_length=1.0,
                    return_std=0.0, **{"return": SCORES[step - 1]})

    monkeypatch.setattr(evaluation.Evaluator, "run_episodes", typed_episodes)
    run_dir = tmp_path / "run"
    assert run_main("edp_td3", "--env", datasets["pendulum"], "--total-steps", "12", "--eval-every", "1", "--seed",
                    "3", "--run-dir", str(run_dir), "--threads", "1", "--compile", "off", *TINY) == 0
    with open(run_dir / "summary.json") as file:
        summary = json.load(file)
    assert [e["step"] for e in summary["evaluations"]] == list(range(1, 13))
    assert [e["normalized_score"] for e in summary["evaluations"]] == SCORES
    assert summary["rat"] == pytest.approx(RAT) and summary["oms"] == pytest.approx(OMS)
    best = torch.load(run_dir / "checkpoint_best.pt", weights_only=True)
    assert best["agent"]["step"] == BEST_INDEX + 1 and len(best["evaluations"]) == BEST_INDEX + 1
    assert torch.load(run_dir / "checkpoint_last.pt", weights_only=True)["agent"]["step"] == 12


# ----------------------------------------------------------------------------------------------
# reproduce.py's tables: our RAT / OMS beside the published ones
# ----------------------------------------------------------------------------------------------
def test_the_tables_put_the_published_scores_beside_ours(tmp_path):
    """TD3 on hopper-medium, two seeds with RAT 80 and 84 (mean 82.0, std 2.0) and OMS 99 and 97 (98.0, 1.0): Table
    2's paper column is the paper's 81.9 (its Table 2 / Table 5 "Average"), diff 82.0 - 81.9 = 0.1; Table 5 adds
    the paper's OMS, 98.6 ("Best"). walker2d-medium, one seed with RAT 90: paper 86.9, diff 3.1. The locomotion
    average of the two: ours (82 + 90) / 2 = 86.0, the paper's (81.9 + 86.9) / 2 = 84.4, diff 1.6."""
    def run(rat, oms):
        return dict(rat=rat, oms=oms, config=dict(preset="released"), evaluations=[dict(step=1, normalized_score=oms)])

    results = {("td3", "hopper-medium"): [run(80.0, 99.0), run(84.0, 97.0)], ("td3", "walker2d-medium"): [run(90.0, 91.0)]}
    rows2, rows5 = reproduce.tables(results, str(tmp_path))
    row2, row5 = ({row["task"]: row for row in rows} for rows in (rows2, rows5))
    hopper, walker, average = row2["hopper-medium"], row2["walker2d-medium"], row2["locomotion average"]
    assert hopper["td3 RAT"] == "82.0 ± 2.0" and hopper["td3 paper"] == 81.9 and hopper["td3 diff"] == pytest.approx(0.1)
    assert walker["td3 paper"] == 86.9 and walker["td3 diff"] == pytest.approx(3.1)
    assert average["td3 RAT"] == "86.0" and average["td3 paper"] == pytest.approx(84.4)
    assert average["td3 diff"] == pytest.approx(1.6)
    assert row5["hopper-medium"]["td3 OMS"] == "98.0 ± 1.0"
    assert (row5["hopper-medium"]["td3 paper RAT"], row5["hopper-medium"]["td3 paper OMS"]) == (81.9, 98.6)
    assert (row5["walker2d-medium"]["td3 paper RAT"], row5["walker2d-medium"]["td3 paper OMS"]) == (86.9, 89.6)
    assert "| hopper-medium | 82.0 ± 2.0 | 81.9 | 0.1 |" in (tmp_path / "table2.md").read_text()
