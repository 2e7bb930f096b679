"""torch's CPU threads: a count fixed for the run, so that the same command and seed give the same numbers whatever
else the machine runs (README, Speed), or, with --threads 0, one that follows the machine's load."""

from __future__ import annotations

import os
import sys
import time
from typing import Optional

import torch


class CpuThreads:
    """torch's intra-op threads: N, fixed for the run (the scripts' default is 1); or, with 0, all of them while this
    process has the CPUs and one while other processes are busy too.

    Two teams of OpenMP threads on the same cores spin at every parallel op, each waiting for a thread the other
    team holds: two EDP runs side by side on 2 cores each kept 23% of their solo speed with 2 threads, and 89% with
    one, which alone is 29% slower (benchmark_speed.py, side by side). So: measure, every few seconds, how many
    cores other processes keep busy (/proc/stat less this process's own CPU time) and choose.
    """

    def __init__(self, threads: int, interval: float = 2.0):
        # with 0 the count follows the load, and on CPUs whose kernels split their sums by thread count so do the
        # numbers (one seed gave 4.532 and 4.421 on an AVX-512 machine); N >= 1 fixes both
        self.most = threads or torch.get_num_threads()  # torch's default honours OMP_NUM_THREADS
        torch.set_num_threads(self.most)
        self.adapt = threads == 0 and self.most > 1 and os.path.exists("/proc/stat")
        self.interval, self.next_check = interval, time.monotonic() + interval
        self.last = self.usage() if self.adapt else None

    @staticmethod
    def usage() -> tuple:
        """(wall seconds, CPU seconds of the whole machine, of this process)"""
        with open("/proc/stat") as file:  # cpu user nice system idle iowait irq softirq ...
            ticks = [int(value) for value in file.readline().split()[1:8]]
        busy = sum(ticks) - ticks[3] - ticks[4]
        return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), time.process_time()

    def tick(self):
        """Called every training step; costs one clock read except every `interval` seconds."""
        if not self.adapt or time.monotonic() < self.next_check:
            return
        now = self.usage()
        wall, machine, own = (new - old for new, old in zip(now, self.last))
        self.last, self.next_check = now, now[0] + self.interval
        torch.set_num_threads(1 if (machine - own) / wall > 0.5 else self.most)


def run_threads(config, checkpoint: Optional[dict]) -> int:
    """--threads, or the count a resumed run was saved with (the numbers depend on it on some CPUs), else 1."""
    saved = checkpoint["config"].get("threads") if checkpoint is not None else None
    saved = saved if isinstance(saved, int) and not isinstance(saved, bool) and saved >= 0 else None
    if config.threads is None:
        return 1 if saved is None else saved
    if saved is not None and config.threads != saved:
        print(f"note: --threads {config.threads} where the run was saved with {saved}: on CPUs whose kernels depend on"
              " the thread count, the numbers from here on may differ from a straight run's", file=sys.stderr, flush=True)
    return config.threads
