"""D4RL's own HDF5 files of the paper's locomotion tasks: where D4RL keeps them, the address it downloads each from,
and a download that is resumable, atomic and checked.

    hopper-medium-replay -> $D4RL_DATASET_DIR/hopper_medium_replay-v2.hdf5 (default ~/.d4rl/datasets), fetched when
    missing from http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/hopper_medium_replay-v2.hdf5

Sources (Farama-Foundation/D4RL): d4rl/infos.py:297-300 builds DATASET_URLS['<robot>-<quality>-v2'] =
'http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/%s.hdf5' % '<robot>_<quality, - as _>-v2';
d4rl/offline_env.py:17, 31-34 keeps each file under its URL's name in $D4RL_DATASET_DIR, else ~/.d4rl/datasets.
EDP_D4RL_MIRROR replaces D4RL's host (the part before /gym_mujoco_v2/), for mirrors and for tests. HTTP is the
standard library's (urllib); nothing else is contacted.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Optional

D4RL_HOST = "http://rail.eecs.berkeley.edu/datasets/offline_rl"  # d4rl/infos.py:300
D4RL_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")  # what every -v2 locomotion file holds
# Rows (transitions) of D4RL's -v2 files, compared with the file read: a difference is said, never refused (a
# replica or a mirror's file still trains). None of these was read from the files themselves (this repository was
# written offline): medium, 1M samples each, as D4RL's paper (arXiv:2004.07219) describes its Gym-MuJoCo "medium"
# data ("collecting 1M samples"); medium-replay and hopper's medium-expert, the sizes widely reported for the -v2
# files, unchecked here; halfcheetah's medium-expert, medium + expert at 1M each (halfcheetah never falls, so no
# episode ends early). walker2d's medium-expert is left out: its size could not be confirmed, so it is not compared.
D4RL_ROWS = {
    "halfcheetah-medium": 1_000_000, "hopper-medium": 1_000_000, "walker2d-medium": 1_000_000,
    "halfcheetah-medium-replay": 202_000, "hopper-medium-replay": 402_000, "walker2d-medium-replay": 302_000,
    "halfcheetah-medium-expert": 2_000_000, "hopper-medium-expert": 1_999_906,
}
CHUNK = 1 << 20
TRIES_WITHOUT_PROGRESS = 3  # an interrupted download resumes at once; three tries that gain nothing end it


class DownloadError(Exception):
    """The file could not be fetched or is not D4RL's file: one line (tasks.py makes it a UsageError)."""


def file_name(task: str) -> str:
    """hopper-medium-replay -> hopper_medium_replay-v2.hdf5 (the last part of D4RL's URL)."""
    robot, quality = task.split("-", 1)
    return f"{robot}_{quality.replace('-', '_')}-v2.hdf5"


def url(task: str) -> str:
    base = os.environ.get("EDP_D4RL_MIRROR") or D4RL_HOST
    return f"{base.rstrip('/')}/gym_mujoco_v2/{file_name(task)}"


def cache_dir() -> str:
    return os.path.expanduser(os.environ.get("D4RL_DATASET_DIR") or os.path.join("~", ".d4rl", "datasets"))


def local_path(task: str) -> str:
    return os.path.join(cache_dir(), file_name(task))


def fetch(task: str, quiet: bool = False) -> str:
    """The path of the task's D4RL file in the cache folder, downloaded first when missing. Runs fetching the same file
    at once wait for each other (a lock beside it); a partial download stays as <file>.part and is resumed."""
    path = local_path(task)
    if os.path.isfile(path):
        return path
    if os.path.lexists(path):  # a folder or a dangling link where the file belongs: never replaced
        raise DownloadError(f"{path} is not a file; move it away, or pass --dataset-path")
    try:
        os.makedirs(cache_dir(), exist_ok=True)
        lock = open(f"{path}.lock", "a")
    except OSError as error:
        raise DownloadError(f"cannot write to the D4RL folder {cache_dir()} ({error.strerror or error}); set"
                            " D4RL_DATASET_DIR to a writable folder, or pass --dataset-path") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.isfile(path):  # another run may have fetched it while this one waited
            download(url(task), path, task, quiet)
    return path


def offline_hint(task: str) -> str:
    return (f"fetch {url(task)} where there is internet and put it at {local_path(task)} (or set D4RL_DATASET_DIR or"
            f" EDP_D4RL_MIRROR, or pass --dataset-path)")


def download(address: str, path: str, task: str, quiet: bool = False):
    """address -> path: into path.part (resumed with an HTTP Range where the server allows, restarted where not),
    checked (the length the server announced, an HDF5 file with D4RL's keys), then renamed to path."""
    from tqdm import tqdm

    part, failures, total, said = f"{path}.part", 0, None, quiet
    while True:
        have = os.path.getsize(part) if os.path.exists(part) else 0
        request = urllib.request.Request(address, headers={"Range": f"bytes={have}-"} if have else {})
        gained, ended = 0, False
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                if response.status == 206 and content_range_start(response) != have:  # not the part asked for
                    os.remove(part)
                    continue
                resumed = response.status == 206
                if not said:  # once the server answers: offline, the one line is the error's
                    print(f"downloading D4RL's {os.path.basename(path)} from {address} to {path}", file=sys.stderr,
                          flush=True)
                    said = True
                total = announced_total(response, have if resumed else 0)
                with open(part, "ab" if resumed else "wb") as file, tqdm(
                        total=total, initial=have if resumed else 0, unit="B", unit_scale=True, unit_divisor=1024,
                        desc=os.path.basename(path), disable=quiet, mininterval=1.0, file=sys.stderr) as bar:
                    while chunk := response.read(CHUNK):
                        file.write(chunk)
                        gained += len(chunk)
                        bar.update(len(chunk))
                ended = True
        except urllib.error.HTTPError as error:
            if error.code == 416 and have:  # nothing after byte `have`: complete already, or another file's start
                total = announced_total(error, 0)
                if total == have:
                    break
                os.remove(part)
                continue
            raise DownloadError(f"{address} answered HTTP {error.code} ({error.reason}); {offline_hint(task)}") from None
        except (urllib.error.URLError, OSError) as error:  # no network, refused, reset, timed out, a full disk
            reason = getattr(error, "reason", None) or error.strerror or error
            if (not have and not gained) or (not gained and failures + 1 >= TRIES_WITHOUT_PROGRESS):
                kept = f" ({have:,} bytes received are kept in {part} and resumed next time)" if have else ""
                raise DownloadError(f"D4RL's {os.path.basename(path)} is not in {cache_dir()} and could not be"
                                    f" downloaded from {address} ({type(error).__name__}: {reason}); {offline_hint(task)}"
                                    f"{kept}") from None
        size = os.path.getsize(part) if os.path.exists(part) else 0
        if size == total or (total is None and ended):  # complete (a server that announces no length: as sent)
            break
        if total is not None and size > total:  # more than announced: the partial file was another file's
            os.remove(part)
        failures = 0 if gained else failures + 1
        if failures >= TRIES_WITHOUT_PROGRESS:
            raise DownloadError(f"the download of {address} stops early ({size:,} of {total or '?'} bytes after"
                                f" {TRIES_WITHOUT_PROGRESS} tries without progress); run again to resume, or"
                                f" {offline_hint(task)}")
        if not quiet:
            print(f"the download was cut at {size:,} of {total or '?'} bytes; resuming", file=sys.stderr, flush=True)
        time.sleep(min(2.0 ** failures - 1, 8.0))
    problem = check_file(part)
    if problem:
        os.remove(part)
        raise DownloadError(f"the file downloaded from {address} is not D4RL's HDF5 file ({problem}); it was removed."
                            f" Check EDP_D4RL_MIRROR, or {offline_hint(task)}")
    os.replace(part, path)


def content_range_start(response) -> Optional[int]:
    """The first byte of a 206 answer (Content-Range: bytes START-END/TOTAL), or None."""
    try:
        return int(response.headers.get("Content-Range", "").split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def announced_total(response, offset: int) -> Optional[int]:
    """The whole file's length: Content-Range's total, else offset + Content-Length; None if the server says neither."""
    total = response.headers.get("Content-Range", "").rpartition("/")[2]
    if total.isdigit():
        return int(total)
    length = response.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def check_file(path: str) -> Optional[str]:
    """None for an HDF5 file holding D4RL's arrays, else what is wrong with it."""
    import h5py

    try:
        with h5py.File(path, "r") as file:
            missing = [key for key in D4RL_KEYS if key not in file]
    except (OSError, ValueError) as error:
        return f"not HDF5: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
    return f"it lacks {', '.join(missing)}" if missing else None


def rows_note(task: str, rows: int) -> Optional[str]:
    """A line when a file's row count is not that of D4RL's file for the task (None where equal or not known)."""
    expected = D4RL_ROWS.get(task)
    if expected is None or rows == expected:
        return None
    return f"{rows:,} rows where D4RL's {file_name(task)} holds {expected:,}: not D4RL's file as published"
