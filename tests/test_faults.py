"""Faults and bad input: hostile checkpoints, shared run folders, failed saves, resumes with other flags,
signals, and inputs that must end in one line and exit 2 instead of a traceback (issue 11)."""

import errno
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import torch

from test_scripts import ROOT, TINY, poison_losses_after, run_main, summary

RUN_FILES = ["summary.json", "checkpoint_best.pt", "checkpoint_last.pt"]


def tiny_run(env, run_dir, *flags, steps=10):
    return run_main("edp_td3", "--env", env, "--total-steps", str(steps), "--eval-every", "10",
                    "--run-dir", str(run_dir), *TINY, *flags)


def one_line_error(stderr, *fragments, trained=False):
    """The one 'error: ...' line; a run that trained has its progress bar on stderr before it."""
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("warning:")]  # said, not refused
    error = lines[-1] if trained else "\n".join(lines)
    assert error.startswith("error:") and "\n" not in error and "Traceback" not in stderr, stderr
    assert all(fragment in error for fragment in fragments), error
    return error


def start_slow_run(run_dir, env):
    """A run of hours in its own process; returns once it has written its first evaluation."""
    command = [sys.executable, "edp_td3.py", "--env", env, "--total-steps", "100000", "--compile", "off",
               "--eval-every", "5", "--run-dir", str(run_dir), *TINY]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run_dir / "summary.json").exists():
        assert process.poll() is None and time.time() < deadline, "the slow run ended or never evaluated"
        time.sleep(0.2)
    return process


def stop(process, *gaps):
    """SIGTERM, and one more after each gap; returns (exit code, stderr)."""
    process.send_signal(signal.SIGTERM)
    for gap in gaps:
        time.sleep(gap)
        process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


def stopped_at(stderr):
    """The step of the 'stopped by signal 15 at step N; ...' line."""
    line = next(line for line in stderr.splitlines() if line.startswith("stopped by signal"))
    return int(line.split(" at step ")[1].split(";")[0])


# -- checkpoints are data: torch.load(weights_only=True) ------------------------------------------------
class Hostile:
    """Unpickling it runs a shell command, as a checkpoint from a stranger could."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def test_a_hostile_checkpoint_is_refused_and_runs_nothing(datasets, tmp_path, capsys):
    run_dir, marker = tmp_path / "run", tmp_path / "marker"
    assert tiny_run(datasets["pendulum"], run_dir) == 0
    checkpoint = torch.load(run_dir / "checkpoint_last.pt", weights_only=True)
    checkpoint["agent"]["step"] = Hostile(str(marker))  # everything else as a real checkpoint of this run
    torch.save(checkpoint, run_dir / "checkpoint_last.pt")
    capsys.readouterr()
    assert tiny_run(datasets["pendulum"], run_dir, "--resume", steps=20) == 2
    one_line_error(capsys.readouterr().err, "refused", "could run code")
    assert not marker.exists()
    torch.load(run_dir / "checkpoint_last.pt", weights_only=False)  # what --resume used to do ...
    assert marker.exists()  # ... runs the command: the file is as hostile as it looks


# -- the run folder: locked, never taken over, writable ------------------------------------------------
def test_a_second_run_on_a_locked_folder_is_refused_and_the_first_stays_intact(datasets, tmp_path, capsys):
    run_dir = tmp_path / "run"
    first = start_slow_run(run_dir, datasets["pendulum"])
    try:
        for flags in ([], ["--resume"]):
            assert tiny_run(datasets["pendulum"], run_dir, "--seed", "1", *flags) == 2
            one_line_error(capsys.readouterr().err, f"{run_dir} is in use by another run (process {first.pid})")
    finally:
        returncode, stderr = stop(first)
    assert returncode == 130, stderr
    checkpoint, result = torch.load(run_dir / "checkpoint_last.pt", weights_only=True), summary(run_dir)
    assert checkpoint["agent"]["step"] == stopped_at(stderr) >= result["final_step"] >= 5
    assert result["seed"] == checkpoint["config"]["seed"] == 0  # the first run's files, not the second's
    assert checkpoint["evaluations"][:len(result["evaluations"])] == result["evaluations"]
    assert not list(run_dir.glob("*.tmp"))
    # the lock ended with the first run: the folder can be continued
    assert tiny_run(datasets["pendulum"], run_dir, "--resume", steps=checkpoint["agent"]["step"] + 1) == 0


@pytest.mark.parametrize("name", RUN_FILES)
def test_a_fresh_run_refuses_a_folder_with_an_earlier_runs_files(name, datasets, tmp_path, capsys):
    (tmp_path / name).write_text("{}")
    assert tiny_run(datasets["pendulum"], tmp_path) == 2
    one_line_error(capsys.readouterr().err, f"{tmp_path} already holds a run ({name}): pass --resume")
    assert (tmp_path / name).read_text() == "{}"


def test_a_run_dir_that_is_a_file_is_refused(datasets, tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    assert tiny_run(datasets["pendulum"], tmp_path / "file") == 2
    one_line_error(capsys.readouterr().err, "is a file, not a folder")
    assert (tmp_path / "file").read_text() == "mine"


def test_a_read_only_run_folder_is_refused_before_training(datasets, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    assert tiny_run(datasets["pendulum"], run_dir) == 0
    before = (run_dir / "checkpoint_last.pt").read_bytes()
    capsys.readouterr()
    if os.geteuid() == 0:  # root writes through permissions: fail the probe file as a read-only disk would
        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))

        monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    run_dir.chmod(0o555)
    try:
        assert tiny_run(datasets["pendulum"], run_dir, "--resume", steps=20) == 2
    finally:
        run_dir.chmod(0o755)
    output = capsys.readouterr()
    one_line_error(output.err, f"cannot write to the run folder {run_dir}")
    assert "configuration" not in output.out  # refused before the run began
    assert (run_dir / "checkpoint_last.pt").read_bytes() == before


# -- a failed save ------------------------------------------------------------------------------------
@pytest.mark.parametrize("failing", [1, 3])
def test_a_failed_save_keeps_the_last_good_files_and_stops_with_one_line(failing, datasets, tmp_path, capsys,
                                                                         monkeypatch):
    """Save 1 is the first evaluation's checkpoint_last.pt, save 2 its checkpoint_best.pt, save 3 the second's
    checkpoint_last.pt; the failing one writes part of the file, then the disk is full."""
    save, calls = torch.save, []

    def full_disk(state, path, *args, **kwargs):
        calls.append(os.path.basename(path))
        if len(calls) == failing:
            with open(path, "wb") as file:
                file.write(b"part of a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(state, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    import wandb

    init, exit_codes = wandb.init, []

    class RunSpy:  # hears what wandb is told of the run's end
        def __init__(self, *args, **kwargs):
            self.run = init(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(self.run, name)

        def finish(self, exit_code=None, **kwargs):
            exit_codes.append(exit_code)
            return self.run.finish(exit_code=exit_code, **kwargs)

    monkeypatch.setattr(wandb, "init", RunSpy)
    run_dir = tmp_path / "run"
    assert tiny_run(datasets["pendulum"], run_dir, steps=30) == 1
    assert calls[-1] == "checkpoint_last.pt.tmp" and len(calls) == failing and exit_codes == [1]
    error = one_line_error(capsys.readouterr().err, f"cannot write {run_dir / 'checkpoint_last.pt'}",
                           "No space left on device", trained=True)
    assert not list(run_dir.glob("*.tmp"))
    if failing == 1:
        assert error.endswith("no checkpoint was saved")
        assert not any((run_dir / name).exists() for name in RUN_FILES)
    else:
        assert error.endswith(f"the last good checkpoint is {run_dir / 'checkpoint_last.pt'}")
        checkpoint = torch.load(run_dir / "checkpoint_last.pt", weights_only=True)
        assert checkpoint["agent"]["step"] == summary(run_dir)["final_step"] == 10


# -- resume: the saved configuration governs -----------------------------------------------------------
def test_resume_refuses_changed_flags_and_applies_the_ones_that_may_change(datasets, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert tiny_run(datasets["pendulum"], run_dir) == 0
    capsys.readouterr()
    assert tiny_run(datasets["pendulum"], run_dir, "--resume", "--lr", "0.05", "--eta", "0.5", steps=20) == 2
    one_line_error(capsys.readouterr().err, "--lr: saved 0.0003, given 0.05; --eta: saved 1.0, given 0.5")
    assert summary(run_dir)["final_step"] == 10
    # the saved lr given again is no change; a larger --total-steps is applied
    assert tiny_run(datasets["pendulum"], run_dir, "--resume", "--lr", "0.0003", steps=20) == 0
    result = summary(run_dir)
    assert result["final_step"] == 20 and result["config"]["total_steps"] == 20
    assert [evaluation["step"] for evaluation in result["evaluations"]] == [10, 20]


# -- signals and NaN ----------------------------------------------------------------------------------
@pytest.mark.parametrize("gap", [0.05, 0.5])  # the second signal during the save, or after it
def test_two_quick_sigterms_still_end_with_a_complete_checkpoint(gap, datasets, tmp_path):
    run_dir = tmp_path / "run"
    returncode, stderr = stop(start_slow_run(run_dir, datasets["pendulum"]), gap)
    assert returncode == 130 and "Traceback" not in stderr, stderr
    checkpoint = torch.load(run_dir / "checkpoint_last.pt", weights_only=True)
    assert checkpoint["agent"]["step"] == stopped_at(stderr)


def test_a_nan_before_the_first_checkpoint_names_none(datasets, tmp_path, capsys, monkeypatch):
    poison_losses_after(monkeypatch, "edp_td3", 2)
    assert tiny_run(datasets["pendulum"], tmp_path / "run") == 1
    error = one_line_error(capsys.readouterr().err, "NaN or inf at step 3", "no checkpoint was saved", trained=True)
    assert "checkpoint_last.pt" not in error and not (tmp_path / "run" / "checkpoint_last.pt").exists()


# -- bad flags: one line, exit 2 ----------------------------------------------------------------------
@pytest.mark.parametrize("flags,message", [
    (["--num-diffusion-steps", "1"], "--sampler dpm needs --num-diffusion-steps >= 2"),
    (["--device", "mps"], "--device mps: use cpu, cuda, cuda:N or auto"),
    (["--device", "banana"], "--device banana: use cpu, cuda, cuda:N or auto"),
    (["--seed", "-1"], "--seed must be in 0 .. 2**32 - 1, got -1"),
    (["--seed", str(2**32)], "--seed must be in 0 .. 2**32 - 1"),  # numpy's seed range
    (["--lr", "inf"], "--lr inf: every number must be finite"),
    (["--alpha", "nan"], "--alpha nan: every number must be finite"),
    (["--noise-scale", "inf"], "--noise-scale inf: every number must be finite"),
    (["--batch-size", str(10**9)], "--batch-size (at most 1,000,000) would not fit in memory"),
    (["--eas-samples", str(10**7)], "--eas-samples (at most 10,000) would not fit in memory"),
    (["--num-diffusion-steps", str(10**8)], "--num-diffusion-steps (at most 100,000) would not fit in memory"),
    (["--eval-max-steps", "-3"], "--eval-max-steps must be 0"),
])
def test_bad_flags_are_one_line_and_exit_code_2(flags, message, datasets, tmp_path, capsys):
    assert tiny_run(datasets["pendulum"], tmp_path / "run", *flags) == 2
    one_line_error(capsys.readouterr().err, message)


def test_dpm_solver_cannot_sample_with_one_diffusion_step_and_two_suffice():
    """Why --sampler dpm refuses K = 1: its time interval [1/K, 1] is empty."""
    from diffusion import DiffusionPolicy

    state = torch.zeros(4, 3)
    with pytest.raises(ZeroDivisionError):
        DiffusionPolicy(3, 2, 1, "vp").sample(state, sampler="dpm")
    assert DiffusionPolicy(3, 2, 1, "vp").sample(state, sampler="ddpm").isfinite().all()
    for steps in (1, 2, 3, 15):
        assert DiffusionPolicy(3, 2, 2, "vp").sample(state, sampler="dpm", steps=steps).isfinite().all()


@pytest.mark.parametrize("flags", [["--num-diffusion-steps", "2", "--schedule", "vp"],
                                   ["--num-diffusion-steps", "1", "--schedule", "vp", "--sampler", "ddpm"]])
def test_the_smallest_k_each_sampler_takes_trains(flags, datasets, tmp_path):
    assert tiny_run(datasets["pendulum"], tmp_path / "run", *flags, steps=5) == 0


def test_wandb_online_without_an_api_key_is_one_line(datasets, tmp_path):
    home = tmp_path / "home"  # no netrc, no wandb settings, no WANDB_* variables
    home.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_") and key != "NETRC"}
    env |= dict(HOME=str(home), WANDB_CONFIG_DIR=str(home / "wandb"))
    process = subprocess.run([sys.executable, "edp_td3.py", "--env", datasets["pendulum"], "--run-dir",
                              str(tmp_path / "run"), *TINY, "--wandb-mode", "online"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert process.returncode == 2
    one_line_error(process.stderr, "wandb could not start", "--wandb-mode offline needs no account")


# -- reproduce.py ---------------------------------------------------------------------------------------
def reproduce(*flags, timeout=120):
    return subprocess.run([sys.executable, "reproduce.py", *flags], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("flags,message", [
    (["--script-args=--run-dir /tmp/x --seed 3"], "--script-args may not set --seed, --run-dir: the sweep sets them"),
    (["--script-args=--env=hopper-medium --no-resume --wandb_group g --preset paper"],
     "may not set --env, --wandb-group, --preset, --resume"),
    (["--script-args=--total-steps 10 --wandb-project 'a b"], "--script-args \"--total-steps 10 --wandb-project 'a b\":"
                                                              " No closing quotation"),
    (["--domains", "mujoco"], "unknown algorithm or domain: mujoco (algorithms: crr, iql, td3, or a script's path;"
                              " domains: locomotion, antmaze, adroit, kitchen)"),
    (["--tasks", "hoper-medium", "--dry-run"], "unknown task 'hoper-medium'"),
    (["--tasks", "hoper-medium"], "unknown task 'hoper-medium'"),
    (["--seeds", "0", "-1", "--dry-run"], "--seeds must be in 0 .. 2**32 - 1, got 0 -1"),
    (["--seeds", "0", "0", "--dry-run"], "--seeds and --algos must not repeat a value"),
    (["--cpus-per-run", "0", "--dry-run"], "--cpus-per-run must be > 0"),
    (["--cpus-per-run", "-1"], "--cpus-per-run must be > 0"),
    (["--cpus-per-run", "inf"], "--cpus-per-run must be > 0 and --gpus-per-run >= 0, both finite, got inf"),
])
def test_reproduce_bad_input_is_one_line_in_dry_runs_too(flags, message, tmp_path):
    process = reproduce("--domains", "adroit", *flags, "--out-dir", str(tmp_path), timeout=30)  # no sweep starts
    assert process.returncode == 2, process.stdout + process.stderr
    one_line_error(process.stderr, message)
    assert not (tmp_path / "runs").exists()


SWEEP = ["--tasks", "antmaze-umaze", "--algos", "iql"]


def finished_runs(tmp_path, summaries, seeds=None):
    """Run folders of the sweep SWEEP --seeds 0 .. n-1 that finished (done.json with the planned command), each
    holding the given summary.json text."""
    import reproduce

    seeds = seeds or list(range(len(summaries)))
    runs = reproduce.plan(reproduce.Args(tasks=["antmaze-umaze"], algos=["iql"], seeds=seeds, out_dir=str(tmp_path)))
    for run, text in zip(runs, summaries):
        os.makedirs(run.run_dir)
        with open(os.path.join(run.run_dir, "summary.json"), "w") as file:
            file.write(text)
        with open(os.path.join(run.run_dir, "done.json"), "w") as file:
            json.dump(dict(command=run.command), file)
    return runs


GOOD_SUMMARY = dict(algo="edp_iql", env="antmaze-umaze", seed=0, rat=90.0, oms=95.0, config=dict(preset="released"),
                    evaluations=[dict(step=10, normalized_score=90.0)])


def test_report_only_skips_a_corrupt_summary_with_a_warning(tmp_path):
    wrong_types = dict(GOOD_SUMMARY, rat="90", evaluations=[dict(step=10, normalized_score=None)])
    texts = [json.dumps(GOOD_SUMMARY), '{"algo": "edp_iql", "env": "antm', "[]", json.dumps(wrong_types)]
    runs = finished_runs(tmp_path, texts)
    process = reproduce("--report-only", *SWEEP, "--seeds", "0", "1", "2", "3", "--out-dir", str(tmp_path))
    assert process.returncode == 0, process.stderr
    warnings = process.stderr.strip().splitlines()
    assert [line.split(" (")[0] for line in warnings] == [f"warning: skipped {os.path.join(run.run_dir, 'summary.json')}"
                                                          for run in runs[1:]]
    assert "| antmaze-umaze | 90.0 ± 0.0 | 94.2 | -4.2 | 1 |" in (tmp_path / "table2.md").read_text()


def test_a_table_holds_only_finished_runs_of_the_configuration_it_names(tmp_path):
    """Unfinished runs (no done.json), copies of run folders and runs of other flags never reach a table, and a
    sweep with other flags refuses an --out-dir whose runs finished with different ones."""
    import shutil

    runs = finished_runs(tmp_path, [json.dumps(GOOD_SUMMARY)] * 2)
    os.remove(os.path.join(runs[1].run_dir, "done.json"))  # seed 1 never finished
    shutil.copytree(runs[0].run_dir, runs[0].run_dir + ".bak")  # a copy is no seed
    process = reproduce("--report-only", *SWEEP, "--seeds", "0", "1", "--out-dir", str(tmp_path))
    assert process.returncode == 0, process.stderr
    assert "| antmaze-umaze | 90.0 ± 0.0 | 94.2 | -4.2 | 1 |" in (tmp_path / "table2.md").read_text()
    other = reproduce(*SWEEP, "--seeds", "0", "--out-dir", str(tmp_path), "--script-args=--total-steps 5", timeout=60)
    assert other.returncode == 2
    one_line_error(other.stderr, "holds a finished run of another configuration")
    assert "WARNING" not in (tmp_path / "table2.md").read_text()


def test_a_table_says_when_its_runs_trained_on_replicas(tmp_path):
    replica = dict(GOOD_SUMMARY, task=dict(dataset=dict(id="D4RL/antmaze/umaze-v1", replica=True)))
    finished_runs(tmp_path, [json.dumps(replica)])
    assert reproduce("--report-only", *SWEEP, "--seeds", "0", "--out-dir", str(tmp_path)).returncode == 0
    caption = (tmp_path / "table2.md").read_text().splitlines()[0]
    assert caption.startswith("Preset: released (1 runs)") and "1 runs trained on structural REPLICAS" in caption


def test_a_sweep_with_a_failed_run_writes_the_tables_and_exits_non_zero(datasets, tmp_path):
    # D4RL/pen/tiny-missing-v2 is not in the local Minari folder (and there is no network): that run fails
    process = reproduce("--tasks", datasets["pendulum"], "D4RL/pen/tiny-missing-v2", "--algos", "td3", "--seeds", "0",
                        "--out-dir", str(tmp_path), "--script-args=--total-steps 10 --eval-every 10 " + " ".join(TINY),
                        timeout=600)
    assert process.returncode == 1, process.stdout + process.stderr
    assert process.stderr.strip().splitlines()[-1] == "error: 1 of 2 runs failed (see the reproduce.log in their folders)"
    assert f"| {datasets['pendulum']} |" in (tmp_path / "table2.md").read_text()


def test_reproduce_address_where_nothing_listens_fails_fast(datasets, tmp_path):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    start = time.time()
    process = reproduce("--tasks", datasets["pendulum"], "--algos", "td3", "--seeds", "0", "--out-dir", str(tmp_path),
                        "--address", f"127.0.0.1:{port}", timeout=60)
    assert process.returncode == 2 and time.time() - start < 30
    one_line_error(process.stderr, f"--address 127.0.0.1:{port}: no Ray cluster answers there")


# -- nothing silently wrong (issue 20) ------------------------------------------------------------------
def test_eval_only_applies_every_flag_given_even_at_its_default(datasets, tmp_path, capsys):
    """Trained with seed 5, noise 0.5, DDPM: --eval-only --seed 0 --noise-scale 1.0 --sampler dpm evaluates with
    those (the defaults' values), and says so."""
    run_dir = tmp_path / "run"
    assert tiny_run(datasets["pendulum"], run_dir, "--seed", "5", "--noise-scale", "0.5", "--sampler", "ddpm",
                    "--num-diffusion-steps", "25", steps=5) == 0
    assert run_main("edp_td3", "--eval-only", "--run-dir", str(run_dir), "--seed", "0", "--noise-scale", "1.0",
                    "--sampler", "dpm", "--eval-episodes", "1") == 0
    report = json.loads((run_dir / "eval_checkpoint_last.json").read_text())
    assert report["overrides"] == dict(seed=0, noise_scale=1.0, sampler="dpm", eval_episodes=1)
    assert (report["config"]["seed"], report["config"]["noise_scale"], report["config"]["sampler"]) == (0, 1.0, "dpm")


def write_hopper(path, rewards_sign=1.0, **kwargs):
    from test_scripts import write_hopper_hdf5
    import numpy as np

    rewards = np.random.default_rng(1).uniform(0, 3, 90).astype(np.float32) * rewards_sign
    return write_hopper_hdf5(path, rewards=rewards, **kwargs)


def test_resume_refuses_other_data_naming_what_changed(tmp_path, capsys):
    data = tmp_path / "hopper.hdf5"
    write_hopper(data)
    flags = ["--env", "hopper-medium", "--dataset-path", str(data), "--run-dir", str(tmp_path / "run"), *TINY,
             "--eval-every", "5", "--eval-episodes", "1", "--eval-max-steps", "5"]
    assert run_main("edp_td3", *flags, "--total-steps", "5") == 0
    card = summary(tmp_path / "run")["task"]
    assert card["dataset"]["id"] == str(data) and len(card["dataset"]["fingerprint"]) == 32
    write_hopper(data, rewards_sign=-1.0)  # the same file, rewards negated
    capsys.readouterr()
    assert run_main("edp_td3", *flags, "--total-steps", "10", "--resume") == 2
    one_line_error(capsys.readouterr().err, "the data differ from those", "dataset fingerprint")


def test_a_last_d4rl_episode_without_an_end_flag_keeps_its_own_return(tmp_path):
    """Returns feed the `returns` reward scale: the last, unflagged episode must not merge into the one before."""
    import h5py
    import numpy as np

    import tasks
    from test_scripts import resolve

    path = write_hopper(tmp_path / "hopper.hdf5")
    with h5py.File(path, "a") as file:
        timeouts = np.asarray(file["timeouts"])
        timeouts[-1] = False  # the file ends mid-episode
        file["timeouts"][...] = timeouts
        rewards = np.asarray(file["rewards"], dtype=np.float64)
    data = tasks.load_hdf5(tasks.TASKS["hopper-medium"], resolve("edp_td3", "hopper-medium", dataset_path=str(path)))
    np.testing.assert_allclose(data.episode_returns, [rewards[:30].sum(), rewards[30:60].sum(), rewards[60:].sum()],
                               rtol=1e-6)


def test_a_fifo_in_place_of_the_data_is_refused_at_once(tmp_path, capsys):
    fifo = tmp_path / "hopper.hdf5"
    os.mkfifo(fifo)
    start = time.time()
    assert run_main("edp_td3", "--env", "hopper-medium", "--dataset-path", str(fifo), "--run-dir",
                    str(tmp_path / "run"), *TINY) == 2
    one_line_error(capsys.readouterr().err, "is not a regular file")
    assert time.time() - start < 30


def test_absurd_observations_are_named_not_left_to_become_a_nan_loss(tmp_path, capsys):
    import h5py

    path = write_hopper(tmp_path / "hopper.hdf5")
    with h5py.File(path, "a") as file:
        file["observations"][7, 2] = 1e30
    assert run_main("edp_td3", "--env", "hopper-medium", "--dataset-path", str(path), "--run-dir",
                    str(tmp_path / "run"), *TINY) == 2
    one_line_error(capsys.readouterr().err, "observations holds values beyond +-1e+09 (row 7: 1e+30)")


def test_actions_outside_the_envs_bounds_are_said(tmp_path, capsys):
    import h5py

    path = write_hopper(tmp_path / "hopper.hdf5")
    with h5py.File(path, "a") as file:
        file["actions"][3] = [3.0, 0.0, 0.0]  # Hopper's bounds are +-1
    assert run_main("edp_td3", "--env", "hopper-medium", "--dataset-path", str(path), "--run-dir",
                    str(tmp_path / "run"), *TINY, "--total-steps", "2", "--eval-every", "2", "--eval-episodes", "1",
                    "--eval-max-steps", "3") == 0
    assert "1.1% of the dataset's actions lie outside the evaluation env's bounds (up to 3 times" in capsys.readouterr().err


@pytest.mark.parametrize("low, high", [(1.0, 1.0), (float("nan"), 1.0), ("zero", 1.0)])
def test_reference_scores_that_cannot_score_are_refused_when_loaded(low, high, datasets, tmp_path, capsys):
    import minari
    from minari.storage import get_dataset_path

    copy = "edp/pendulum-badref-v0"
    import shutil

    shutil.copytree(get_dataset_path(datasets["pendulum"]), get_dataset_path(copy))
    try:
        metadata_path = os.path.join(get_dataset_path(copy), "data", "metadata.json")
        metadata = json.loads(open(metadata_path).read())
        metadata |= dict(dataset_id=copy, ref_min_score=low, ref_max_score=high)
        with open(metadata_path, "w") as file:
            file.write(json.dumps(metadata).replace("NaN", "NaN"))
        assert run_main("edp_td3", "--env", copy, "--run-dir", str(tmp_path / "run"), *TINY) == 2
        one_line_error(capsys.readouterr().err, "reference scores", "two different finite numbers")
        assert not (tmp_path / "run").exists()
    finally:
        shutil.rmtree(get_dataset_path(copy))
        assert copy not in minari.list_local_datasets()


@pytest.mark.parametrize("damage, message", [
    (lambda c: c["agent"]["critic_optimizer"].pop("state"), "does not fit this configuration"),
    (lambda c: c["agent"]["policy"].__setitem__(next(iter(c["agent"]["policy"])), torch.zeros(3, 3)),
     "does not fit this configuration"),
    (lambda c: c["config"].__setitem__("eval_episodes", "ten"), "values of the wrong type: --eval-episodes = 'ten'"),
    (lambda c: c["statistics"]["observation_mean"].fill_(float("nan")), "statistics hold NaN or inf"),
])
def test_a_checkpoint_of_data_that_does_not_fit_is_one_line(damage, message, datasets, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert tiny_run(datasets["pendulum"], run_dir, steps=10) == 0
    checkpoint = torch.load(run_dir / "checkpoint_last.pt", weights_only=True)
    damage(checkpoint)
    torch.save(checkpoint, run_dir / "checkpoint_last.pt")
    capsys.readouterr()
    assert run_main("edp_td3", "--eval-only", "--run-dir", str(run_dir)) == 2
    one_line_error(capsys.readouterr().err, message)


def test_a_stop_during_a_very_long_evaluation_ends_the_run_within_seconds(datasets, tmp_path):
    """A time limit of a million steps: the stop is honoured inside the evaluation, the last good checkpoint stays."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "edp_td3.py", "--env", datasets["pendulum"], "--total-steps", "100000", "--compile", "off",
               "--eval-every", "5", "--run-dir", str(run_dir), *TINY, "--eval-max-steps", "1000000", "--eval-episodes", "1"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:  # the task card is printed once the data is loaded: training starts next
        if line.startswith("task:"):
            break
    time.sleep(8)  # 5 steps, then the evaluation of a million steps
    start = time.time()
    returncode, stderr = stop(process)
    assert returncode == 130 and time.time() - start < 10, stderr
    checkpoint = torch.load(run_dir / "checkpoint_last.pt", weights_only=True)
    assert checkpoint["agent"]["step"] >= 5 and checkpoint["evaluations"] == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_during_start_up_is_one_line_and_leaves_nothing(datasets, tmp_path, signum):
    run_dir = tmp_path / "run"
    command = [sys.executable, "edp_td3.py", "--env", datasets["pendulum"], "--run-dir", str(run_dir), *TINY]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:  # the configuration is printed before the data are read
        if line.startswith("edp_td3 configuration"):
            break
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == "stopped during start-up; no checkpoint was written"
    assert not run_dir.exists()


# -- make_demo_dataset.py never destroys what it did not make ------------------------------------------------
def make_demo(*flags, cwd=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, "make_demo_dataset.py"), *flags], capture_output=True,
                          text=True, cwd=cwd or ROOT, timeout=300)


def test_a_replica_never_replaces_a_dataset_it_did_not_make(datasets, tmp_path):
    """A real download under D4RL/pen/human-v2 (here: a copy of another dataset, by another author) stays."""
    import shutil

    from minari.storage import get_dataset_path

    folder = tmp_path / "minari"
    target = folder / "D4RL" / "pen" / "human-v2"
    shutil.copytree(get_dataset_path(datasets["pendulum"]), target)
    metadata_path = target / "data" / "metadata.json"
    metadata = json.loads(metadata_path.read_text()) | dict(dataset_id="D4RL/pen/human-v2", author=["Farama"])
    metadata_path.write_text(json.dumps(metadata))
    before = {path: os.path.getmtime(path) for path in target.rglob("*")}
    process = subprocess.run([sys.executable, os.path.join(ROOT, "make_demo_dataset.py"), "pen-human", "--episodes", "1",
                              "--max-steps", "5"], capture_output=True, text=True, cwd=ROOT, timeout=300,
                             env=os.environ | dict(MINARI_DATASETS_PATH=str(folder)))
    assert process.returncode == 2
    one_line_error(process.stderr, "did not make (a real download?)")
    assert {path: os.path.getmtime(path) for path in target.rglob("*")} == before


def test_an_existing_hdf5_file_is_replaced_only_with_overwrite(tmp_path):
    path = tmp_path / "hopper.hdf5"
    path.write_text("the user's file")
    process = make_demo("hopper", "--path", str(path), "--episodes", "1", "--max-steps", "5")
    assert process.returncode == 2 and path.read_text() == "the user's file"
    one_line_error(process.stderr, "exists; pass --overwrite")
    assert make_demo("hopper", "--path", str(path), "--episodes", "1", "--max-steps", "5", "--overwrite").returncode == 0


@pytest.mark.parametrize("flags", [["--episodes", "-1"], ["--episodes", "0"], ["--max-steps", "0"]])
def test_impossible_dataset_sizes_are_one_line(flags, tmp_path):
    process = make_demo("pendulum", *flags, cwd=tmp_path)
    assert process.returncode == 2
    one_line_error(process.stderr, "--episodes and --max-steps must be at least 1")


def test_a_dataset_whose_spaces_only_have_the_right_sizes_is_said(datasets, tmp_path, capsys):
    """The dataset records its spaces; an evaluation env whose spaces merely have the same sizes is named."""
    import shutil

    from minari.storage import get_dataset_path

    copy = "edp/pendulum-otherspace-v0"
    shutil.copytree(get_dataset_path(datasets["pendulum"]), get_dataset_path(copy))
    try:
        metadata_path = os.path.join(get_dataset_path(copy), "data", "metadata.json")
        metadata = json.loads(open(metadata_path).read())
        metadata |= dict(dataset_id=copy, action_space=json.dumps(dict(type="Box", dtype="float32", shape=[1], low=[-1.0],
                                                                       high=[1.0])))
        with open(metadata_path, "w") as file:
            json.dump(metadata, file)
        assert tiny_run(copy, tmp_path / "run", steps=2) == 0
        error = capsys.readouterr().err
        assert "warning: the dataset records the action space Box(-1.0, 1.0, (1,), float32); the evaluation env" \
               " Pendulum-v1 has Box(-2.0, 2.0, (1,), float32)" in error
        assert "observation space" not in error
    finally:
        shutil.rmtree(get_dataset_path(copy))


def test_resume_of_a_checkpoint_without_a_record_of_its_data_is_one_line(datasets, tmp_path, capsys):
    """Checkpoints of earlier versions hold no task card: the data cannot be checked, so the resume is refused."""
    run_dir = tmp_path / "run"
    assert tiny_run(datasets["pendulum"], run_dir, steps=10) == 0
    checkpoint = torch.load(run_dir / "checkpoint_last.pt", weights_only=True)
    del checkpoint["task"]
    torch.save(checkpoint, run_dir / "checkpoint_last.pt")
    capsys.readouterr()
    assert tiny_run(datasets["pendulum"], run_dir, "--resume", steps=20) == 2
    one_line_error(capsys.readouterr().err, "kept no record of its data")
