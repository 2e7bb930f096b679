"""Runs: the run folder (locked while a run holds it), the run around a script's training loop (data on the device,
evaluation, checkpoints and summary.json, wandb, stops by signal), --eval-only, and main(): bad input as one line.
What a checkpoint holds and how it is read back is checkpoints.py; torch's CPU threads, threads.py.

A script's training loop holds a `Run`:

    with Run(config, ALGORITHM) as run:  # folder, data, evaluator, wandb, signal handlers
        config = run.config  # as the run completed it: its folder, its thread count
        agent = run.start(MyAgent(run.state_dim, run.action_dim, config, run.device))  # contract checked, --resume restores it
        for step in range(int(agent.step_count) + 1, config.total_steps + 1):
            run.log_training(step, agent.update(run.buffer.sample(config.batch_size)))
            if run.evaluation_due(step):
                run.evaluate(step)  # EAS episodes, RAT / OMS, checkpoints, summary.json
            if run.stopping:
                break  # leaving the block saves checkpoint_last.pt
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import time
from typing import Callable, Optional

import numpy as np
import torch
import tyro

from agents import should_compile
from flags import flag, resolve_config
from evaluation import EvaluationStopped, Evaluator, summarize
from checkpoints import (SaveFailed, atomic_write, check_resume, check_same_data, checkpoint_evaluations,
                         checkpoint_statistics, last_good_checkpoint, read_checkpoint, restore, rng_state, saved_config,
                         set_rng_state)
from errors import UsageError, one_line
from threads import CpuThreads, run_threads
from tasks import TASKS, find_task, prepare_data


class Diverged(Exception):
    """A NaN or inf loss: reported with its step, exit code 1; the last good checkpoint is kept."""


class Stopped(Exception):
    """A stop (SIGINT / SIGTERM) before the training loop began (while compiling, or redoing an evaluation on
    resume): Run.__exit__ saves the checkpoint and ends the run as a stop in the loop would."""


# --eval-only keeps the saved configuration but for these flags, where given on its command line
EVALUATION_FLAGS = ("eval_episodes", "eas_samples", "eas_temperature", "noise_scale", "policy_scale", "acting_policy",
                    "sampler", "dpm_steps", "dpm_order", "dpm_method", "dpm_skip", "eval_env", "eval_max_steps", "seed",
                    "device", "threads", "capture_video", "compile", "eval_terminations")
# --eval-only takes these besides the evaluation flags; any other flag would do nothing there, and is refused
EVAL_ONLY_MODE_FLAGS = ("eval_only", "checkpoint", "run_dir")
EAS_BATCH_LIMIT = 1_000_000  # --eval-episodes x --eas-samples: the states EAS scores at once (as --batch-size's limit)
RUN_FILES = ("summary.json", "checkpoint_best.pt", "checkpoint_last.pt")  # what makes a folder hold a run


# ==============================================================================================
# The run folder and its files
# ==============================================================================================
@contextlib.contextmanager
def lock_run_dir(run_dir: str, resume: bool):
    """Claim the run folder: run.lock, OS-locked (flock) for the run's length; a run refused before it wrote
    anything (bad data, impossible flags) leaves no empty folder behind."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise UsageError(f"--run-dir {run_dir} is a file, not a folder")
    if resume and not os.path.isdir(run_dir):
        raise UsageError(f"--resume: no checkpoint at {os.path.join(run_dir, 'checkpoint_last.pt')}")
    created = not os.path.isdir(run_dir)
    try:
        os.makedirs(run_dir, exist_ok=True)
        tempfile.TemporaryFile(dir=run_dir).close()  # writable: found out now, not at the first save
        lock = open(os.path.join(run_dir, "run.lock"), "a+")
    except OSError as error:
        raise UsageError(f"cannot write to the run folder {run_dir} ({error.strerror})") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise UsageError(f"{run_dir} is in use by another run (process {holder}); wait for it to end or choose another"
                         " --run-dir") from None
    earlier = [name for name in RUN_FILES if os.path.exists(os.path.join(run_dir, name))]
    if earlier and not resume:
        lock.close()
        raise UsageError(f"{run_dir} already holds a run ({', '.join(earlier)}): pass --resume to continue it, or choose"
                         " another --run-dir")
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")  # the holder, named to a run that is refused
    lock.flush()
    with lock:
        try:
            yield
        except UsageError:  # refused before its first file (an agent's checks, its contract): what it made goes too
            if created and not any(os.path.exists(os.path.join(run_dir, name)) for name in RUN_FILES):
                shutil.rmtree(run_dir, ignore_errors=True)  # wandb's offline folder, the lock (removed while held)
            raise
        finally:
            if created and os.path.isdir(run_dir) and os.listdir(run_dir) == ["run.lock"]:  # removed while still locked
                os.remove(lock.name)
                os.rmdir(run_dir)


def check_evaluation_flags(config):
    """Before any work: EAS's batch (--eval-episodes x --eas-samples) must fit, each within its own limit or not."""
    if config.eval_episodes * config.eas_samples > EAS_BATCH_LIMIT:
        raise UsageError(f"--eval-episodes {config.eval_episodes} x --eas-samples {config.eas_samples} ="
                         f" {config.eval_episodes * config.eas_samples:,} actions scored at once would not fit in memory"
                         f" (at most {EAS_BATCH_LIMIT:,}); give smaller values")


def warn_horizon(config, task):
    """An evaluation horizon other than D4RL's on a paper task is said in one line: its scores are then not D4RL's."""
    horizon = config.eval_max_steps
    if task.horizon is not None and horizon is not None and horizon != task.horizon:
        given = f"--eval-max-steps {horizon}" + (" (the env's own limit)" if horizon == 0 else "")
        print(f"warning: {given} where D4RL evaluates {task.name} over"
              f" {task.horizon} steps: its normalised scores are then not D4RL's (its reference returns were measured"
              f" over {task.horizon} steps)", file=sys.stderr, flush=True)


# ==============================================================================================
# Random state and threads
# ==============================================================================================
def seed_everything(config):
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    if config.torch_deterministic:  # cuBLAS needs a fixed workspace to be deterministic
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(config.torch_deterministic)
    torch.backends.cudnn.benchmark = not config.torch_deterministic


class CompileInterrupted(BaseException):
    """A stop during compilation (Run.compile_now): raised by its signal handler to end the compile at once."""


def compile_if_it_pays(agent, config, steps_left: int) -> float:
    """--compile: compile the agent when it pays (agents.should_compile); returns when compiling began, or 0."""
    if not should_compile(config.compile, steps_left, torch.device(config.device)):
        return 0.0
    print(f"compiling the update step and EAS acting (--compile {config.compile}, {steps_left:,} steps to go);"
          " the first step takes a while", flush=True)
    agent.compile()
    return time.perf_counter()


def print_task_card(card: dict):
    print("task:\n" + "\n".join(f"  {key}: {value}" for key, value in card.items()), flush=True)


# ==============================================================================================
# A training run
# ==============================================================================================
class Run:
    """Everything around a script's training loop (see the module's docstring): the locked run folder, the data on
    the device, the evaluator, wandb, metric logging with a NaN watch, evaluation with checkpoints and
    summary.json, and SIGINT / SIGTERM, which end the loop after the current step (or evaluation step) with a
    checkpoint saved."""

    def __init__(self, config, algorithm: str):
        self.config, self.algorithm, self.task = config, algorithm, find_task(config.env, config.dataset_path)
        self.run_dir = config.run_dir or os.path.join(
            "runs", f"{config.env.replace('/', '-')}__{algorithm}__{config.seed}__{time.strftime('%Y%m%d-%H%M%S')}")
        self.stop_signal, self.agent, self.finished = [], None, False

    def __enter__(self) -> Run:
        self.exits = contextlib.ExitStack()
        self.exits.enter_context(lock_run_dir(self.run_dir, self.config.resume))
        try:
            self.set_up()
        except BaseException:
            self.exits.close()
            raise
        return self

    def set_up(self):
        config = self.config = dataclasses.replace(self.config, run_dir=self.run_dir)
        checkpoint_path = os.path.join(self.run_dir, "checkpoint_last.pt")
        self.checkpoint = read_checkpoint(checkpoint_path, "--resume", self.algorithm) if config.resume else None
        if self.checkpoint is not None:
            check_resume(config, self.checkpoint, checkpoint_path, self.algorithm)
            checkpoint_evaluations(self.checkpoint, checkpoint_path)  # before the data are read
        config = self.config = dataclasses.replace(config, threads=run_threads(config, self.checkpoint))
        check_evaluation_flags(config)
        self.config_dict = dataclasses.asdict(config) | {"algo": self.algorithm, "domain": self.task.domain}
        print(f"{self.algorithm} configuration:\n{json.dumps(self.config_dict, indent=2)}", flush=True)
        seed_everything(config)
        self.buffer, self.data, self.statistics = prepare_data(config, self.task)
        data = self.data
        self.card = data.card | {"preset": config.preset}
        if self.checkpoint is not None:
            check_same_data(self.card, self.checkpoint, checkpoint_path)
            self.statistics = checkpoint_statistics(self.checkpoint, checkpoint_path)
        print_task_card(self.card)
        warn_horizon(config, self.task)
        self.state_dim, self.action_dim = self.buffer.tensors["observations"].shape[1], self.buffer.tensors["actions"].shape[1]
        self.device = torch.device(config.device)
        self.evaluator = make_evaluator(config, data, self.statistics, self.task, os.path.join(self.run_dir, "videos"))
        self.exits.callback(self.evaluator.close)
        self.evaluations, self.pending = (checkpoint_evaluations(self.checkpoint, checkpoint_path) if self.checkpoint
                                          else ([], None))
        self.wandb_id = self.checkpoint["wandb_id"] if self.checkpoint else secrets.token_hex(4)
        import wandb

        try:
            self.wandb = wandb.init(project=config.wandb_project, entity=config.wandb_entity, mode=config.wandb_mode,
                                    dir=self.run_dir, id=self.wandb_id, resume="allow", name=os.path.basename(self.run_dir),
                                    group=config.wandb_group, config=self.config_dict | {"task": self.card}, save_code=True)
        except wandb.errors.Error as error:  # e.g. --wandb-mode online without an API key
            raise UsageError(f"wandb could not start ({one_line(error)}); --wandb-mode offline needs no account") from None
        self.exits.callback(lambda: self.wandb.finish(exit_code=0 if self.finished else 1))  # wandb hears a crash
        previous = {signum: signal.signal(signum, lambda signum, frame: self.stop_signal.append(signum))
                    for signum in (signal.SIGINT, signal.SIGTERM)}
        # once stopping, a further signal must not cut the exit short (main() restores the caller's handlers)
        self.exits.callback(lambda: [signal.signal(signum, signal.SIG_IGN if self.stop_signal else handler)
                                     for signum, handler in previous.items()])
        self.metric_sums, self.metric_count = {}, 0
        self.first_nonfinite = torch.full((), -1, dtype=torch.long, device=self.device)  # step of a NaN/inf loss
        self.threads = CpuThreads(config.threads)

    def start(self, agent):
        """The agent this run trains: restored from the checkpoint with --resume, compiled with --compile."""
        from tqdm import tqdm

        self.agent = restore(agent, self.checkpoint, self.config, os.path.join(self.run_dir, "checkpoint_last.pt"))
        self.buffer.add(agent.transition_columns(self.data))  # the script's own per-transition fields, if any
        done = int(agent.step_count)
        self.compile_started = compile_if_it_pays(agent, self.config, self.config.total_steps - done)
        if self.compile_started:
            self.compile_now(agent)
        if self.device.type == "cpu":  # --threads 0 adapts only where the count leaves the numbers alone
            with torch.random.fork_rng(devices=[]):  # the check's batch is not drawn from the run's generator
                batch = self.buffer.sample(self.config.batch_size)
            states = self.buffer.tensors["observations"][:self.config.eval_episodes]
            self.card["cpu_threads"] = self.threads.check(agent, batch, states)
        self.progress = tqdm(total=self.config.total_steps, initial=done, unit="step", dynamic_ncols=True, mininterval=1.0,
                             disable=not sys.stderr.isatty())  # in a log file, log_training writes plain lines
        self.log_clock = time.perf_counter()
        self.exits.callback(self.progress.close)
        if self.pending is not None:  # a stop cut the evaluation of this step short: it is redone before training on
            self.evaluate(self.pending)
        elif self.evaluations and self.evaluations[-1]["step"] == done and not self.published():
            self.publish(done)  # the save after the last evaluation failed part way (full disk): finish it
        if self.stopping:
            raise Stopped
        return agent

    def compile_now(self, agent):
        """Compile update() and act() now, before training, by calling each once on a batch of the data and on a
        batch of evaluation states; every tensor of the agent and every random generator is put back afterwards, so
        the run computes what it would have without this call. SIGINT / SIGTERM interrupt the compilation (which can
        take minutes) within seconds: the agent is put back as it was and the run ends with its checkpoint."""
        tensors = agent.state_tensors()
        saved, generators, numpy_state = [tensor.detach().clone() for tensor in tensors], rng_state(), np.random.get_state()

        compiling = [True]

        def interrupt(signum, frame):
            self.stop_signal.append(signum)
            if compiling[0]:  # once: a second signal does not cut the clean-up short
                compiling[0] = False
                raise CompileInterrupted

        handlers = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            if not self.stopping:
                agent.update(self.buffer.sample(self.config.batch_size))
                agent.act(torch.zeros(self.config.eval_episodes, self.state_dim, device=self.device))
            compiling[0] = False
        except CompileInterrupted:
            torch._dynamo.reset()  # the half-made graphs are dropped
        finally:
            compiling[0] = False
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            with torch.no_grad():
                for tensor, value in zip(tensors, saved):
                    tensor.copy_(value)
            set_rng_state(generators)
            np.random.set_state(numpy_state)
        if self.stopping:
            raise Stopped
        print(f"compiled the update step and EAS acting in {time.perf_counter() - self.compile_started:.0f} s", flush=True)
        self.compile_started = 0.0

    def published(self) -> bool:
        """Whether summary.json describes the evaluations the checkpoint holds (it is written last)."""
        try:
            with open(os.path.join(self.run_dir, "summary.json")) as file:
                summary = json.load(file)
            return summary["evaluations"] == self.evaluations and summary["final_step"] == self.evaluations[-1]["step"]
        except (OSError, ValueError, KeyError, TypeError):
            return False

    @property
    def stopping(self) -> bool:
        return bool(self.stop_signal)

    def evaluation_due(self, step: int) -> bool:
        return step % self.config.eval_every == 0 or step == self.config.total_steps

    def check_finite(self):  # one host sync per log interval, not per step
        if self.first_nonfinite.item() >= 0:
            raise Diverged(f"a loss became NaN or inf at step {self.first_nonfinite.item()};"
                           f" {last_good_checkpoint(self.run_dir)}")

    def log_training(self, step: int, metrics: dict):
        """Sums the update's metrics on the device; every --log-every steps (and before an evaluation) checks that
        no loss became NaN or inf and logs their means."""
        self.threads.tick()
        total_loss = sum(value for key, value in metrics.items() if key.endswith("loss"))
        self.first_nonfinite = torch.where((self.first_nonfinite < 0) & ~torch.isfinite(total_loss), step,
                                           self.first_nonfinite)
        self.metric_sums = {key: self.metric_sums.get(key, 0.0) + value for key, value in metrics.items()}
        self.metric_count += 1
        self.progress.update(1)
        if self.compile_started:  # the first compiled step has run: it compiled the graph
            self.progress.write(f"compiled the update step in {time.perf_counter() - self.compile_started:.0f} s")
            self.compile_started = 0.0
        if step % self.config.log_every == 0 or self.evaluation_due(step):
            self.check_finite()
            steps_per_second = self.metric_count / max(time.perf_counter() - self.log_clock, 1e-9)  # evaluations apart
            self.wandb.log({f"train/{key}": (value / self.metric_count).item() for key, value in self.metric_sums.items()}
                           | {"train/steps_per_second": steps_per_second}, step=step)
            if self.progress.disable:  # stderr is a file, not a terminal: a plain line instead of a redrawn bar
                print(f"step {step:,} of {self.config.total_steps:,}: {steps_per_second:.1f} steps/s", file=sys.stderr,
                      flush=True)
            self.metric_sums, self.metric_count, self.log_clock = {}, 0, time.perf_counter()

    def evaluate(self, step: int):
        """Energy-based action selection in the evaluation env; then checkpoint_last.pt (and checkpoint_best.pt at
        a new best) and summary.json. A stop during the evaluation leaves it pending: the stop checkpoint records
        it, and --resume redoes it before training on."""
        import wandb

        self.pending = step
        try:
            result = self.evaluator(self.agent.act, step, name=f"step{step}", stop=lambda: self.stopping)
        except EvaluationStopped:
            return
        self.pending = None
        self.evaluations.append(dict(step=step, **result))
        rat, oms = summarize(self.evaluations)
        video = {"eval/video": wandb.Video(result.pop("video"))} if "video" in result else {}
        self.wandb.log({f"eval/{key}": value for key, value in result.items()} | {"eval/rat": rat, "eval/oms": oms} | video,
                       step=step)
        self.progress.write(f"step {step}: normalized score {result['normalized_score']:.1f}, return"
                            f" {result['return']:.1f}, RAT {rat:.1f}, OMS {oms:.1f}")
        self.save("checkpoint_last.pt")  # the checkpoints first, then the summary of them
        self.publish(step)
        self.log_clock = time.perf_counter()  # training speed is of training steps alone

    def publish(self, step: int):
        """checkpoint_best.pt at a new best, then summary.json: the files that follow the checkpoint of an evaluation
        (also redone on resume when a failed save cut them short)."""
        rat, oms = summarize(self.evaluations)
        if self.evaluations[-1]["normalized_score"] >= oms:
            self.save("checkpoint_best.pt")
        atomic_write(os.path.join(self.run_dir, "summary.json"), dict(
            env=self.config.env, algo=self.algorithm, seed=self.config.seed, config=self.config_dict, task=self.card,
            evaluations=self.evaluations, rat=rat, oms=oms, final_step=step))

    def save(self, name: str):
        atomic_write(os.path.join(self.run_dir, name), dict(
            algo=self.algorithm, env=self.config.env, config=self.config_dict, task=self.card, agent=self.agent.state_dict(),
            evaluations=self.evaluations, pending_evaluation=self.pending,
            statistics={key: torch.as_tensor(value) for key, value in self.statistics.items()},
            wandb_id=self.wandb_id, rng=rng_state()))

    def __exit__(self, error_type, error, traceback) -> bool:
        stopped_early = error_type is Stopped  # in start(): compiling, or redoing an evaluation
        try:
            if (error_type is None or stopped_early) and self.stopping:  # saved while the handlers still catch signals
                self.check_finite()
                self.save("checkpoint_last.pt")
            self.finished = error_type is None or stopped_early
        finally:  # on every exit: progress bar, environments, wandb closed, signal handlers back, folder unlocked
            if error_type is UsageError:  # refused in start(): lock_run_dir removes a folder it made (README)
                self.exits.__exit__(error_type, error, traceback)
            else:
                self.exits.close()
        step = int(self.agent.step_count) if self.agent is not None else 0
        if self.stopping:
            print(f"stopped by signal {self.stop_signal[0]} at step {step}; checkpoint saved, continue with"
                  f" --resume --run-dir {self.run_dir}", file=sys.stderr, flush=True)
        self.result = dict(run_dir=self.run_dir, step=step, evaluations=self.evaluations,
                           stopped=self.stopping, agent=self.agent)
        return stopped_early


def make_evaluator(config, data, statistics: dict, task, video_folder: str) -> Evaluator:
    return Evaluator(data.make_env, config.eval_episodes, config.seed + 10_000, statistics, task.domain, data.score,
                     config.device, video_folder if config.capture_video else None)


# ==============================================================================================
# --eval-only and main()
# ==============================================================================================
def given_flags(argv: list) -> set:
    """The Args fields named on a command line (--flag, --flag=value, --no-flag)."""
    names = {token[2:].split("=", 1)[0] for token in argv if token.startswith("--")}
    return {name.removeprefix("no-").replace("-", "_") for name in names}


def evaluate_only(args, given: set, paper: dict, released: dict, agent_class, algorithm: str) -> dict:
    """--eval-only: a checkpoint evaluated with its run's configuration, the evaluation flags given on the command
    line overriding it; prints the scores and writes eval_<checkpoint>.json beside it."""
    if args.checkpoint is None and args.run_dir is None:
        raise UsageError("--eval-only needs --run-dir (its checkpoint_last.pt) or --checkpoint PATH")
    idle = sorted(given - set(EVALUATION_FLAGS) - set(EVAL_ONLY_MODE_FLAGS))
    if idle:
        raise UsageError(f"{', '.join(map(flag, idle))}: --eval-only evaluates a checkpoint with its run's own"
                         f" configuration, so this would do nothing; it takes --run-dir or --checkpoint and the evaluation"
                         f" flags ({', '.join(map(flag, EVALUATION_FLAGS))})")
    path = args.checkpoint or os.path.join(args.run_dir, "checkpoint_last.pt")
    checkpoint = read_checkpoint(path, "--eval-only", algorithm)
    overrides = {key: getattr(args, key) for key in EVALUATION_FLAGS if key in given}
    saved = saved_config(type(args), checkpoint, path)
    task = find_task(saved.env, saved.dataset_path)
    config = resolve_config(dataclasses.replace(saved, **overrides, eval_only=True, resume=False), task, paper, released)
    check_evaluation_flags(config)
    seed_everything(config)
    CpuThreads(run_threads(config, checkpoint))
    buffer, data, _ = prepare_data(config, task)
    statistics = checkpoint_statistics(checkpoint, path)
    warn_horizon(config, task)
    agent = agent_class(buffer.tensors["observations"].shape[1], buffer.tensors["actions"].shape[1], config,
                        torch.device(config.device))
    restore(agent, checkpoint, config, path)
    compile_if_it_pays(agent, config, 0)  # one evaluation: only --compile on compiles
    folder = os.path.dirname(os.path.abspath(path))
    evaluator = make_evaluator(config, data, statistics, task, os.path.join(folder, "videos"))
    step = int(agent.step_count)
    try:
        result = evaluator(agent.act, step, name=f"eval-only-step{step}")
    finally:
        evaluator.close()
    print(f"{path} ({config.env}, step {step}): normalized score {result['normalized_score']:.1f}, return"
          f" {result['return']:.1f} over {config.eval_episodes} episodes", flush=True)
    card = data.card | {"preset": config.preset}
    report = dict(checkpoint=path, algo=algorithm, env=config.env, step=step, overrides=overrides, result=result,
                  config=dataclasses.asdict(config), task=card)
    atomic_write(report_path(folder, os.path.splitext(os.path.basename(path))[0]), report)
    return dict(run_dir=folder, step=step, evaluations=[result], stopped=False, agent=agent)


def report_path(folder: str, checkpoint_name: str) -> str:
    """eval_<checkpoint>.json, or eval_<checkpoint>-2.json, -3, ... when earlier evaluations' files are there: an
    evaluation never replaces another's."""
    path, number = os.path.join(folder, f"eval_{checkpoint_name}.json"), 1
    while os.path.lexists(path):
        number += 1
        path = os.path.join(folder, f"eval_{checkpoint_name}-{number}.json")
    return path


def check_acting_flags(agent_class, given: set):
    """An algorithm without a critic (agents.Agent) acts by plain sampling: EAS's flags would do nothing."""
    eas = sorted(given & {"eas_samples", "eas_temperature"})
    if eas and agent_class.acts_without_critic():
        raise UsageError(f"{', '.join(map(flag, eas))}: {agent_class.__name__} has no critic, so it acts by sampling its"
                         " policy, not by energy-based action selection; drop the flag")


def interrupt_start_up(signum, frame):
    raise KeyboardInterrupt


def check_training_flags(args, given: set):
    """Flags that would do nothing while training: one line."""
    if args.checkpoint is not None:
        raise UsageError("--checkpoint names the checkpoint --eval-only evaluates; training starts anew, or continues a"
                         " run with --resume --run-dir DIR (its checkpoint_last.pt)")
    paper_task = next((task for task in TASKS.values() if task.minari_id is not None
                       and args.env.rsplit("-v", 1)[0] == task.minari_id.rsplit("-v", 1)[0]), None)
    if "terminals" in given and args.terminals == "d4rl" and args.env not in TASKS:
        raise UsageError(f"--terminals d4rl applies D4RL's rules to the paper's tasks, named as such; {args.env} is read"
                         " as a Minari dataset with its own terminations"
                         + (f": give --env {paper_task.name} for D4RL's" if paper_task else ": drop --terminals d4rl"))


def main(args_class, paper: dict, released: dict, agent_class, train: Callable, algorithm: str, description: str,
         argv: Optional[list] = None) -> int:
    """Parse the command line, fill the presets, train (or --eval-only); bad input is one line and exit code 2, a
    run that diverged or could not save exit code 1, a run stopped by a signal 130."""
    in_process, argv = argv is not None, sys.argv[1:] if argv is None else list(argv)
    args = tyro.cli(args_class, args=argv, description=description.split("\n\n")[0])
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    if handlers[signal.SIGTERM] == signal.SIG_DFL:  # SIGTERM during start-up ends it as Ctrl-C does: nothing left behind
        signal.signal(signal.SIGTERM, interrupt_start_up)
    try:
        if args.capture_video:  # headless rendering unless the user chose otherwise: MuJoCo by EGL, pygame without a display
            os.environ.setdefault("MUJOCO_GL", "egl")
            os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        if args.eval_only:
            check_acting_flags(agent_class, given_flags(argv))
            result = evaluate_only(args, given_flags(argv), paper, released, agent_class, algorithm)
        else:
            check_acting_flags(agent_class, given_flags(argv))
            check_training_flags(args, given_flags(argv))
            result = train(resolve_config(args, find_task(args.env, args.dataset_path), paper, released))
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (Diverged, SaveFailed) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the run's own handlers were in place: nothing was saved yet
        print("stopped during start-up; no checkpoint was written", file=sys.stderr)
        return 130
    finally:  # in-process callers get their handlers back; from the command line, a run stopped by a signal
        if in_process:  # ignores further ones until the process has exited (shutdown takes a moment)
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        elif signal.getsignal(signal.SIGTERM) == interrupt_start_up:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return 130 if result["stopped"] else 0
