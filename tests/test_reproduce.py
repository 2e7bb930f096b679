"""reproduce.py: a tiny sweep on a local Ray instance, skipping and resuming, and the tables."""

import json
import os
import subprocess
import sys

import pytest

import reproduce

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_FLAGS = ["--eval-every", "50", "--num-diffusion-steps", "50", "--dpm-steps", "3", "--batch-size", "32",
             "--eas-samples", "2", "--eval-episodes", "2", "--wandb-mode", "disabled"]
SCRIPT_ARGS = "--script-args=--total-steps 100 " + " ".join(RUN_FLAGS)


def sweep(out_dir, datasets):
    command = [sys.executable, "reproduce.py", "--tasks", datasets["pendulum"], datasets["modes"], "--algos", "td3",
               "--seeds", "0", "1", "--out-dir", str(out_dir), SCRIPT_ARGS]
    process = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stdout + process.stderr
    return process.stdout


def test_tiny_sweep_skips_finished_runs_and_resumes_an_interrupted_one(datasets, tmp_path):
    out_dir = tmp_path / "sweep"
    # a run of the sweep that stopped early: a checkpoint at step 50, no done.json
    interrupted = out_dir / "runs" / "td3" / datasets["modes"].replace("/", "-") / "seed1"
    import edp_td3

    assert edp_td3.main(["--env", datasets["modes"], "--seed", "1", "--run-dir", str(interrupted), "--total-steps", "50",
                         "--preset", "released", *RUN_FLAGS]) == 0
    assert not (interrupted / "done.json").exists()

    output = sweep(out_dir, datasets)
    assert "4 runs: 0 finished (skipped), 1 to resume, 3 to start" in output
    for run_dir in (out_dir / "runs" / "td3").glob("*/seed*"):
        assert (run_dir / "done.json").exists()
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["final_step"] == 100 and [e["step"] for e in summary["evaluations"]] == [50, 100]
    resumed = json.loads((interrupted / "summary.json").read_text())
    assert resumed["config"]["resume"] is True  # continued from its checkpoint, not started again
    for name in ("table2.md", "table2.csv", "table5.md", "table5.csv"):
        assert (out_dir / name).read_text().count("\n") >= 3
    curves = sorted(os.listdir(out_dir / "curves"))
    assert curves == ["edp-modes-v0.png", "edp-pendulum-mixed-v0.png"]
    assert "| edp/pendulum-mixed-v0 |" in (out_dir / "table2.md").read_text()
    assert (out_dir / "table2.md").read_text().startswith("Preset: released (4 runs)\n")  # the sweep's default

    before = {p: p.stat().st_mtime for p in out_dir.glob("runs/td3/*/seed*/summary.json")}
    output = sweep(out_dir, datasets)
    assert "4 runs: 4 finished (skipped), 0 to resume, 0 to start" in output
    assert {p: p.stat().st_mtime for p in out_dir.glob("runs/td3/*/seed*/summary.json")} == before


def test_dry_run_lists_runs_and_bad_input_is_one_line(tmp_path):
    process = subprocess.run([sys.executable, "reproduce.py", "--domains", "antmaze", "adroit", "--algos", "iql",
                              "--seeds", "0", "1", "--out-dir", str(tmp_path), "--dry-run"],
                             cwd=ROOT, capture_output=True, text=True)
    assert process.returncode == 0 and process.stdout.strip().endswith("16 runs")
    assert "edp_iql.py --env antmaze-medium-play --seed 1" in process.stdout
    # D4RL's files are fetched into D4RL's folder before the runs (conftest: a mirror where nothing listens)
    process = subprocess.run([sys.executable, "reproduce.py", "--domains", "locomotion", "--out-dir", str(tmp_path)],
                             cwd=ROOT, capture_output=True, text=True)
    assert process.returncode == 2 and process.stderr.startswith("error: D4RL's halfcheetah_medium-v2.hdf5 is not in")
    assert len(process.stderr.strip().splitlines()) == 1 and "put it at" in process.stderr
    process = subprocess.run([sys.executable, "reproduce.py", "--domains", "locomotion", "--out-dir", str(tmp_path),
                              "--d4rl-dir", str(tmp_path / "none")], cwd=ROOT, capture_output=True, text=True)
    assert process.returncode == 2 and process.stderr.startswith("error: the locomotion tasks need D4RL's HDF5 files in"
                                                                 " --d4rl-dir (missing 9")
    assert len(process.stderr.strip().splitlines()) == 1
    process = subprocess.run([sys.executable, "reproduce.py", "--domains", "locomotion", "--dry-run"],
                             cwd=ROOT, capture_output=True, text=True)  # a dry run needs no --d4rl-dir
    assert process.returncode == 0 and process.stdout.count("fetch, start") == 9 * 3 * 5
    assert "--dataset-path" not in process.stdout and "9 D4RL files to download into" in process.stdout
    process = subprocess.run([sys.executable, "reproduce.py", "--domains", "locomotion", "--dry-run", "--d4rl-dir",
                              str(tmp_path / "none")], cwd=ROOT, capture_output=True, text=True)
    assert process.returncode == 0 and process.stdout.count("no D4RL file") == 9 * 3 * 5


def summary(algo, task, seed, rat, oms):
    return dict(algo=f"edp_{algo}", env=task, seed=seed, rat=rat, oms=oms, evaluations=[], config=dict(preset="paper"))


def test_tables_put_mean_and_std_next_to_the_paper(tmp_path):
    results = {("iql", "antmaze-umaze"): [summary("iql", "antmaze-umaze", 0, 90.0, 98.0),
                                          summary("iql", "antmaze-umaze", 1, 94.0, 100.0)],
               ("iql", "antmaze-large-play"): [summary("iql", "antmaze-large-play", 0, 40.0, 50.0)]}
    table2, table5 = reproduce.tables(results, str(tmp_path))
    umaze = next(row for row in table2 if row["task"] == "antmaze-umaze")
    assert umaze["iql RAT"] == "92.0 ± 2.0" and umaze["iql paper"] == 94.2 and umaze["iql diff"] == pytest.approx(-2.2)
    average = next(row for row in table2 if row["task"] == "antmaze average")
    assert average["iql RAT"] == "66.0" and average["iql paper"] == pytest.approx((94.2 + 42.3) / 2, abs=0.05)
    row5 = next(row for row in table5 if row["task"] == "antmaze-umaze")
    assert row5["iql OMS"] == "99.0 ± 1.0" and row5["iql paper OMS"] == 98.0
    assert "| antmaze-umaze | 92.0 ± 2.0 | 94.2 | -2.2 | 2 |" in (tmp_path / "table2.md").read_text()
    assert (tmp_path / "table5.md").read_text().startswith("Preset: paper (3 runs)\n")


def test_locomotion_runs_read_the_d4rl_folder(tmp_path):
    d4rl = tmp_path / "d4rl"
    d4rl.mkdir()
    for task in reproduce.DOMAIN_TASKS["locomotion"]:
        robot, quality = task.split("-", 1)
        (d4rl / f"{robot}_{quality.replace('-', '_')}-v2.hdf5").write_bytes(b"")
    process = subprocess.run([sys.executable, "reproduce.py", "--domains", "locomotion", "--algos", "td3", "--seeds", "0",
                              "--d4rl-dir", str(d4rl), "--out-dir", str(tmp_path / "out"), "--dry-run"],
                             cwd=ROOT, capture_output=True, text=True)
    assert process.returncode == 0 and process.stdout.strip().endswith("9 runs")
    assert "--env hopper-medium-replay --seed 0" in process.stdout
    assert f"--dataset-path {d4rl}/hopper_medium_replay-v2.hdf5" in process.stdout
