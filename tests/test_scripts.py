"""End-to-end runs of the algorithm scripts on locally made datasets, resume, and bad input."""

import importlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# every edp_*.py beside the tests' folder, and the copies named in EDP_SCRIPTS (module names there, e.g.
# `EDP_SCRIPTS=my_awr pytest`): a new algorithm is smoke-tested without an edit here
SCRIPTS = sorted(name[:-3] for name in os.listdir(ROOT) if re.fullmatch(r"edp_\w+\.py", name)) + \
    os.environ.get("EDP_SCRIPTS", "").split()
# tiny but complete runs: every code path, seconds each
TINY = ["--num-diffusion-steps", "50", "--dpm-steps", "3", "--batch-size", "32", "--eas-samples", "2",
        "--eval-episodes", "2", "--wandb-mode", "disabled", "--log-every", "5"]


def run_main(script, *flags):
    return importlib.import_module(script).main([*flags])


def agent_class(script):
    """The script's algorithm class: EDPTD3, EDPCRR or EDPIQL."""
    module = importlib.import_module(script)
    return getattr(module, "EDP" + script.split("_")[1].upper())


def resolve(script, task, **flags):
    """The script's Args with the flags given, filled from its presets for the task."""
    from flags import resolve_config
    from tasks import find_task

    module = importlib.import_module(script)
    args = module.Args(env=task, **flags)
    return resolve_config(args, find_task(task, args.dataset_path), module.PAPER, module.RELEASED)


def train(script, argv):
    """The script's training loop on a parsed and resolved command line; returns the trained agent."""
    import tyro

    module = importlib.import_module(script)
    args = tyro.cli(module.Args, args=argv)
    return module.train(resolve(script, args.env, **{key: value for key, value in vars(args).items() if key != "env"}))["agent"]


def summary(run_dir):
    with open(os.path.join(run_dir, "summary.json")) as file:
        return json.load(file)


def run_and_check(script, env, run_dir, total_steps, eval_every, *flags):
    """A tiny run; its summary.json must hold every evaluation, RAT = their mean (at most 10), OMS = best."""
    assert run_main(script, "--env", env, "--total-steps", str(total_steps), "--eval-every", str(eval_every),
                    "--run-dir", str(run_dir), *flags, *TINY) == 0
    result = summary(run_dir)
    assert result["env"] == env and result["algo"] == script and result["final_step"] == total_steps
    scores = [evaluation["normalized_score"] for evaluation in result["evaluations"]]
    assert [evaluation["step"] for evaluation in result["evaluations"]] == list(range(eval_every, total_steps + 1, eval_every))
    # these runs evaluate at most 10 times, so RAT is the mean of all their scores; the window of 10 itself is
    # checked on 12 typed scores in tests/test_scoring.py
    assert len(scores) <= 10 and result["rat"] == pytest.approx(sum(scores) / len(scores))
    assert result["oms"] == pytest.approx(max(scores))
    assert result["config"]["total_steps"] == total_steps
    return result


def write_hopper_hdf5(path, rewards=None, observation_dim=11, lengths=(30, 30, 30), drop=None):
    """A small file in D4RL's format for Hopper (11-d observations, 3-d actions)."""
    rng = np.random.default_rng(0)
    n = sum(lengths)
    terminals, timeouts = np.zeros(n, bool), np.zeros(n, bool)
    ends = np.cumsum(lengths) - 1
    terminals[ends[0]] = True  # the first episode falls, the others time out
    timeouts[ends[1:]] = True
    data = dict(observations=rng.normal(size=(n, observation_dim)).astype(np.float32) * 0.1,
                actions=rng.uniform(-1, 1, (n, 3)).astype(np.float32),
                rewards=rng.uniform(0, 3, n).astype(np.float32) if rewards is None else rewards,
                terminals=terminals, timeouts=timeouts)
    with h5py.File(path, "w") as file:
        for key, value in data.items():
            if key != drop:
                file[key] = value
    return path


# -- end to end -----------------------------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
def test_end_to_end_flat_observations(script, datasets, tmp_path):
    run_dir = str(tmp_path / "run")
    result = run_and_check(script, datasets["pendulum"], run_dir, 30, 10)
    assert {"return", "normalized_score", "episode_length"} <= set(result["evaluations"][0])
    assert result["evaluations"][0]["episode_length"] == 200  # Pendulum-v1 episodes
    import minari  # a Minari dataset with reference scores is scored by Minari's own normalisation

    evaluation = result["evaluations"][0]
    expected = 100 * minari.get_normalized_score(minari.load_dataset(datasets["pendulum"]), np.array(evaluation["return"]))
    assert evaluation["normalized_score"] == pytest.approx(float(expected))
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        checkpoint = torch.load(os.path.join(run_dir, name), weights_only=True)
        assert {"agent", "statistics", "evaluations", "rng", "wandb_id", "config"} <= set(checkpoint)


def test_wandb_offline_logs_to_the_run_dir(datasets, tmp_path):
    run_dir = str(tmp_path / "run")
    flags = [f for f in TINY if f not in ("--wandb-mode", "disabled")]
    assert run_main("edp_td3", "--env", datasets["pendulum"], "--total-steps", "10", "--eval-every", "10",
                    "--run-dir", run_dir, "--wandb-mode", "offline", *flags) == 0
    assert any(name.startswith("offline-run") for name in os.listdir(os.path.join(run_dir, "wandb")))


@pytest.mark.parametrize("script", SCRIPTS)
def test_end_to_end_dict_observations(script, datasets, tmp_path):
    run_dir = str(tmp_path / "run")
    result = run_and_check(script, datasets["pointmaze"], run_dir, 20, 10)
    assert "success_rate" in result["evaluations"][0]
    checkpoint = torch.load(os.path.join(run_dir, "checkpoint_last.pt"), weights_only=True)
    assert checkpoint["statistics"]["observation_mean"].shape == (6,)  # achieved_goal (2) + observation (4)


@pytest.mark.parametrize("script", SCRIPTS)
def test_d4rl_hdf5_file(script, datasets, tmp_path):
    path = write_hopper_hdf5(tmp_path / "hopper.hdf5")
    result = run_and_check(script, "hopper-medium-replay", tmp_path / "run", 10, 10, "--dataset-path", str(path))
    evaluation = result["evaluations"][0]
    low, high = -20.272305, 3234.3  # D4RL's hopper reference returns
    assert evaluation["normalized_score"] == pytest.approx(100 * (evaluation["return"] - low) / (high - low))


def test_d4rl_hdf5_transitions_follow_qlearning_dataset(tmp_path):
    import tasks

    path = write_hopper_hdf5(tmp_path / "hopper.hdf5", lengths=(3, 4, 5))
    data = tasks.load_hdf5(tasks.TASKS["hopper-medium"], resolve("edp_td3", "hopper-medium", dataset_path=str(path)))
    # timeouts end episodes 2 and 3 without a next observation: those transitions are dropped
    assert len(data.observations) == 12 - 2
    with h5py.File(path) as file:
        observations = np.asarray(file["observations"])
    np.testing.assert_array_equal(data.next_observations[0], observations[1])
    assert data.dones.sum() == 1 and data.dones[2] == 1  # termination, not timeout, is done
    np.testing.assert_allclose(data.episode_returns.sum(), np.asarray(h5py.File(path)["rewards"]).sum(), rtol=1e-5)


# -- runs that survive ----------------------------------------------------------------------------
def strip_timing(evaluations):
    return [{k: v for k, v in evaluation.items() if k != "eval_seconds"} for evaluation in evaluations]


@pytest.mark.parametrize("script", SCRIPTS)
def test_stop_and_resume_reproduces_the_uninterrupted_run(script, datasets, tmp_path):
    common = ["--env", datasets["pendulum"], "--eval-every", "10", *TINY]
    assert run_main(script, *common, "--total-steps", "30", "--run-dir", str(tmp_path / "full")) == 0
    assert run_main(script, *common, "--total-steps", "10", "--run-dir", str(tmp_path / "part")) == 0
    assert run_main(script, *common, "--total-steps", "30", "--run-dir", str(tmp_path / "part"), "--resume") == 0
    full, resumed = summary(tmp_path / "full"), summary(tmp_path / "part")
    assert resumed["final_step"] == 30 and len(resumed["evaluations"]) == 3
    assert strip_timing(resumed["evaluations"]) == strip_timing(full["evaluations"])


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(datasets, tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "edp_td3.py", "--env", datasets["pendulum"], "--total-steps", "100000", "--compile", "off",
               "--eval-every", "5", "--run-dir", str(run_dir), *TINY]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run_dir / "summary.json").exists() and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "--resume" in stderr
    checkpoint = torch.load(run_dir / "checkpoint_last.pt", weights_only=True)
    stopped_at = checkpoint["agent"]["step"]
    assert stopped_at >= 5
    assert run_main("edp_td3", "--env", datasets["pendulum"], "--total-steps", str(stopped_at + 5), "--eval-every", "5",
                    "--run-dir", str(run_dir), "--resume", *TINY) == 0
    assert summary(run_dir)["final_step"] == stopped_at + 5


def poison_losses_after(monkeypatch, script, step):
    """From gradient step `step` + 1 on, the training loop sees a NaN critic loss (the data stays finite)."""
    update = agent_class(script).update

    def poisoned(self, batch):
        metrics = update(self, batch)
        if int(self.step_count) > step:
            metrics["critic_loss"] = metrics["critic_loss"] * float("nan")
        return metrics

    monkeypatch.setattr(agent_class(script), "update", poisoned)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(datasets, tmp_path, capsys, monkeypatch):
    common = ["--env", datasets["pendulum"], "--eval-every", "10", "--run-dir", str(tmp_path / "run"), *TINY]
    assert run_main("edp_td3", *common, "--total-steps", "10") == 0
    before = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=True)
    capsys.readouterr()
    poison_losses_after(monkeypatch, "edp_td3", 10)
    assert run_main("edp_td3", *common, "--total-steps", "20", "--resume") == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error:") and "NaN or inf at step 11" in error
    assert f"the last good checkpoint is {tmp_path / 'run' / 'checkpoint_last.pt'}" in error
    after = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=True)
    assert after["agent"]["step"] == before["agent"]["step"] == 10
    assert summary(tmp_path / "run")["final_step"] == 10


# -- bad input ------------------------------------------------------------------------------------
def bad_input_cases(tmp_path, datasets):
    garbage = tmp_path / "garbage.hdf5"
    garbage.write_bytes(b"not an hdf5 file")
    short = write_hopper_hdf5(tmp_path / "short.hdf5")
    with h5py.File(short, "a") as file:
        del file["rewards"]
        file["rewards"] = np.zeros(10, np.float32)
    pendulum = ["--env", datasets["pendulum"], *TINY]
    def hopper_file(name, **arrays):  # a D4RL file with some arrays replaced
        path = write_hopper_hdf5(tmp_path / f"{name}.hdf5")
        with h5py.File(path, "a") as file:
            for key, value in arrays.items():
                del file[key]
                file[key] = value
        return ["--env", "hopper-medium", "--dataset-path", str(path)]

    nan_rewards = np.ones(90, np.float32)
    nan_rewards[5] = np.nan
    import shutil

    from minari.storage import get_dataset_path

    def damaged_minari(name, damage):  # a copy of the Pendulum demo dataset, then damaged
        path = get_dataset_path(f"edp/{name}-v0")
        shutil.copytree(get_dataset_path(datasets["pendulum"]), path, dirs_exist_ok=True)
        damage(path / "data")
        return ["--env", f"edp/{name}-v0", *TINY]

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "checkpoint_last.pt").write_bytes(b"half a checkpoint")
    return {
        "unknown task": (["--env", "hoper-medium"], "did you mean hopper-medium"),
        "not on Minari": (["--env", "hopper-medium-replay"], "--dataset-path"),
        # a paper task of which no replica is built (conftest.py REPLICA_BUILDS)
        "not downloaded": (["--env", "antmaze-large-play"], "minari download D4RL/antmaze/large-play-v1"),
        "no such file": (["--env", "hopper-medium", "--dataset-path", str(tmp_path / "none.hdf5")], "no such file"),
        "unreadable": (["--env", "hopper-medium", "--dataset-path", str(garbage)], "cannot read"),
        "inconsistent": (["--env", "hopper-medium", "--dataset-path", str(short)], "rewards has shape (10,)"),
        "rewards (N, 2)": (hopper_file("r2", rewards=np.zeros((90, 2), np.float32)), "rewards has shape (90, 2)"),
        "1-d observations": (hopper_file("o1", observations=np.zeros(90, np.float32)), "observations has shape (90,)"),
        "NaN in data": (hopper_file("nan", rewards=nan_rewards), "rewards holds NaN or inf (row 5)"),
        "text in data": (hopper_file("text", actions=np.array([b"a"] * 90)), "actions holds |S1, not numbers"),
        "all timeouts": (hopper_file("timeouts", timeouts=np.ones(90, bool), terminals=np.zeros(90, bool)),
                         "holds no transitions"),
        "no main_data.hdf5": (damaged_minari("nodata", lambda data: (data / "main_data.hdf5").unlink()), "damaged"),
        "corrupt metadata.json": (damaged_minari("nometa", lambda data: (data / "metadata.json").write_text("{")),
                                  "damaged"),
        "missing keys": (["--env", "hopper-medium", "--dataset-path",
                          str(write_hopper_hdf5(tmp_path / "nokey.hdf5", drop="timeouts"))], "lacks timeouts"),
        "wrong spaces": (["--env", "walker2d-medium", "--dataset-path", str(write_hopper_hdf5(tmp_path / "w.hdf5"))],
                         "do not match"),
        "batch size": ([*pendulum, "--batch-size", "0"], "--batch-size must be at least 1"),
        "gamma": ([*pendulum, "--gamma", "1.5"], "gamma"),
        "schedule": ([*pendulum, "--num-diffusion-steps", "10"], "beta outside"),
        "no cuda": ([*pendulum, "--device", "cuda"], "no CUDA device"),
        "resume without dir": ([*pendulum, "--resume"], "--resume needs --run-dir"),
        "resume without checkpoint": ([*pendulum, "--resume", "--run-dir", str(tmp_path)], "no checkpoint"),
        "resume from a broken checkpoint": ([*pendulum, "--resume", "--run-dir", str(broken)], "not a usable checkpoint"),
    }


CASES = ["unknown task", "not on Minari", "not downloaded", "no such file", "unreadable", "inconsistent",
         "rewards (N, 2)", "1-d observations", "NaN in data", "text in data", "all timeouts", "no main_data.hdf5",
         "corrupt metadata.json",
         "missing keys", "wrong spaces", "batch size", "gamma", "schedule", "no cuda", "resume without dir",
         "resume without checkpoint", "resume from a broken checkpoint"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_exit_code_2(case, datasets, tmp_path, capsys, monkeypatch):
    if case == "no cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    flags, message = bad_input_cases(tmp_path, datasets)[case]
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # where the default runs/<name> folder would go
    assert run_main("edp_td3", *flags) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("error:") and message in error, error
    leftovers = [path for path in (tmp_path / "cwd").rglob("*") if path.name != "runs"]  # runs/ may stay, empty
    assert not leftovers  # a refused run leaves no (empty) run folder behind


def test_bad_input_from_the_command_line_has_no_traceback(datasets, tmp_path):
    process = subprocess.run([sys.executable, "edp_td3.py", "--env", "walker2d-meduim"], cwd=ROOT,
                             capture_output=True, text=True)
    assert process.returncode == 2
    assert process.stderr.strip() == ("error: unknown task 'walker2d-meduim' (give a paper task or a Minari dataset id"
                                      " such as D4RL/pen/human-v2); did you mean walker2d-medium, walker2d-medium-replay,"
                                      " walker2d-medium-expert?")


def test_resume_refuses_another_tasks_checkpoint_and_new_runs_refuse_to_overwrite(datasets, tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    assert run_main("edp_td3", "--env", datasets["pendulum"], "--total-steps", "5", "--eval-every", "5",
                    "--run-dir", run_dir, *TINY) == 0
    capsys.readouterr()
    assert run_main("edp_td3", "--env", datasets["pointmaze"], "--run-dir", run_dir, "--resume", *TINY) == 2
    assert "belongs to edp_td3 on edp/pendulum-mixed-v0" in capsys.readouterr().err
    assert run_main("edp_td3", "--env", datasets["pendulum"], "--run-dir", run_dir, *TINY) == 2
    assert "already holds a run" in capsys.readouterr().err


ALGORITHM_FLAGS = {"edp_td3": ["--no-action-approx", "--eta", "--max-q-backup"],
                   "edp_crr": ["--likelihood", "--learn-std", "--beta", "--advantage-samples"],
                   "edp_iql": ["--likelihood", "--learn-std", "--expectile", "--beta"]}


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_documents_every_flag(script):
    process = subprocess.run([sys.executable, f"{script}.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert process.returncode == 0
    for flag in ("--env", "--dataset-path", "--seed", "--device", "--total-steps", "--batch-size", "--eval-every",
                 "--eval-episodes", "--eas-samples", "--sampler", "--dpm-steps", "--num-diffusion-steps", "--run-dir",
                 "--resume", "--wandb-mode", "--wandb-project", "--compile", *ALGORITHM_FLAGS[script]):
        assert flag in process.stdout, flag


@pytest.mark.parametrize("script,flags,message", [
    ("edp_td3", ["--eta", "-1"], "--eta >= 0"),
    ("edp_crr", ["--beta", "0"], "--beta > 0"),
    ("edp_iql", ["--expectile", "1.2"], "0 < --expectile < 1"),
])
def test_impossible_algorithm_hyper_parameters(script, flags, message, datasets, capsys, tmp_path):
    assert run_main(script, "--env", datasets["pendulum"], "--run-dir", str(tmp_path / "run"), *TINY, *flags) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused after the folder was claimed: it is removed again


def test_iql_antmaze_presets():
    config = resolve("edp_iql", "antmaze-medium-play")
    assert (config.reward_transform, config.expectile, config.normalize_obs, config.eval_episodes) == (
        "antmaze-iql", 0.9, "per-dimension", 100)
    assert (config.total_steps, config.eval_every, config.lr) == (1_000_000, 10_000, 3e-4)
    config = resolve("edp_td3", "kitchen-mixed", eta=0.5)
    assert (config.eta, config.reward_transform, config.normalize_obs) == (0.5, "minmax", "per-dimension")  # flags win


def test_compile_flag_trains_and_evaluates_as_eager_does(datasets, tmp_path):
    """The same seed with and without --compile: the same scores to float noise (the compiled update draws torch's
    eager random numbers; tests/test_compile.py compares the numbers of one update); --eval-only --compile too."""
    scores = {}
    for name, flags in [("eager", []), ("compiled", ["--compile", "on"])]:
        assert run_main("edp_td3", "--env", datasets["pendulum"], "--total-steps", "20", "--eval-every", "10",
                        "--run-dir", str(tmp_path / name), *flags, *TINY) == 0
        scores[name] = [evaluation["normalized_score"] for evaluation in summary(tmp_path / name)["evaluations"]]
    assert scores["compiled"] == pytest.approx(scores["eager"], abs=0.5)  # seen here: 0.014 apart at most (of 18)
    assert run_main("edp_td3", "--eval-only", "--run-dir", str(tmp_path / "compiled"), "--compile", "on") == 0
    report = json.loads((tmp_path / "compiled" / "eval_checkpoint_last.json").read_text())
    assert report["result"]["normalized_score"] == scores["compiled"][-1]


def test_compile_auto_compiles_long_runs_only_and_falls_back_to_eager_without_a_compiler(monkeypatch, capsys):
    """--compile auto: a paper run (a million steps) compiles, the quick-start (6,000) and --eval-only do not; with
    no C++ compiler (what inductor reads: $CXX at import, torch._inductor.config.cpp.cxx) auto says so in one line
    and trains eager, and --compile on is refused in one line."""
    import torch._inductor.config

    import errors
    from agents import AUTO_COMPILE_STEPS, should_compile

    cpu = torch.device("cpu")
    assert should_compile("auto", 1_000_000, cpu) and should_compile("on", 0, cpu)
    assert not should_compile("auto", 6_000, cpu) and not should_compile("off", 1_000_000, cpu)
    assert 6_000 < AUTO_COMPILE_STEPS < 1_000_000
    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", (None, "/nonexistent/g++"))
    capsys.readouterr()
    assert not should_compile("auto", 1_000_000, cpu)
    warning = capsys.readouterr().out.strip()
    assert warning.startswith("warning: --compile auto: no working C++ compiler") and "\n" not in warning
    with pytest.raises(errors.UsageError, match="--compile on: no working C\\+\\+ compiler"):
        should_compile("on", 10, cpu)


def test_a_dataset_naming_code_outside_gymnasium_as_its_eval_env_runs_nothing(datasets, tmp_path, capsys):
    """metadata.json names the eval env by entry point: "os:system" with a command must be refused, not run."""
    import shutil

    from minari.storage import get_dataset_path

    marker = tmp_path / "ran"
    path = get_dataset_path("edp/hostile-v0")
    shutil.copytree(get_dataset_path(datasets["pendulum"]), path, dirs_exist_ok=True)
    metadata = json.loads((path / "data" / "metadata.json").read_text())
    spec = json.loads(metadata["eval_env_spec"])
    spec.update(id="Hostile-v0", entry_point="os:system", kwargs={"command": f"touch {marker}"})
    metadata["eval_env_spec"] = json.dumps(spec)
    (path / "data" / "metadata.json").write_text(json.dumps(metadata))
    assert run_main("edp_td3", "--env", "edp/hostile-v0", "--run-dir", str(tmp_path / "run"), *TINY) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "os:system" in error and "refusing" in error, error
    assert not marker.exists()


def test_a_copied_script_runs_under_its_own_name(datasets, tmp_path):
    """ALGORITHM comes from the file name: a copy my_edp.py names its run folder, summary and checkpoint my_edp."""
    import shutil

    shutil.copy(os.path.join(ROOT, "edp_iql.py"), tmp_path / "my_edp.py")
    shutil.copy(os.path.join(ROOT, "diffusion.py"), tmp_path / "diffusion.py")
    command = [sys.executable, "my_edp.py", "--env", datasets["pendulum"], "--total-steps", "10", "--eval-every", "10",
               "--seed", "3", *TINY]
    process = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                             env=os.environ | {"PYTHONPATH": ROOT})
    assert process.returncode == 0, process.stderr[-2000:]
    run_dir, = (tmp_path / "runs").iterdir()
    assert "__my_edp__3__" in run_dir.name
    assert summary(run_dir)["algo"] == "my_edp"
    assert torch.load(run_dir / "checkpoint_last.pt", weights_only=True)["algo"] == "my_edp"


def test_cpu_threads_drop_to_one_while_other_processes_are_busy(monkeypatch):
    """--threads 0: all threads while the run has the CPUs, one while others keep more than half a core busy."""
    import runs

    clock = itertools.count(0, 2)  # every tick is a check
    usage = iter([(0, 0.0, 0.0), (2, 3.0, 2.0), (4, 5.0, 4.0), (6, 9.0, 6.0)])  # others busy 0.5, 0, 1 core
    monkeypatch.setattr(runs.CpuThreads, "usage", staticmethod(lambda: next(usage)))
    monkeypatch.setattr(runs.time, "monotonic", lambda: next(clock))
    torch.set_num_threads(2)
    threads = runs.CpuThreads(0, interval=1.0)
    seen = []
    for _ in range(3):
        threads.tick()
        seen.append(torch.get_num_threads())
    assert seen == [2, 2, 1]  # others: 0.5 core (not more than half), none, one whole core
    fixed = runs.CpuThreads(2)
    assert not fixed.adapt and torch.get_num_threads() == 2


# -- evaluate and watch a trained policy ------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
def test_eval_only_scores_a_checkpoint_as_its_run_did(script, datasets, tmp_path, capsys):
    run_dir = tmp_path / "run"
    result = run_and_check(script, datasets["pendulum"], run_dir, 20, 10)
    capsys.readouterr()
    assert run_main(script, "--eval-only", "--run-dir", str(run_dir)) == 0
    assert "step 20: normalized score" not in capsys.readouterr().out  # no training
    report = json.loads((run_dir / "eval_checkpoint_last.json").read_text())
    assert report["step"] == 20 and report["result"]["normalized_score"] == result["evaluations"][-1]["normalized_score"]
    assert summary(run_dir) == result  # the run's own files are left as they were
    # the EAS settings can be overridden; the rest of the configuration is the run's
    assert run_main(script, "--eval-only", "--checkpoint", str(run_dir / "checkpoint_best.pt"), "--eas-samples", "1",
                    "--eval-episodes", "1") == 0
    report = json.loads((run_dir / "eval_checkpoint_best.json").read_text())
    assert report["overrides"] == {"eas_samples": 1, "eval_episodes": 1} and report["config"]["num_diffusion_steps"] == 50


def test_eval_only_without_a_checkpoint_is_one_line(tmp_path, capsys):
    assert run_main("edp_td3", "--eval-only") == 2
    assert run_main("edp_td3", "--eval-only", "--run-dir", str(tmp_path)) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "--eval-only needs --run-dir" in errors[0] and "no checkpoint at" in errors[1]


def test_capture_video_records_one_episode_per_evaluation(datasets, tmp_path, capsys):
    run_dir = tmp_path / "run"
    result = run_and_check("edp_td3", datasets["pendulum"], run_dir, 20, 10, "--capture-video")
    videos = sorted(os.listdir(run_dir / "videos")) if (run_dir / "videos").exists() else []
    warnings = [line for line in capsys.readouterr().err.splitlines() if "cannot render here" in line]
    if warnings:  # a machine without rendering: said in one line, the run evaluated without video; nothing tested
        assert videos == [] and len(warnings) == 1
        pytest.skip(f"{warnings[0].strip()}. The video test needs pygame and moviepy (Pendulum renders with pygame into"
                    " an off-screen surface; for a headless pygame set SDL_VIDEODRIVER=dummy, for MuJoCo envs"
                    " MUJOCO_GL=egl or osmesa)")
    assert videos == ["step10-episode-0.mp4", "step20-episode-1.mp4"]
    assert all((run_dir / "videos" / name).stat().st_size > 1000 for name in videos)
    assert [os.path.basename(e["video"]) for e in result["evaluations"]] == videos


def test_the_same_seed_gives_the_same_numbers(datasets, tmp_path):
    """--torch-deterministic (on by default): two runs with one seed give identical evaluations and losses."""
    first, second = (run_and_check("edp_crr", datasets["pendulum"], tmp_path / name, 20, 10) for name in ("a", "b"))
    scores = [[{k: v for k, v in e.items() if k != "eval_seconds"} for e in run["evaluations"]] for run in (first, second)]
    assert scores[0] == scores[1]
    weights = [torch.load(tmp_path / name / "checkpoint_last.pt", weights_only=True)["agent"]["policy"] for name in "ab"]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
