"""Reproduce the paper's tables: edp_{td3,crr,iql}.py x tasks x seeds on Ray, then tables and plots.

    python reproduce.py --domains antmaze kitchen adroit            # 3 algorithms x 11 tasks x 5 seeds
    python reproduce.py --domains locomotion                         # D4RL's HDF5 files, fetched into ~/.d4rl/datasets
    python reproduce.py --address auto ...                          # on a running Ray cluster
    python reproduce.py --report-only --out-dir sweeps/released     # tables and plots from the files
    python reproduce.py --preset paper ...                          # Table 3 and the text instead

Each run is one of the three scripts with its presets, in <out-dir>/runs/<algo>/<task>/seed<k>.
A run that finished (its done.json, written once its last evaluation is in its summary.json) is
skipped; an interrupted one (a checkpoint but no done.json) continues with --resume. Ctrl-C or
SIGTERM stops the sweep as it stops a run: every running run saves its checkpoint, the sweep
waits for them and exits 130; the same command again continues them. From the runs' summary.json files it writes, next to the paper's numbers:
  table2.md / .csv   RAT, mean +- std over seeds and the IQM with its 95% stratified bootstrap CI, by task and
                     domain (paper Table 2)
  table5.md / .csv   RAT and OMS side by side (paper Table 5)
  statistics.md/.csv each algorithm's IQM [95% CI] and mean +- std over all its tasks and per domain
  performance_profile.png  fraction of runs with score > tau, vs tau (Agarwal et al. 2021)
  curves/<task>.png  normalised score per evaluation, its running average and the best so far
                     (paper Fig. 3), mean over seeds with the spread shaded
"""

from __future__ import annotations

import csv
import glob
import json
import os
import math
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np
import tyro

ROOT = os.path.dirname(os.path.abspath(__file__))
ALGORITHMS = ("td3", "crr", "iql")  # the paper's, swept by default; --algos takes any edp_<name>.py or a copied script


def algorithm_script(algo: str) -> Optional[str]:
    """The script of an --algos entry: edp_<algo>.py or <algo>.py beside this file, or a path to a .py file."""
    candidates = [algo] if algo.endswith(".py") else [os.path.join(ROOT, f"edp_{algo}.py"), os.path.join(ROOT, f"{algo}.py")]
    return next((os.path.abspath(path) for path in candidates if os.path.isfile(path)), None)


def algorithm_name(algo: str) -> str:
    """How tables and run folders name an --algos entry: td3 for edp_td3.py, my_awr for a copy my_awr.py."""
    return os.path.splitext(os.path.basename(algo))[0].removeprefix("edp_")
DOMAIN_TASKS = {
    "locomotion": [f"{robot}-{quality}" for quality in ("medium", "medium-replay", "medium-expert")
                   for robot in ("halfcheetah", "hopper", "walker2d")],
    "antmaze": [f"antmaze-{maze}" for maze in ("umaze", "umaze-diverse", "medium-play", "medium-diverse",
                                                "large-play", "large-diverse")],
    "adroit": ["pen-human", "pen-cloned"],
    "kitchen": ["kitchen-complete", "kitchen-partial", "kitchen-mixed"],
}
# The paper's Table 5 (RAT = "Average", OMS = "Best"; Table 2's EDP columns are the same RAT):
# task -> algorithm -> (RAT, OMS). Published facts, kept here in one place.
PUBLISHED_SCORES = {
    "halfcheetah-medium": dict(td3=(52.1, 52.8), crr=(49.2, 50.2), iql=(48.1, 48.7)),
    "hopper-medium": dict(td3=(81.9, 98.6), crr=(78.7, 95.0), iql=(63.1, 97.3)),
    "walker2d-medium": dict(td3=(86.9, 89.6), crr=(82.5, 85.8), iql=(85.4, 88.7)),
    "halfcheetah-medium-replay": dict(td3=(49.4, 50.4), crr=(43.5, 47.8), iql=(43.8, 45.5)),
    "hopper-medium-replay": dict(td3=(101.0, 102.7), crr=(99.0, 101.7), iql=(99.1, 100.9)),
    "walker2d-medium-replay": dict(td3=(94.9, 97.7), crr=(63.3, 89.8), iql=(84.0, 93.4)),
    "halfcheetah-medium-expert": dict(td3=(95.5, 97.1), crr=(85.6, 93.5), iql=(86.7, 80.9)),
    "hopper-medium-expert": dict(td3=(97.4, 112.0), crr=(92.9, 109.4), iql=(99.6, 95.7)),
    "walker2d-medium-expert": dict(td3=(110.2, 112.0), crr=(110.1, 112.3), iql=(109.0, 111.5)),
    "kitchen-complete": dict(td3=(61.5, 93.4), crr=(73.9, 95.8), iql=(75.5, 95.0)),
    "kitchen-partial": dict(td3=(52.8, 66.0), crr=(40.0, 56.7), iql=(46.3, 72.5)),
    "kitchen-mixed": dict(td3=(60.8, 88.0), crr=(46.1, 59.2), iql=(56.5, 70.0)),
    "pen-human": dict(td3=(48.2, 60.0), crr=(70.2, 127.8), iql=(72.7, 130.3)),
    "pen-cloned": dict(td3=(15.9, 64.0), crr=(54.0, 106.0), iql=(70.0, 138.2)),
    "antmaze-umaze": dict(td3=(96.6, 98.3), crr=(95.9, 98.0), iql=(94.2, 98.0)),
    "antmaze-umaze-diverse": dict(td3=(69.5, 79.9), crr=(15.9, 80.0), iql=(79.0, 90.0)),
    "antmaze-medium-play": dict(td3=(0.0, 89.1), crr=(33.5, 82.0), iql=(81.8, 89.0)),
    "antmaze-medium-diverse": dict(td3=(6.4, 97.0), crr=(32.7, 72.0), iql=(82.3, 88.0)),
    "antmaze-large-play": dict(td3=(1.6, 71.5), crr=(26.0, 57.0), iql=(42.3, 52.0)),
    "antmaze-large-diverse": dict(td3=(4.4, 73.0), crr=(58.5, 71.0), iql=(60.6, 68.0)),
}


@dataclass
class Args:
    domains: list[str] = field(default_factory=lambda: ["locomotion", "antmaze", "adroit", "kitchen"])
    """the paper's task lists to run (locomotion, antmaze, adroit, kitchen); ignored when --tasks is given"""
    tasks: Optional[list[str]] = None
    """explicit tasks (paper aliases or Minari dataset ids) instead of --domains"""
    algos: list[str] = field(default_factory=lambda: list(ALGORITHMS))
    """algorithms: td3, crr, iql, any other edp_<name>.py here, or a copied script (my_awr, or a path to it)"""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    """seeds of every task and algorithm (the paper: 5)"""
    preset: Literal["paper", "released"] = "released"
    """configuration of every run: released (the authors' code, which made the published tables) or paper"""
    out_dir: Optional[str] = None
    """runs, tables and plots go here (default: sweeps/<preset>)"""
    d4rl_dir: Optional[str] = None
    """folder of D4RL's HDF5 files (e.g. hopper_medium_replay-v2.hdf5) for the locomotion tasks, passed to each run as --dataset-path (default: D4RL's own folder, $D4RL_DATASET_DIR or ~/.d4rl/datasets, where missing files are downloaded before the runs start)"""
    address: Optional[str] = None
    """an existing Ray cluster ("auto" or host:port); default: a Ray instance on this machine"""
    cpus_per_run: float = 1.0
    """CPUs Ray reserves for each run"""
    gpus_per_run: float = 0.25
    """GPUs Ray reserves for each run when the cluster has GPUs (fractions put several runs on a GPU)"""
    script_args: str = ""
    """flags passed to every run, e.g. --script-args='--total-steps 100000 --eval-episodes 5' (with the =)"""
    wandb_group: Optional[str] = None
    """wandb group of every run (default: reproduce-<out-dir name>)"""
    dry_run: bool = False
    """list the runs and what would happen to each, start nothing"""
    report_only: bool = False
    """start no run: write the tables and plots from the finished runs of this configuration (the same flags as the sweep)"""


# ---- the sweep ---------------------------------------------------------------------------------------
SWEEP_FLAGS = ("--env", "--seed", "--run-dir", "--wandb-group", "--preset", "--dataset-path", "--resume",
               "--threads")  # set per run


@dataclass
class Run:
    algo: str
    task: str
    seed: int
    run_dir: str
    command: list

    @property
    def done_command(self) -> Optional[list]:
        """The command a finished run in this folder ran (done.json), or None."""
        try:
            with open(os.path.join(self.run_dir, "done.json")) as file:
                command = json.load(file).get("command")
            return command if isinstance(command, list) else []
        except (OSError, ValueError, AttributeError):
            return None

    @property
    def finished(self) -> bool:
        """Finished with this very configuration (the same command, all flags alike)."""
        return self.done_command is not None and self.done_command[1:] == self.command[1:]

    @property
    def interrupted(self) -> bool:
        return not self.finished and os.path.isfile(os.path.join(self.run_dir, "checkpoint_last.pt"))


def d4rl_file(args: Args, task: str) -> str:
    """The D4RL file a locomotion run reads: in --d4rl-dir, else in D4RL's own folder (d4rl_files.py)."""
    import d4rl_files

    if args.d4rl_dir:
        return os.path.join(os.path.expanduser(args.d4rl_dir), d4rl_files.file_name(task))
    return d4rl_files.local_path(task)


def plan(args: Args) -> list:
    tasks = args.tasks or [task for domain in args.domains for task in DOMAIN_TASKS[domain]]
    group = args.wandb_group or f"reproduce-{os.path.basename(os.path.normpath(args.out_dir))}"
    runs = []
    for algo in args.algos:
        for task in tasks:
            for seed in args.seeds:
                run_dir = os.path.join(args.out_dir, "runs", algorithm_name(algo), task.replace("/", "-"), f"seed{seed}")
                command = [sys.executable, algorithm_script(algo), "--env", task, "--seed", str(seed),
                           "--run-dir", run_dir, "--wandb-group", group, "--preset", args.preset,
                           # a fixed count, recorded in the run: its numbers do not depend on what else runs
                           "--threads", str(max(1, int(args.cpus_per_run))), *shlex.split(args.script_args)]
                if task in DOMAIN_TASKS["locomotion"] and args.d4rl_dir:  # else the run reads D4RL's own folder
                    command += ["--dataset-path", d4rl_file(args, task)]
                runs.append(Run(algorithm_name(algo), task, seed, run_dir, command))
    return runs


def check(args: Args):
    """Bad input, found before anything is planned or started (dry runs too): one line on stderr, exit code 2."""
    unknown = [a for a in args.algos if algorithm_script(a) is None] + [d for d in args.domains if d not in DOMAIN_TASKS]
    if unknown:
        found = sorted(algorithm_name(path) for path in glob.glob(os.path.join(ROOT, "edp_*.py")))
        fail(f"unknown algorithm or domain: {', '.join(unknown)} (algorithms: {', '.join(found)}, or a script's path;"
             f" domains: {', '.join(DOMAIN_TASKS)})")
    if not all(0 <= seed < 2**32 for seed in args.seeds):  # the scripts' (numpy's) seed range
        fail(f"--seeds must be in 0 .. 2**32 - 1, got {' '.join(map(str, args.seeds))}")
    algos = [algorithm_name(algo) for algo in args.algos]
    repeated = [name for name, values in (("--seeds", args.seeds), ("--algos", algos), ("--tasks", args.tasks or []),
                                          ("--domains", [] if args.tasks else args.domains))
                if len(set(values)) < len(values)]
    if repeated:
        fail(f"--seeds and --algos must not repeat a value, nor --tasks and --domains: each run needs a folder of its own"
             f" and counts once in the tables (repeated: {', '.join(repeated)})")
    if not (0 < args.cpus_per_run < math.inf and 0 <= args.gpus_per_run < math.inf):
        fail(f"--cpus-per-run must be > 0 and --gpus-per-run >= 0, both finite, got {args.cpus_per_run} and"
             f" {args.gpus_per_run}")
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        fail(f"--out-dir {args.out_dir} is a file, not a folder")
    if not args.dry_run:
        writable_folder(args.out_dir)
    if args.tasks:
        from errors import UsageError
        from tasks import find_task  # the scripts' own rule of what a task is

        for task in args.tasks:
            try:
                find_task(task, None)
            except UsageError as error:
                fail(str(error))
    try:
        script_args = shlex.split(args.script_args)
    except ValueError as error:  # e.g. an unbalanced quote
        fail(f"--script-args {args.script_args!r}: {error}")
    # --no-resume is --resume's other half; each run gets these from the sweep, one folder and seed per run
    given = {"--" + token.split("=")[0][2:].replace("_", "-").removeprefix("no-") for token in script_args
             if token.startswith("--")}
    taken = [flag for flag in SWEEP_FLAGS if flag in given]
    if taken:
        fail(f"--script-args may not set {', '.join(taken)}: the sweep sets them for each run"
             f" (use --tasks, --seeds, --out-dir, --wandb-group, --preset, --d4rl-dir of reproduce.py)")


def check_out_dir(args: Args, runs: list):
    """A run folder that finished another configuration is never reused, nor reported as this one."""
    for run in runs:
        if run.done_command is not None and not run.finished:
            fail(f"{run.run_dir} holds a finished run of another configuration (its done.json ran"
                 f" {' '.join(run.done_command[1:]) or 'an unknown command'}); choose another --out-dir")


def missing_d4rl_files(args: Args, runs: list) -> list:
    """The locomotion tasks of runs still to do whose D4RL file is not there yet."""
    return sorted({run.task for run in runs if run.task in DOMAIN_TASKS["locomotion"] and not run.finished
                   and not os.path.isfile(d4rl_file(args, run.task))})


def check_d4rl_files(args: Args, runs: list):
    """With --d4rl-dir every file must be there; without, the missing ones are downloaded into D4RL's folder now, one
    after the other, before any run starts (d4rl_files.py: resumed, checked, renamed when complete)."""
    missing = missing_d4rl_files(args, runs)
    if not missing or args.report_only or args.dry_run:
        return
    if args.d4rl_dir:
        fail(f"the locomotion tasks need D4RL's HDF5 files in --d4rl-dir (missing {len(missing)}, e.g."
             f" {d4rl_file(args, missing[0])}); leave out --d4rl-dir to download them into D4RL's folder, or leave the"
             f" tasks out with --domains antmaze adroit kitchen")
    import d4rl_files

    try:
        for task in missing:
            d4rl_files.fetch(task)
    except d4rl_files.DownloadError as error:
        fail(str(error))
    except KeyboardInterrupt:
        print("stopped during the download of D4RL's files; no run started (the part received is resumed next time)",
              file=sys.stderr)
        sys.exit(130)


def check_address(address: str):
    """Refuse a host:port where nothing listens at once: ray.init would retry it for minutes."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not (host and port.isdigit()):
        fail(f"--address {address}: give auto or host:port")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as error:
        fail(f"--address {address}: no Ray cluster answers there ({error.strerror or error}); start one with"
             f" `ray start --head` or leave out --address")


def writable_folder(path: str):
    """--out-dir can be made and written (the tables, the runs' folders): found out now, not after the sweep."""
    try:
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, f".write-test-{os.getpid()}"), "w"):
            pass
        os.remove(os.path.join(path, f".write-test-{os.getpid()}"))
    except OSError as error:
        fail(f"cannot write to --out-dir {path} ({error.strerror or error})")


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


STOP_GRACE_SECONDS = 300  # a stopped run saves within seconds; after this the sweep kills it (its last checkpoint stays)


def execute(command: list, run_dir: str, environment: dict, threads: int, stop_file: str = "") -> dict:
    """One run as a subprocess (its own process and session: signals, memory, a crash stay with it). The sweep
    stops it by creating `stop_file`: the run gets SIGTERM, saves its checkpoint and ends (exit 130). done.json is
    written only for a run that ended with its last evaluation in its summary.json."""
    if stop_file and os.path.exists(stop_file):  # the sweep stopped before this run began
        return dict(run_dir=run_dir, returncode=None, seconds=0.0)
    os.makedirs(run_dir, exist_ok=True)
    env = environment | {key: os.environ[key] for key in ("CUDA_VISIBLE_DEVICES",) if key in os.environ}
    env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.time()
    with open(os.path.join(run_dir, "reproduce.log"), "a") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                   start_new_session=True)  # a Ctrl-C reaches it through the sweep only
        signalled = None  # when the run was sent SIGTERM
        while True:
            try:
                returncode = process.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                stop = bool(stop_file) and os.path.exists(stop_file)
            except KeyboardInterrupt:  # the worker itself was interrupted: the run still saves before it ends
                stop = True
            if stop and signalled is None:
                process.send_signal(signal.SIGTERM)
                signalled = time.time()
            elif signalled is not None and time.time() > signalled + STOP_GRACE_SECONDS:
                process.kill()  # a run honours a stop within seconds; one that does not is not waited for forever
    seconds = time.time() - start
    if returncode == 0 and not finished_summary(run_dir):
        returncode = "0 without its last evaluation"
    if returncode == 0:
        with open(os.path.join(run_dir, "done.json"), "w") as file:
            json.dump(dict(command=[token for token in command if token != "--resume"], seconds=seconds), file)
    return dict(run_dir=run_dir, returncode=returncode, seconds=seconds)


def finished_summary(run_dir: str) -> bool:
    """Whether a run's summary.json holds its last evaluation (final_step = its total steps)."""
    try:
        with open(os.path.join(run_dir, "summary.json")) as file:
            summary = json.load(file)
        return summary["final_step"] == summary["config"]["total_steps"] == summary["evaluations"][-1]["step"]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


class SweepStop:
    """Ctrl-C / SIGTERM to the sweep: remembered, not raised; the sweep passes it to its runs and waits for them."""

    def __init__(self):
        self.signals = []

    def install(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda signum, frame: self.signals.append(signum))


def sweep(args: Args, runs: list, stop: SweepStop):
    import ray

    todo = [run for run in runs if not run.finished]
    print(f"{len(runs)} runs: {len(runs) - len(todo)} finished (skipped), "
          f"{sum(run.interrupted for run in todo)} to resume, {sum(not run.interrupted for run in todo)} to start")
    if not todo:
        return []
    if args.address:
        check_address(args.address)
        try:
            ray.init(address=args.address, log_to_driver=False)
        except ConnectionError as error:  # e.g. auto without a running cluster
            fail(f"--address {args.address}: {str(error).strip().splitlines()[0]}")
    else:  # a local instance, reachable on this machine only
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    stop.install()  # again after ray.init, which sets a SIGTERM handler of its own
    if stop.signals:
        ray.shutdown()
        return []
    gpus = ray.cluster_resources().get("GPU", 0)
    remote = ray.remote(num_cpus=args.cpus_per_run, num_gpus=args.gpus_per_run if gpus else 0, max_retries=0)(execute)
    threads = max(1, int(args.cpus_per_run))
    stop_file = os.path.join(os.path.abspath(args.out_dir), f".stop-{os.getpid()}-{time.time_ns()}")
    pending = {}
    for run in todo:
        command = run.command + (["--resume"] if run.interrupted else [])
        pending[remote.remote(command, run.run_dir, dict(os.environ), threads, stop_file)] = run
    slots = max(1, min(len(todo), int(ray.cluster_resources().get("CPU", 1) // args.cpus_per_run)))
    done, failed, durations, start = 0, [], [], time.time()
    try:
        while pending:
            if stop.signals and not os.path.exists(stop_file):
                open(stop_file, "w").close()  # every run gets SIGTERM; runs not yet begun do not begin
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            if not ready:
                continue
            run = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayError as error:  # the worker died (out of memory, killed): this run failed
                result = dict(run_dir=run.run_dir, returncode=f"none: {type(error).__name__}", seconds=time.time() - start)
            if result["returncode"] is None or (stop.signals and result["returncode"] == 130):
                continue  # stopped by the sweep: its checkpoint is saved
            durations.append(result["seconds"])
            if result["returncode"] == 0:
                done += 1
            else:
                failed.append(run)
            left = len(pending)
            eta = np.mean(durations) * left / min(slots, max(left, 1)) if left else 0.0
            status = "done" if result["returncode"] == 0 else f"FAILED (exit {result['returncode']}, see reproduce.log)"
            print(f"[{time.time() - start:7.0f}s] {run.algo} {run.task} seed {run.seed}: {status} | done {done},"
                  f" running {min(left, slots)}, waiting {max(left - slots, 0)}, failed {len(failed)}"
                  f" | about {eta // 60:.0f} min {eta % 60:.0f} s left", flush=True)
    finally:
        if os.path.exists(stop_file):
            os.remove(stop_file)
        ray.shutdown()
    for run in failed:
        print(f"failed: {run.run_dir}", file=sys.stderr)
    return failed


# ---- tables and plots --------------------------------------------------------------------------------
SUMMARY_KEYS = ("algo", "env", "config", "rat", "oms", "evaluations")  # what the tables and plots read


def load_summaries(runs: list) -> dict:
    """(algo, task) -> list of summary.json contents, one per seed: the planned runs that finished with this
    configuration only (not runs still going, copies of folders, or runs of other flags in the same --out-dir)."""
    results = {}
    for run in runs:
        if not run.finished:
            continue
        summary = read_summary(os.path.join(run.run_dir, "summary.json"))
        if summary is not None:
            results.setdefault((run.algo, run.task), []).append(summary)
    return results


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def read_summary(path: str) -> Optional[dict]:
    """A run's summary.json, or None with a warning when it is not one: a bad file must not cost the tables."""
    try:
        with open(path) as file:
            summary = json.load(file)
        missing = [key for key in SUMMARY_KEYS if key not in summary] if isinstance(summary, dict) else SUMMARY_KEYS
        if missing:
            raise ValueError(f"it lacks {', '.join(missing)}")
        evaluations = summary["evaluations"]
        if not (is_number(summary["rat"]) and is_number(summary["oms"]) and isinstance(summary["config"], dict)
                and isinstance(evaluations, list) and evaluations and all(
                    isinstance(e, dict) and is_number(e.get("step")) and is_number(e.get("normalized_score"))
                    for e in evaluations)):
            raise ValueError("its rat, oms, config or evaluations are not of the types a run writes")
        return summary
    except (OSError, ValueError) as error:  # a JSONDecodeError is a ValueError
        print(f"warning: skipped {path} ({error})", file=sys.stderr)
        return None


def mean_std(values: list) -> str:
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}" if values else "-"


def domain_of(task: str) -> str:
    return next((domain for domain, tasks in DOMAIN_TASKS.items() if task in tasks), "other")


# ---- statistics over seeds: Agarwal et al., "Deep RL at the Edge of the Statistical Precipice" (NeurIPS 2021) ---------
# As its library rliable (google-research/rliable, library.py and metrics.py), in numpy: rliable itself pulls in arch,
# scipy, pandas and seaborn, none of which the scripts need.
BOOTSTRAP_REPS = 10_000  # resamples of each confidence interval
BOOTSTRAP_SEED = 0  # the intervals are the same numbers every time the report is written
CONFIDENCE = 0.95


def iqm(scores, axis=None):
    """Interquartile mean: the mean of the middle half of the scores, int(n / 4) cut from each end (rliable's
    aggregate_iqm, scipy.stats.trim_mean(scores, 0.25)); along `axis` of an array, or of all values."""
    values = np.sort(np.asarray(scores, dtype=float).reshape(-1) if axis is None else np.asarray(scores, float), axis=-1)
    cut = int(0.25 * values.shape[-1])
    return values[..., cut:values.shape[-1] - cut].mean(axis=-1)


def stratified_resamples(per_task: list, reps: int, rng: np.random.Generator) -> np.ndarray:
    """(reps, runs): each task's runs drawn again with replacement, as many as it has, side by side (the stratified
    bootstrap: a task keeps its number of runs in every resample)."""
    return np.concatenate([np.asarray(runs, dtype=float)[rng.integers(0, len(runs), (reps, len(runs)))]
                           for runs in per_task if len(runs)], axis=1)


def iqm_interval(per_task: list, reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED) -> tuple:
    """(IQM of all runs, low, high): the 95% percentile interval of the IQM over stratified bootstrap resamples of the
    runs of each task (rliable's get_interval_estimates with StratifiedBootstrap, method 'percentile')."""
    resampled = iqm(stratified_resamples(per_task, reps, np.random.default_rng(seed)), axis=1)
    tail = 100 * (1 - CONFIDENCE) / 2
    return float(iqm(np.concatenate([np.asarray(runs, float) for runs in per_task]))), *(
        float(value) for value in np.percentile(resampled, [tail, 100 - tail]))


def performance_profile(per_task: list, taus: np.ndarray, reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED):
    """The fraction of runs with a score above each tau, each task weighing the same (the mean over tasks of the
    fraction of its runs; rliable's score distribution), with its 95% stratified bootstrap band: (profile, low, high)."""
    def fractions(runs):  # (..., runs) -> (..., taus)
        return (np.asarray(runs, float)[..., None] > taus).mean(axis=-2)

    rng = np.random.default_rng(seed)
    profile = np.mean([fractions(runs) for runs in per_task], axis=0)
    resampled = np.mean([fractions(np.asarray(runs, float)[rng.integers(0, len(runs), (reps, len(runs)))])
                         for runs in per_task], axis=0)
    tail = 100 * (1 - CONFIDENCE) / 2
    return profile, *np.percentile(resampled, [tail, 100 - tail], axis=0)


def interval_text(per_task: list) -> str:
    value, low, high = iqm_interval(per_task)
    return f"{value:.1f} [{low:.1f}, {high:.1f}]"


def tables(results: dict, out_dir: str) -> tuple:
    algos = list(dict.fromkeys(key[0] for key in results))
    tasks = sorted({key[1] for key in results}, key=lambda t: (list(DOMAIN_TASKS).index(domain_of(t))
                                                                 if domain_of(t) in DOMAIN_TASKS else 9, t))
    rows2, rows5 = [], []
    for task in tasks:
        row2, row5 = dict(task=task), dict(task=task)
        for algo in algos:
            summaries = results.get((algo, task), [])
            rat, oms = [s["rat"] for s in summaries], [s["oms"] for s in summaries]
            paper_rat, paper_oms = PUBLISHED_SCORES.get(task, {}).get(algo, (None, None))
            row2 |= {f"{algo} RAT": mean_std(rat), f"{algo} paper": paper_rat,
                     f"{algo} diff": round(np.mean(rat) - paper_rat, 1) if rat and paper_rat is not None else None,
                     f"{algo} seeds": len(rat), f"{algo} IQM [95% CI]": interval_text([rat]) if rat else None}
            row5 |= {f"{algo} RAT": mean_std(rat), f"{algo} OMS": mean_std(oms),
                     f"{algo} paper RAT": paper_rat, f"{algo} paper OMS": paper_oms}
            row2[f"_{algo}_rat"], row2[f"_{algo}_paper"] = (np.mean(rat) if rat else None), paper_rat
        rows2.append(row2)
        rows5.append(row5)
    for domain in DOMAIN_TASKS:  # domain averages over the tasks present
        members = [row for row in rows2 if domain_of(row["task"]) == domain]
        if not members:
            continue
        average = dict(task=f"{domain} average")
        for algo in algos:
            ours = [row[f"_{algo}_rat"] for row in members if row[f"_{algo}_rat"] is not None]
            paper = [row[f"_{algo}_paper"] for row in members if row[f"_{algo}_paper"] is not None]
            per_task = [[s["rat"] for s in results[(algo, r["task"])]] for r in members if (algo, r["task"]) in results]
            average |= {f"{algo} RAT": f"{np.mean(ours):.1f}" if ours else "-",
                        f"{algo} paper": round(float(np.mean(paper)), 1) if len(paper) == len(members) else None,
                        f"{algo} diff": round(float(np.mean(ours) - np.mean(paper)), 1)
                        if ours and len(paper) == len(members) == len(ours) else None,
                        f"{algo} seeds": "", f"{algo} IQM [95% CI]": interval_text(per_task) if per_task else None}
        rows2.append(average)
    rows2 = [{key: value for key, value in row.items() if not key.startswith("_")} for row in rows2]
    for name, rows in (("table2", rows2), ("table5", rows5)):
        write_table(rows, os.path.join(out_dir, name), f"Preset: {presets_of(results)}")
    return rows2, rows5


def statistics(results: dict, out_dir: str) -> list:
    """statistics.md / .csv: each algorithm's RAT over all its tasks and per domain (runs, mean +- std over the runs,
    IQM with its 95% stratified bootstrap CI), and performance_profile.png; returns the table's rows."""
    algos = list(dict.fromkeys(key[0] for key in results))
    rows, profiles = [], {}
    for label in ("all tasks", *DOMAIN_TASKS, "other"):
        row = dict(tasks=label)
        for algo in algos:
            per_task = [[s["rat"] for s in summaries] for (key_algo, task), summaries in sorted(results.items())
                        if key_algo == algo and label in ("all tasks", domain_of(task))]
            if not per_task:
                continue
            scores = np.concatenate(per_task)
            value, low, high = iqm_interval(per_task)
            row |= {f"{algo} tasks": len(per_task), f"{algo} runs": len(scores), f"{algo} mean ± std": mean_std(scores.tolist()),
                    f"{algo} IQM": round(value, 1), f"{algo} 95% CI": f"[{low:.1f}, {high:.1f}]"}
            if label == "all tasks":
                profiles[algo] = per_task
        if len(row) > 1:
            rows.append(row)
    write_table(rows, os.path.join(out_dir, "statistics"),
                f"RAT: interquartile mean (IQM) with {CONFIDENCE:.0%} stratified bootstrap confidence intervals over seeds"
                f" ({BOOTSTRAP_REPS:,} resamples of each task's runs, seed {BOOTSTRAP_SEED}; Agarwal et al. 2021), beside"
                f" mean ± std over the runs. Preset: {presets_of(results)}")
    plot_profiles(profiles, os.path.join(out_dir, "performance_profile.png"))
    return rows


def plot_profiles(profiles: dict, path: str):
    """The performance profile (Agarwal et al. 2021, Fig. 5): fraction of runs with normalised score > tau, vs tau."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = np.concatenate([np.concatenate(per_task) for per_task in profiles.values()])
    taus = np.linspace(min(0.0, scores.min()), max(100.0, scores.max()), 201)
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    for algo, per_task in profiles.items():
        profile, low, high = performance_profile(per_task, taus)
        axis.plot(taus, profile, label=f"EDP + {algo.upper()} ({len(per_task)} tasks)")
        axis.fill_between(taus, low, high, alpha=0.2)
    axis.set_xlabel("normalized score (RAT) tau")
    axis.set_ylabel("fraction of runs with score > tau")
    axis.set_title(f"Performance profile, {CONFIDENCE:.0%} stratified bootstrap bands", fontsize=9)
    axis.set_ylim(0, 1.02)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def presets_of(results: dict) -> str:
    """Which preset made the runs of a table, e.g. "released (60 runs)", and how many ran on a replica."""
    counts, replicas = {}, 0
    for summaries in results.values():
        for summary in summaries:
            preset = summary["config"].get("preset", "paper")
            counts[preset] = counts.get(preset, 0) + 1
            dataset = summary.get("task", {}).get("dataset", {}) if isinstance(summary.get("task"), dict) else {}
            replicas += bool(isinstance(dataset, dict) and dataset.get("replica"))
    text = ", ".join(f"{preset} ({count} runs)" for preset, count in sorted(counts.items()))
    if replicas:
        text += (f". WARNING: {replicas} runs trained on structural REPLICAS of the datasets (make_demo_dataset.py),"
                 " not the real data: their scores are not the paper's")
    return text


def write_table(rows: list, path: str, caption: str):
    columns = list(dict.fromkeys(key for row in rows for key in row))
    text = lambda value: "-" if value is None or value == "" else str(value)  # noqa: E731
    with open(f"{path}.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, columns)
        writer.writeheader()
        writer.writerows([{key: text(row.get(key)) for key in columns} for row in rows])
    lines = [caption, "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(text(row.get(key)) for key in columns) + " |" for row in rows]
    with open(f"{path}.md", "w") as file:
        file.write("\n".join(lines) + "\n")


def plots(results: dict, out_dir: str) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.join(out_dir, "curves"), exist_ok=True)
    paths = []
    for task in sorted({key[1] for key in results}):
        algos = list(dict.fromkeys(key[0] for key in results if key[1] == task))
        figure, axes = plt.subplots(1, len(algos), figsize=(4.5 * len(algos), 3.4), squeeze=False)
        for axis, algo in zip(axes[0], algos):
            curves = []
            for summary in results[(algo, task)]:
                scores = np.array([e["normalized_score"] for e in summary["evaluations"]])
                running = np.array([scores[max(0, i - 9): i + 1].mean() for i in range(len(scores))])
                curves.append((np.array([e["step"] for e in summary["evaluations"]]), scores, running,
                               np.maximum.accumulate(scores)))
            length = min(len(curve[0]) for curve in curves)
            steps = curves[0][0][:length]
            for index, (label, color) in enumerate([("score", "#888888"), ("running average (RAT)", "#1f77b4"),
                                                    ("best so far (OMS)", "#d62728")], start=1):
                values = np.stack([curve[index][:length] for curve in curves])
                axis.plot(steps, values.mean(0), color=color, label=label)
                axis.fill_between(steps, values.min(0), values.max(0), color=color, alpha=0.15)
            axis.set_title(f"EDP + {algo.upper()} on {task} ({len(curves)} seeds)", fontsize=9)
            axis.set_xlabel("gradient steps")
            axis.set_ylabel("normalized score")
        axes[0][0].legend(fontsize=7)
        figure.tight_layout()
        path = os.path.join(out_dir, "curves", f"{task.replace('/', '-')}.png")
        figure.savefig(path, dpi=110)
        plt.close(figure)
        paths.append(path)
    return paths


def report(out_dir: str, runs: list):
    results = load_summaries(runs)
    if not results:
        print(f"no run of this configuration has finished under {out_dir}/runs yet")
        return
    tables(results, out_dir)
    overall = statistics(results, out_dir)[0]
    paths = plots(results, out_dir)
    with open(os.path.join(out_dir, "table2.md")) as file:
        print(file.read())
    for algo in (a for a in ALGORITHMS if f"{a} IQM" in overall):
        print(f"{algo}: IQM {overall[f'{algo} IQM']} {overall[f'{algo} 95% CI']} ({CONFIDENCE:.0%} stratified bootstrap"
              f" CI) over {overall[f'{algo} runs']} runs of {overall[f'{algo} tasks']} tasks; mean ± std"
              f" {overall[f'{algo} mean ± std']}")
    print(f"tables: {out_dir}/table2.md, table5.md, statistics.md (and .csv); performance profile:"
          f" {out_dir}/performance_profile.png; curves: {len(paths)} PNGs in {out_dir}/curves")


def main(args: Args):
    args.out_dir = args.out_dir or os.path.join("sweeps", args.preset)
    check(args)
    runs = plan(args)
    check_out_dir(args, runs)
    check_d4rl_files(args, runs)
    if args.dry_run:
        for run in runs:
            state = "finished, skip" if run.finished else ("resume" if run.interrupted else "start")
            if (not run.finished and run.task in DOMAIN_TASKS["locomotion"]
                    and not os.path.isfile(d4rl_file(args, run.task))):
                state = "no D4RL file" if args.d4rl_dir else "fetch, start"
            print(f"{state:15s} {' '.join(run.command[1:])}")
        missing = [] if args.d4rl_dir else missing_d4rl_files(args, runs)
        if missing:
            print(f"{len(missing)} D4RL files to download into {os.path.dirname(d4rl_file(args, missing[0]))} before the"
                  f" runs start")
        print(f"{len(runs)} runs")
        return
    stop = SweepStop()
    if not args.report_only:
        stop.install()
    try:
        failed = [] if args.report_only else sweep(args, runs, stop)
    except KeyboardInterrupt:  # Ctrl-C while Ray started, before the sweep's own handlers: no run began
        stop.signals.append(signal.SIGINT)
    if stop.signals:
        interrupted = sum(run.interrupted for run in runs)
        print(f"stopped by signal {stop.signals[0]}: every running run saved its checkpoint ({interrupted} runs to"
              f" resume); run the same command again to continue the sweep", file=sys.stderr, flush=True)
        sys.exit(130)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the tables: a stop now simply ends the process
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    report(args.out_dir, runs)  # the tables of the runs that finished, even when others failed
    if failed:
        print(f"error: {len(failed)} of {len(runs)} runs failed (see the reproduce.log in their folders)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main(tyro.cli(Args))
