"""Checkpoints: what a run saves (written atomically, so a crash never leaves half a file) and what reading one back
checks (data only, this script's, the same configuration and data, evaluations that are evaluations), and the
random state that makes a resume exact. Every refusal is one line (a UsageError)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import random
import types
import typing
from typing import Optional

import numpy as np
import torch

from flags import flag
from errors import UsageError, one_line


class SaveFailed(Exception):
    """A checkpoint or summary.json could not be written (full or read-only disk): exit code 1; the last good files stay."""


# a resumed run keeps its saved configuration; only these flags may differ from it
# (--torch-deterministic is not among them: on CUDA it changes the numbers from the step it is changed at)
RESUMABLE = ("total_steps", "eval_every", "log_every", "wandb_mode", "wandb_project", "wandb_group", "wandb_entity",
             "device", "compile", "threads", "capture_video", "resume", "run_dir")


CHECKPOINT_KEYS = ("algo", "env", "config", "agent", "statistics", "evaluations", "wandb_id", "rng")
# A checkpoint's "pending_evaluation": the step whose evaluation a stop cut short (None: none). The evaluation belongs
# to its step, so --resume redoes it before training on: a stopped and resumed run has the straight run's history.


def last_good_checkpoint(run_dir: str) -> str:
    path = os.path.join(run_dir, "checkpoint_last.pt")
    return f"the last good checkpoint is {path}" if os.path.isfile(path) else "no checkpoint was saved"


def atomic_write(path: str, content):
    """torch.save (or JSON for a .json path) to a temporary file, then rename: a reader never sees half a file, and a
    failed write leaves none."""
    temporary = f"{path}.tmp"
    try:
        if path.endswith(".json"):
            with open(temporary, "w") as file:
                json.dump(content, file, indent=1, allow_nan=False)
        else:
            torch.save(content, temporary)
        os.replace(temporary, path)
    except (OSError, RuntimeError) as error:  # a full or read-only disk; torch.save reports it as a RuntimeError
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise SaveFailed(f"cannot write {path} ({one_line(error)}); {last_good_checkpoint(os.path.dirname(path))}") from None


def read_checkpoint(path: str, purpose: str, algorithm: str) -> dict:
    """A checkpoint of this script, if it is data only (tensors, numbers, strings, lists, dicts)."""
    if not os.path.isfile(path):
        raise UsageError(f"{purpose}: no checkpoint at {path}")
    try:  # weights_only: unpickling anything more than data could run code the file names
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UsageError(f"{purpose}: refused {path}: it holds objects other than tensors, numbers, strings, lists and"
                         " dicts, and loading them could run code") from None
    except Exception as error:
        raise UsageError(f"{purpose}: {path} is not a usable checkpoint ({one_line(error)})") from None
    if not (isinstance(checkpoint, dict) and set(CHECKPOINT_KEYS) <= set(checkpoint)
            and isinstance(checkpoint["config"], dict)):
        raise UsageError(f"{purpose}: {path} is not a checkpoint of these scripts")
    if checkpoint["algo"] != algorithm:
        raise UsageError(f"{purpose}: {path} belongs to {checkpoint['algo']}, not {algorithm}")
    return checkpoint


def checkpoint_evaluations(checkpoint: dict, path: str) -> tuple:
    """A checkpoint's evaluation history and pending evaluation, checked: a list of evaluations (dicts with an int
    step and finite scores, steps increasing, none past the checkpoint's step) and None or the checkpoint's step."""
    evaluations, pending = checkpoint["evaluations"], checkpoint.get("pending_evaluation")
    step = checkpoint["agent"].get("step") if isinstance(checkpoint["agent"], dict) else None
    number = lambda value: isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)  # noqa: E731
    if not (isinstance(step, int) and not isinstance(step, bool) and step >= 0):
        raise UsageError(f"{path}: its agent's step is not a step count")
    if not (isinstance(evaluations, list) and all(
            isinstance(e, dict) and isinstance(e.get("step"), int) and not isinstance(e.get("step"), bool)
            and number(e.get("normalized_score")) and number(e.get("return")) for e in evaluations)):
        raise UsageError(f"{path}: its evaluations are not a list of evaluations (each a dict with an int step, a"
                         " finite normalized_score and return)")
    steps = [e["step"] for e in evaluations]
    if steps != sorted(set(steps)) or (steps and not 0 < steps[-1] <= step):
        raise UsageError(f"{path}: its evaluations' steps {steps[:3]}...{steps[-3:]} are not increasing steps up to the"
                         f" checkpoint's step {step}")
    if pending is not None and not (pending == step and type(pending) is int and (not steps or steps[-1] < step)):
        raise UsageError(f"{path}: its pending evaluation {pending!r} is not the checkpoint's step {step}")
    return evaluations, pending


def check_resume(config, checkpoint: dict, path: str, algorithm: str):
    """A resume continues the saved configuration on the same data, or is refused naming what differs."""
    if checkpoint["env"] != config.env:
        raise UsageError(f"--resume: {path} belongs to {checkpoint['algo']} on {checkpoint['env']},"
                         f" not {algorithm} on {config.env}")
    saved = checkpoint["config"]
    changed = [f"{flag(key)}: saved {saved.get(key)}, given {value}"
               for key, value in dataclasses.asdict(config).items() if key not in RESUMABLE and saved.get(key) != value]
    if changed:
        raise UsageError(f"--resume continues the saved configuration, and these flags differ from it: {'; '.join(changed)}"
                         f" (only {', '.join(map(flag, RESUMABLE))} may change)")


def checkpoint_statistics(checkpoint: dict, path: str) -> dict:
    """The normalisation statistics a checkpoint was trained with, checked: finite tensors of the saved keys."""
    statistics = checkpoint["statistics"]
    keys = ("observation_mean", "observation_std", "observation_clip", "action_low", "action_high")
    if not (isinstance(statistics, dict) and all(isinstance(statistics.get(key), torch.Tensor) for key in keys)):
        raise UsageError(f"{path}: its normalisation statistics are incomplete")
    if not all(torch.isfinite(statistics[key]).all() for key in keys if key != "observation_clip"):
        raise UsageError(f"{path}: its normalisation statistics hold NaN or inf")
    return {key: statistics[key].numpy() for key in keys}


def matches(value, hint) -> bool:
    """Whether a value read from a file is of a flag's type (Optional, Literal, bool, int, float, str)."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return value in arguments
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, argument) for argument in arguments)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def saved_config(args_class, checkpoint: dict, path: str):
    """The configuration a checkpoint was made with, as the script's Args, each value of its flag's type."""
    hints = typing.get_type_hints(args_class)
    values = {key: value for key, value in checkpoint["config"].items() if key in hints}
    wrong = [f"{flag(key)} = {value!r}" for key, value in values.items() if not matches(value, hints[key])]
    if wrong:
        raise UsageError(f"{path}: its saved configuration holds values of the wrong type: {', '.join(wrong)}")
    return args_class(**values)


def check_same_data(card: dict, checkpoint: dict, path: str):
    saved = checkpoint.get("task", {}).get("dataset", {})
    if not saved:
        raise UsageError(f"--resume: {path} was made by an earlier version that kept no record of its data, so it"
                         " cannot be checked to continue on the same data; start a new run")
    for key in ("id", "fingerprint"):
        if saved.get(key) != card["dataset"][key]:
            raise UsageError(f"--resume: the data differ from those {path} was trained on (dataset {key}: saved"
                             f" {saved.get(key)}, now {card['dataset'][key]}); start a new run")


def rng_state() -> dict:
    """The generators a run draws from (torch's, CUDA's, Python's), in a form weights_only loads."""
    return dict(python=random.getstate(), torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])


def set_rng_state(state: dict):
    random.setstate(tuple(tuple(part) if isinstance(part, list) else part for part in state["python"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def restore(agent, checkpoint: Optional[dict], config, path: str = "the checkpoint"):
    """An agent, its contract checked (agents.Agent), with its weights, optimisers, step and the random state from a
    checkpoint. A checkpoint that is data but does not fit (missing keys, other shapes, wrong types) is one line."""
    agent.check_contract()
    if checkpoint is not None:
        try:
            agent.load_state_dict(checkpoint["agent"])
            set_rng_state(checkpoint["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as error:
            raise UsageError(f"{path} does not fit this configuration ({one_line(error)})") from None
    return agent
