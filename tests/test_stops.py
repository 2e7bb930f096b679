"""A stop at any moment costs nothing (issue 28): an evaluation cut short by a stop is redone on resume, a save cut
short is finished on resume, a sweep stops like a run, and nothing is deleted before its replacement exists."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import tyro

import evaluation
import runs
from test_scripts import ROOT, TINY, run_main, strip_timing, summary

QUICK = [*TINY, "--threads", "1", "--compile", "off"]


def td3(env, run_dir, steps, *flags):
    return run_main("edp_td3", "--env", env, "--total-steps", str(steps), "--eval-every", "10", "--run-dir", str(run_dir),
                    *QUICK, *flags)


def stop_during_evaluations(monkeypatch, *steps):
    """SIGTERM to this process as the evaluation of each step in `steps` begins (a step listed twice: its first two
    evaluations), as a user's stop would arrive."""
    call, left = evaluation.Evaluator.__call__, list(steps)

    def stopped(self, act, step=0, name="eval", stop=lambda: False):
        if step in left:
            left.remove(step)
            os.kill(os.getpid(), signal.SIGTERM)
        return call(self, act, step, name, stop)

    monkeypatch.setattr(evaluation.Evaluator, "__call__", stopped)


def same_files(run_dir, straight_dir):
    assert strip_timing(summary(run_dir)["evaluations"]) == strip_timing(summary(straight_dir)["evaluations"])
    for key in ("rat", "oms", "final_step"):
        assert summary(run_dir)[key] == summary(straight_dir)[key]
    best, straight = (torch.load(folder / "checkpoint_best.pt", weights_only=True) for folder in (run_dir, straight_dir))
    assert best["agent"]["step"] == straight["agent"]["step"]
    for name, weight in best["agent"]["policy"].items():
        assert torch.equal(weight, straight["agent"]["policy"][name]), name


@pytest.fixture(scope="module")
def straight(datasets, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    assert td3(datasets["pendulum"], run_dir, 30) == 0
    return run_dir


# -- 1. evaluations are part of their step ------------------------------------------------------------------
@pytest.mark.parametrize("stops", [(20,), (30,), (20, 20)], ids=["middle", "final", "again-while-redone"])
def test_a_stop_during_an_evaluation_is_redone_on_resume(stops, straight, datasets, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    stop_during_evaluations(monkeypatch, *stops)
    assert td3(datasets["pendulum"], run_dir, 30) == 130
    checkpoint = torch.load(run_dir / "checkpoint_last.pt", weights_only=True)
    assert checkpoint["agent"]["step"] == checkpoint["pending_evaluation"] == stops[0]
    assert summary(run_dir)["final_step"] == stops[0] - 10
    for _ in stops[1:]:  # stopped again while the evaluation is redone: still pending, nothing trained
        assert td3(datasets["pendulum"], run_dir, 30, "--resume") == 130
        checkpoint = torch.load(run_dir / "checkpoint_last.pt", weights_only=True)
        assert checkpoint["agent"]["step"] == checkpoint["pending_evaluation"] == stops[0]
    assert td3(datasets["pendulum"], run_dir, 30, "--resume") == 0
    same_files(run_dir, straight)
    assert torch.load(run_dir / "checkpoint_last.pt", weights_only=True)["pending_evaluation"] is None


@pytest.mark.parametrize("script", ["edp_crr", "edp_iql"])
def test_crr_and_iql_redo_an_evaluation_cut_short_too(script, datasets, tmp_path, monkeypatch):
    flags = ["--env", datasets["pendulum"], "--total-steps", "20", "--eval-every", "10", *QUICK]
    assert run_main(script, *flags, "--run-dir", str(tmp_path / "straight")) == 0
    stop_during_evaluations(monkeypatch, 20)
    assert run_main(script, *flags, "--run-dir", str(tmp_path / "run")) == 130
    assert run_main(script, *flags, "--run-dir", str(tmp_path / "run"), "--resume") == 0
    same_files(tmp_path / "run", tmp_path / "straight")


@pytest.mark.parametrize("failing", ["summary.json", "checkpoint_best.pt"])
def test_a_full_disk_at_the_last_save_is_finished_on_resume(failing, straight, datasets, tmp_path, monkeypatch):
    """The last evaluation's checkpoint_last.pt is written, then the disk is full: resume writes what is missing.
    (A run of one evaluation for checkpoint_best.pt: its only evaluation is its best.)"""
    write, run_dir, steps = runs.atomic_write, tmp_path / "run", 30 if failing == "summary.json" else 10
    if steps != 30:
        straight = tmp_path / "straight"
        assert td3(datasets["pendulum"], straight, steps) == 0

    def full_disk(path, content):
        final = content.get("final_step") == steps if path.endswith(".json") else content["agent"]["step"] == steps
        if final and path.endswith(failing):
            raise runs.SaveFailed(f"cannot write {path} (No space left on device)")
        return write(path, content)

    monkeypatch.setattr(runs, "atomic_write", full_disk)
    assert td3(datasets["pendulum"], run_dir, steps) == 1
    monkeypatch.setattr(runs, "atomic_write", write)
    assert torch.load(run_dir / "checkpoint_last.pt", weights_only=True)["agent"]["step"] == steps
    assert not (run_dir / "summary.json").exists() if steps == 10 else summary(run_dir)["final_step"] == 20
    assert td3(datasets["pendulum"], run_dir, steps, "--resume") == 0
    same_files(run_dir, straight)


@pytest.mark.parametrize("damage, message", [
    (lambda c: c.__setitem__("evaluations", {"step": 10}), "its evaluations are not a list of evaluations"),
    (lambda c: c["evaluations"].append("ten"), "its evaluations are not a list of evaluations"),
    (lambda c: c.__setitem__("pending_evaluation", 5), "its pending evaluation 5 is not the checkpoint's step 10"),
])
def test_a_checkpoint_with_a_damaged_evaluation_history_is_refused_before_training(damage, message, datasets, tmp_path,
                                                                                    capsys):
    run_dir = tmp_path / "run"
    assert td3(datasets["pendulum"], run_dir, 10) == 0
    checkpoint = torch.load(run_dir / "checkpoint_last.pt", weights_only=True)
    damage(checkpoint)
    torch.save(checkpoint, run_dir / "checkpoint_last.pt")
    capsys.readouterr()
    assert td3(datasets["pendulum"], run_dir, 20, "--resume") == 2
    output = capsys.readouterr()
    assert output.err.startswith("error:") and message in output.err and output.err.count("\n") == 1, output.err
    assert "task:" not in output.out  # before the data were read


# -- 2. a sweep stops like a run ------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_stopped_sweep_saves_every_running_run_and_continues_them(how, datasets, tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group) or SIGTERM to reproduce.py: each running run saves its
    checkpoint, the sweep exits 130 with one line, and the same command continues them."""
    out_dir = tmp_path / "sweep"
    command = [sys.executable, "reproduce.py", "--tasks", datasets["pendulum"], "--algos", "td3", "--seeds", "0", "1",
               "--out-dir", str(out_dir), "--script-args=--total-steps 100000 --eval-every 5 --compile off " + " ".join(TINY)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    folders = [out_dir / "runs" / "td3" / datasets["pendulum"].replace("/", "-") / f"seed{seed}" for seed in (0, 1)]
    deadline = time.time() + 300
    while not all((folder / "summary.json").exists() for folder in folders):
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.5)
    if how == "ctrl-c":
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("stopped by signal"), stderr
    for folder in folders:
        log = (folder / "reproduce.log").read_text()
        assert "stopped by signal 15" in log and "checkpoint saved" in log, log[-2000:]
        checkpoint = torch.load(folder / "checkpoint_last.pt", weights_only=True)
        assert checkpoint["agent"]["step"] >= summary(folder)["final_step"] >= 5
        assert not (folder / "done.json").exists()
    assert not list(out_dir.glob(".stop-*"))
    rerun = subprocess.run(command + ["--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0 and rerun.stdout.count("resume ") == 2, rerun.stdout + rerun.stderr


@pytest.mark.parametrize("flags", [["--tasks", "edp/pendulum-mixed-v0", "edp/pendulum-mixed-v0"],
                                   ["--domains", "adroit", "adroit"]])
def test_a_sweep_refuses_repeated_tasks_and_domains(flags, tmp_path):
    process = subprocess.run([sys.executable, "reproduce.py", *flags, "--out-dir", str(tmp_path), "--dry-run"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert process.returncode == 2 and process.stderr.startswith("error: ") and process.stderr.count("\n") == 1, \
        process.stderr
    assert "must not repeat a value" in process.stderr


# -- 5. every check before any work ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["out-dir-file", "report-only-read-only"])
def test_a_sweep_refuses_an_out_dir_it_cannot_write(case, tmp_path):
    if case == "out-dir-file":
        (tmp_path / "file").write_text("")
        out_dir, flags, message = tmp_path / "file", [], f"error: --out-dir {tmp_path / 'file'} is a file, not a folder"
    else:  # /proc takes no new files, whoever asks (a chmod'ed folder would not stop root)
        out_dir, flags, message = "/proc", ["--report-only"], "error: cannot write to --out-dir /proc"
    process = subprocess.run([sys.executable, "reproduce.py", "--domains", "adroit", "--out-dir", str(out_dir), *flags],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert process.returncode == 2 and process.stderr.startswith(message) and process.stderr.count("\n") == 1, \
        process.stderr


# -- 3. nothing deleted before its replacement exists ---------------------------------------------------------
def make_demo(folder, *flags, env=None):
    command = [sys.executable, os.path.join(ROOT, "make_demo_dataset.py"), *flags]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env if env is not None else os.environ | dict(MINARI_DATASETS_PATH=str(folder)))


def episodes_of(folder, dataset_id):
    """The number of episodes of a dataset in `folder`, read in a process of its own."""
    code = f"import minari; print(minari.load_dataset({dataset_id!r}).total_episodes)"
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             env=os.environ | dict(MINARI_DATASETS_PATH=str(folder)))
    assert process.returncode == 0, process.stderr
    return int(process.stdout)


@pytest.mark.parametrize("kind, dataset_id, flags", [("pendulum", "edp/pendulum-mixed-v0", ["--episodes", "2"]),
                                                     ("pen-human", "D4RL/pen/human-v2", ["--episodes", "2",
                                                                                         "--max-steps", "5"])])
def test_a_dataset_is_replaced_only_with_overwrite_and_a_stop_leaves_the_old_one(kind, dataset_id, flags, tmp_path):
    folder = tmp_path / "minari"
    process = make_demo(folder, kind, *flags)
    assert process.wait(timeout=300) == 0, process.stderr.read()
    process = make_demo(folder, kind, *flags)  # again, without --overwrite: refused, kept
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 2 and stderr.startswith(f"error: the dataset {dataset_id} exists") \
        and stderr.count("\n") == 1, stderr
    # --overwrite with many episodes, stopped while it collects: the old dataset is as it was
    process = make_demo(folder, kind, "--overwrite", "--episodes", "100000")
    time.sleep(15)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr
    assert episodes_of(folder, dataset_id) == 2
    assert sorted(os.listdir(folder)) == sorted(["edp"] if kind == "pendulum" else ["D4RL"])  # no temporary folder
    process = make_demo(folder, kind, "--overwrite", "--episodes", "3", *flags[2:])
    assert process.wait(timeout=300) == 0, process.stderr.read()
    assert episodes_of(folder, dataset_id) == 3
    assert [name for name in os.listdir(folder) if name.startswith(".")] == []


@pytest.mark.parametrize("case", ["missing-folder", "folder-with-overwrite", "minari-path-a-file"])
def test_make_demo_dataset_refuses_an_unwritable_destination_before_collecting(case, tmp_path):
    folder, flags = tmp_path / "minari", []
    if case == "missing-folder":
        flags, message = ["hopper", "--path", str(tmp_path / "missing" / "h.hdf5")], "does not exist"
    elif case == "folder-with-overwrite":
        flags, message = ["hopper", "--path", str(tmp_path), "--overwrite"], "is a folder"
    else:
        folder.write_text("")
        flags, message = ["pendulum"], "is a file, not a folder"
    process = make_demo(folder, *flags, "--episodes", "1")
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2 and stderr.startswith("error:") and message in stderr and stderr.count("\n") == 1, \
        stderr


# -- 4. no wait on a worker that died; stops during compilation --------------------------------------------------
def test_the_side_by_side_figure_does_not_wait_for_a_worker_that_died():
    import benchmark_speed

    start = time.time()
    with pytest.raises(benchmark_speed.WorkerDied, match="exit code 1"):
        benchmark_speed.side_by_side(0.5, threads=-1)  # torch.set_num_threads(-1) raises in each worker
    assert time.time() - start < 120


@pytest.mark.parametrize("flags, message", [
    (["--threads", "-1"], "--threads must be 0 (adaptive) or a thread count >= 1, got -1"),
    (["--json", "{tmp}/missing/x.json"], "the folder {tmp}/missing does not exist"),
    (["--plot", "{tmp}/x.xyz"], "matplotlib writes no .xyz files"),
    (["--plot", "{tmp}"], "is a folder"),
])
def test_benchmark_flags_are_checked_before_measuring(flags, message, tmp_path, capsys):
    import benchmark_speed

    flags = [flag.format(tmp=tmp_path) for flag in flags]
    start = time.time()
    with pytest.raises(SystemExit) as stop:
        benchmark_speed.main(tyro.cli(benchmark_speed.Args, args=["--quick", *flags]))
    error = capsys.readouterr().err
    assert stop.value.code == 2 and error.startswith("error:") and error.count("\n") == 1, error
    assert message.format(tmp=tmp_path) in error and time.time() - start < 10  # before any measurement


def test_a_stop_during_compilation_ends_the_run_within_seconds_and_resumes_as_the_straight_run(straight, datasets,
                                                                                               tmp_path):
    """--compile on takes a minute or more to compile here; SIGTERM during it: exit 130 within 10 s with a checkpoint
    of the agent as it was (nothing of the compile's trial step kept), resumed (eager) to the straight run's files."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "edp_td3.py", "--env", datasets["pendulum"], "--total-steps", "30", "--eval-every", "10",
               "--run-dir", str(run_dir), *TINY, "--threads", "1", "--compile", "on"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=os.environ | dict(TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "cache")))  # a cold compile
    for line in process.stdout:
        if line.startswith("compiling"):
            break
    time.sleep(5)
    start = time.time()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and time.time() - start < 10 and "Traceback" not in stderr, stderr
    assert "stopped by signal 15 at step 0" in stderr
    assert torch.load(run_dir / "checkpoint_last.pt", weights_only=True)["agent"]["step"] == 0
    assert td3(datasets["pendulum"], run_dir, 30, "--resume") == 0
    same_files(run_dir, straight)


# -- 5. every check before any work: bad data and sizes ---------------------------------------------------------
def one_line_refusal(capsys, *fragments):
    output = capsys.readouterr()
    lines = [line for line in output.err.splitlines() if not line.startswith("warning:")]  # e.g. a replica's size
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in output.err, output.err
    assert all(fragment in lines[0] for fragment in fragments), output.err
    assert "task:" not in output.out  # refused before the data were accepted and training began
    return output


@pytest.mark.parametrize("case, message", [
    ("scalar-observations", "observations is a single value"),
    ("bool-actions", "actions holds bool, not real numbers"),
    ("complex-rewards", "rewards holds complex64, not real numbers"),
    ("one-episode-returns", "--reward-transform returns divides the rewards by the range of the episode returns"),
])
def test_bad_d4rl_data_is_one_line_before_training(case, message, tmp_path, capsys):
    import h5py
    import numpy as np

    from test_scripts import write_hopper_hdf5

    path = str(tmp_path / "hopper.hdf5")
    write_hopper_hdf5(path, lengths=(90,) if case == "one-episode-returns" else (30, 30, 30))
    with h5py.File(path, "a") as file:
        if case == "scalar-observations":
            del file["observations"]
            file["observations"] = np.float32(1.0)
        elif case == "bool-actions":
            actions = np.asarray(file["actions"]) > 0
            del file["actions"]
            file["actions"] = actions
        elif case == "complex-rewards":
            rewards = np.asarray(file["rewards"]).astype(np.complex64) * (1 + 1j)
            del file["rewards"]
            file["rewards"] = rewards
    flags = ["--reward-transform", "returns"] if case == "one-episode-returns" else []
    assert run_main("edp_td3", "--env", "hopper-medium", "--dataset-path", path, "--total-steps", "10",
                    "--run-dir", str(tmp_path / "run"), *QUICK, *flags) == 2
    one_line_refusal(capsys, message)
    assert not (tmp_path / "run").exists()


def test_minari_episodes_are_checked_one_by_one(datasets, tmp_path, capsys):
    """Episode 0 one row short, episode 1 one row long: the totals agree, the transitions would be shifted by one."""
    import json
    import shutil

    import h5py
    import numpy as np
    from minari.storage import get_dataset_path

    shifted = "edp/pendulum-shifted-v0"
    shutil.copytree(get_dataset_path(datasets["pendulum"]), get_dataset_path(shifted))
    try:
        metadata_path = os.path.join(get_dataset_path(shifted), "data", "metadata.json")
        metadata = json.loads(open(metadata_path).read()) | dict(dataset_id=shifted)
        with open(metadata_path, "w") as file:
            json.dump(metadata, file)
        with h5py.File(os.path.join(get_dataset_path(shifted), "data", "main_data.hdf5"), "a") as file:
            for key in ("actions", "rewards", "terminations", "truncations"):
                short, long = np.asarray(file[f"episode_0/{key}"])[:-1], np.asarray(file[f"episode_1/{key}"])
                del file[f"episode_0/{key}"], file[f"episode_1/{key}"]
                file[f"episode_0/{key}"], file[f"episode_1/{key}"] = short, np.concatenate([long, long[-1:]])
        capsys.readouterr()
        assert td3(shifted, tmp_path / "run", 10) == 2
        one_line_refusal(capsys, "episode 0 has 201 observations and 199 actions")
    finally:
        shutil.rmtree(get_dataset_path(shifted))


def test_an_eas_batch_that_cannot_fit_is_refused_before_the_data_are_read(datasets, tmp_path, capsys):
    assert td3(datasets["pendulum"], tmp_path / "run", 10, "--eval-episodes", "2000", "--eas-samples", "10000") == 2
    one_line_refusal(capsys, "--eval-episodes 2000 x --eas-samples 10000 = 20,000,000 actions")


@pytest.mark.parametrize("case", ["a-file", "home-unwritable"])
def test_a_minari_folder_that_cannot_be_used_is_one_line(case, datasets, tmp_path, capsys, monkeypatch):
    if case == "a-file":
        (tmp_path / "file").write_text("")
        monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "file"))
        message = f"the Minari datasets folder {tmp_path / 'file'} (MINARI_DATASETS_PATH) is a file"
    else:  # /proc takes no new folders, whoever asks
        monkeypatch.delenv("MINARI_DATASETS_PATH")
        monkeypatch.setenv("HOME", "/proc/no-home")
        message = "the Minari datasets folder /proc/no-home/.minari/datasets (Minari's default folder) cannot be made"
    assert td3("D4RL/pen/human-v2", tmp_path / "run", 10) == 2
    one_line_refusal(capsys, message)
    process = make_demo(tmp_path / "file" if case == "a-file" else "", "pendulum", "--episodes", "1",
                        env=os.environ | ({"MINARI_DATASETS_PATH": str(tmp_path / "file")} if case == "a-file" else {}))
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2 and stderr.startswith("error: ") and stderr.count("\n") == 1, stderr


# -- 6. every typed flag applied or refused ---------------------------------------------------------------------
def test_flags_that_would_do_nothing_are_refused(datasets, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert td3(datasets["pendulum"], run_dir, 10) == 0
    capsys.readouterr()
    assert td3(datasets["pendulum"], tmp_path / "other", 10, "--checkpoint", str(run_dir / "checkpoint_last.pt")) == 2
    one_line_refusal(capsys, "--checkpoint names the checkpoint --eval-only evaluates")
    assert run_main("edp_td3", "--eval-only", "--run-dir", str(run_dir), "--env", "hopper-medium", "--preset",
                    "released") == 2
    one_line_refusal(capsys, "--env, --preset: --eval-only evaluates a checkpoint with its run's own configuration")
    assert td3("D4RL/kitchen/complete-v2", tmp_path / "kitchen", 10, "--terminals", "d4rl") == 2
    one_line_refusal(capsys, "--terminals d4rl applies D4RL's rules", "give --env kitchen-complete")
    assert td3(datasets["pendulum"], run_dir, 20, "--resume", "--no-torch-deterministic") == 2
    one_line_refusal(capsys, "--torch-deterministic: saved True, given False")


def test_eval_only_never_replaces_an_earlier_evaluations_file(datasets, tmp_path):
    import json

    run_dir = tmp_path / "run"
    assert td3(datasets["pendulum"], run_dir, 10) == 0
    assert run_main("edp_td3", "--eval-only", "--run-dir", str(run_dir), "--eval-episodes", "1") == 0
    assert run_main("edp_td3", "--eval-only", "--run-dir", str(run_dir), "--eval-episodes", "2") == 0
    first, second = (json.loads((run_dir / name).read_text()) for name in ("eval_checkpoint_last.json",
                                                                          "eval_checkpoint_last-2.json"))
    assert first["overrides"] == dict(eval_episodes=1) and second["overrides"] == dict(eval_episodes=2)


def test_a_horizon_other_than_d4rls_is_said(replicas, tmp_path, capsys):
    assert td3("pen-human", tmp_path / "run", 10, "--eval-max-steps", "10") == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "--eval-max-steps" in line]
    assert len(warnings) == 1 and "D4RL evaluates pen-human over 100 steps" in warnings[0], warnings


def test_a_sweep_marks_a_run_done_only_once_its_last_evaluation_is_in_its_summary(tmp_path):
    """A run that exits 0 without its last evaluation in summary.json (e.g. a resume that skipped it) is not done."""
    import json

    import reproduce

    run_dir = tmp_path / "run"
    result = reproduce.execute([sys.executable, "-c", "pass"], str(run_dir), dict(os.environ), 1)
    assert result["returncode"] == "0 without its last evaluation" and not (run_dir / "done.json").exists()
    summary_json = dict(final_step=20, config=dict(total_steps=30), evaluations=[dict(step=10), dict(step=20)])
    (run_dir / "summary.json").write_text(json.dumps(summary_json))
    assert reproduce.execute([sys.executable, "-c", "pass"], str(run_dir), dict(os.environ), 1)["returncode"] != 0
    (run_dir / "summary.json").write_text(json.dumps(summary_json | dict(
        final_step=30, evaluations=[dict(step=10), dict(step=20), dict(step=30)])))
    assert reproduce.execute([sys.executable, "-c", "pass"], str(run_dir), dict(os.environ), 1)["returncode"] == 0
    assert (run_dir / "done.json").exists()
