"""reproduce.py's statistics over seeds (Agarwal et al., NeurIPS 2021): the interquartile mean, its stratified
bootstrap confidence interval and the performance profile, against values worked out by hand on typed scores."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import reproduce

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_iqm_is_the_mean_of_the_middle_half():
    # sorted 1 1 2 3 4 5 6 9: int(8 / 4) = 2 cut from each end, (2 + 3 + 4 + 5) / 4 = 3.5
    assert reproduce.iqm([3, 1, 4, 1, 5, 9, 2, 6]) == 3.5
    assert reproduce.iqm([100, 10, 40, 20, 30]) == 30.0  # int(5 / 4) = 1 cut from each end: (20 + 30 + 40) / 3
    assert reproduce.iqm([4, 1, 3, 2]) == 2.5  # 1 cut from each end: (2 + 3) / 2
    assert reproduce.iqm([7, 1, 4]) == 4.0  # int(3 / 4) = 0: the plain mean
    assert reproduce.iqm([[3, 1, 4, 1, 5, 9, 2, 6]]) == 3.5  # all values of a matrix
    np.testing.assert_array_equal(reproduce.iqm([[4, 1, 3, 2], [8, 8, 0, 100]], axis=1), [2.5, 8.0])


def test_the_interval_of_two_runs_is_its_four_resamples():
    """One task, runs 0 and 10: the resamples (0, 0), (0, 10), (10, 0), (10, 10) have IQMs (plain means of two) 0, 5,
    5, 10 with odds 1/4, 1/2, 1/4, so the 2.5th percentile is 0 and the 97.5th 10; the IQM itself is 5."""
    assert reproduce.iqm_interval([[0.0, 10.0]]) == (5.0, 0.0, 10.0)


def test_the_interval_is_reproducible_contains_the_iqm_and_is_stratified():
    per_task = [[3, 1, 4, 1, 5], [9, 2, 6], [5, 3, 5, 8]]
    value, low, high = reproduce.iqm_interval(per_task)
    # sorted 1 1 2 3 3 4 5 5 5 6 8 9: 3 cut from each end, (3 + 3 + 4 + 5 + 5 + 5) / 6 = 25 / 6
    assert value == reproduce.iqm([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]) == pytest.approx(25 / 6)
    assert (value, low, high) == reproduce.iqm_interval(per_task)  # the same seed, the same numbers
    assert 1 <= low < value < high <= 9
    # each resample keeps every task's number of runs: with task A all 0 (3 runs) and task B all 1 (2 runs), every
    # resample is 0 0 0 1 1, IQM (0 + 0 + 1) / 3, so the interval has no width (a plain bootstrap's would)
    assert reproduce.iqm_interval([[0, 0, 0], [1, 1]]) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    rows = reproduce.stratified_resamples([[0, 0, 0], [1, 1]], 50, np.random.default_rng(0))
    assert rows.shape == (50, 5) and (rows.sum(axis=1) == 2).all()


def test_equal_scores_give_a_zero_width_interval():
    assert reproduce.iqm_interval([[70.0] * 5, [70.0] * 5, [70.0] * 3]) == (70.0, 70.0, 70.0)


def test_the_performance_profile_weighs_each_task_the_same():
    """Task A: 0, 50, 100; task B: 20, 80. Above tau = 10: A 2/3, B 2/2, mean 5/6; above 60: A 1/3, B 1/2, mean 5/12;
    above 100: none; above -1: all."""
    taus = np.array([-1.0, 10.0, 60.0, 100.0])
    profile, low, high = reproduce.performance_profile([[0, 50, 100], [20, 80]], taus)
    np.testing.assert_allclose(profile, [1, 5 / 6, 5 / 12, 0])
    assert (low <= profile).all() and (profile <= high).all() and low[0] == high[0] == 1 and low[3] == high[3] == 0


def summary(rat, task="antmaze-umaze"):
    return dict(algo="edp_td3", env=task, rat=rat, oms=rat, config=dict(preset="released"),
                evaluations=[dict(step=1, normalized_score=rat)])


def test_the_tables_put_the_iqm_and_its_interval_beside_mean_and_std(tmp_path):
    results = {("td3", "antmaze-umaze"): [summary(v) for v in (3, 1, 4, 1, 5, 9, 2, 6)],
               ("td3", "antmaze-large-play"): [summary(v, "antmaze-large-play") for v in (0.0, 10.0)]}
    rows2, _ = reproduce.tables(results, str(tmp_path))
    umaze = next(row for row in rows2 if row["task"] == "antmaze-umaze")
    _, low, high = reproduce.iqm_interval([[3, 1, 4, 1, 5, 9, 2, 6]])
    # mean 31 / 8 = 3.875; std sqrt(173 / 8 - 3.875^2) = 2.57
    assert umaze["td3 RAT"] == "3.9 ± 2.6" and umaze["td3 IQM [95% CI]"] == f"3.5 [{low:.1f}, {high:.1f}]"
    large = next(row for row in rows2 if row["task"] == "antmaze-large-play")
    assert large["td3 IQM [95% CI]"] == "5.0 [0.0, 10.0]"
    domain = next(row for row in rows2 if row["task"] == "antmaze average")
    value, low, high = reproduce.iqm_interval([[0.0, 10.0], [3, 1, 4, 1, 5, 9, 2, 6]])  # the tasks in table order
    assert value == 3.5 and domain["td3 IQM [95% CI]"] == f"3.5 [{low:.1f}, {high:.1f}]"  # middle 6 of all 10 runs
    rows = reproduce.statistics(results, str(tmp_path))
    assert [row["tasks"] for row in rows] == ["all tasks", "antmaze"]
    assert rows[0]["td3 IQM"] == 3.5 and rows[0]["td3 95% CI"] == f"[{low:.1f}, {high:.1f}]"
    assert rows[0]["td3 runs"] == 10 and rows[0]["td3 tasks"] == 2
    assert "stratified bootstrap" in (tmp_path / "statistics.md").read_text()
    assert (tmp_path / "performance_profile.png").stat().st_size > 0


def test_report_only_prints_the_iqm_per_algorithm_and_writes_the_profile(tmp_path):
    """Finished runs written by hand (summary.json and done.json, as a sweep leaves them); --report-only starts none."""
    args = reproduce.Args(tasks=["edp/pendulum-mixed-v0"], algos=["td3", "iql"], seeds=[0, 1, 2, 3], out_dir=str(tmp_path))
    scores = {"td3": [3, 1, 4, 1], "iql": [5, 5, 5, 5]}
    for run in reproduce.plan(args):
        os.makedirs(run.run_dir)
        with open(os.path.join(run.run_dir, "summary.json"), "w") as file:
            json.dump(summary(scores[run.algo][run.seed], run.task), file)
        with open(os.path.join(run.run_dir, "done.json"), "w") as file:
            json.dump(dict(command=run.command), file)
    process = subprocess.run([sys.executable, "reproduce.py", "--report-only", "--tasks", "edp/pendulum-mixed-v0",
                              "--algos", "td3", "iql", "--seeds", "0", "1", "2", "3", "--out-dir", str(tmp_path)],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr
    _, low, high = reproduce.iqm_interval([[3, 1, 4, 1]])  # IQM: sorted 1 1 3 4, middle two (1 + 3) / 2 = 2
    assert f"td3: IQM 2.0 [{low:.1f}, {high:.1f}] (95% stratified bootstrap CI) over 4 runs of 1 tasks" in process.stdout
    assert "iql: IQM 5.0 [5.0, 5.0]" in process.stdout
    assert (tmp_path / "performance_profile.png").is_file() and (tmp_path / "statistics.csv").is_file()
