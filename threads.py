"""torch's CPU threads: a count fixed for the run, so that the same command and seed give the same numbers whatever
else the machine runs (README, Speed), or, with --threads 0, one that follows the machine's load."""

from __future__ import annotations

import os
import sys
import time
from typing import Optional

import torch


class CpuThreads:
    """torch's intra-op threads: N, fixed for the run; or, with 0 (the scripts' default), all of them while this
    process has the CPUs and one while other processes are busy too, where check() finds that both counts give the
    run's updates and actions the same bits (else 1, fixed).

    Two teams of OpenMP threads on the same cores spin at every parallel op, each waiting for a thread the other
    team holds: two EDP runs side by side on 2 cores each kept 23% of their solo speed with 2 threads, and 89% with
    one, which alone is 29% slower (benchmark_speed.py, side by side). So: measure, every few seconds, how many
    cores other processes keep busy (/proc/stat less this process's own CPU time) and choose.
    """

    def __init__(self, threads: int, interval: float = 2.0):
        # on CPUs whose kernels split their sums by thread count, a count that follows the load takes the numbers with
        # it (one seed gave 4.532 and 4.421 on an AVX-512 machine): check() decides whether 0 may adapt
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

    def check(self, agent, batch: dict, states: torch.Tensor) -> str:
        """With 0: adapt only if 1 and all threads give one update() and act() of this run the same bits here; else
        keep 1 thread, fixed, and say so. Returns the task card's words for the thread count."""
        if not self.adapt:
            return f"{torch.get_num_threads()}, fixed"
        if thread_count_changes_numbers(agent, batch, states, self.most):
            self.adapt = False
            torch.set_num_threads(1)
            print(f"note: --threads 0: on this CPU 1 and {self.most} threads give this run's updates other numbers, so it"
                  f" keeps 1 thread, fixed (the same numbers whatever else runs); --threads {self.most} is faster alone",
                  flush=True)
            return f"1, fixed (1 and {self.most} threads give other numbers on this CPU)"
        return f"1 to {self.most}, following the load (both give this run's updates the same bits here, checked at start)"

    def tick(self):
        """Called every training step; costs one clock read except every `interval` seconds."""
        if not self.adapt or time.monotonic() < self.next_check:
            return
        now = self.usage()
        wall, machine, own = (new - old for new, old in zip(now, self.last))
        self.last, self.next_check = now, now[0] + self.interval
        torch.set_num_threads(1 if (machine - own) / wall > 0.5 else self.most)


def run_threads(config, checkpoint: Optional[dict]) -> int:
    """--threads, or the count a resumed run was saved with (the numbers depend on it on some CPUs), else 0."""
    saved = checkpoint["config"].get("threads") if checkpoint is not None else None
    saved = saved if isinstance(saved, int) and not isinstance(saved, bool) and saved >= 0 else None
    if config.threads is None:
        return 0 if saved is None else saved
    if saved is not None and config.threads != saved:
        print(f"note: --threads {config.threads} where the run was saved with {saved}: on CPUs whose kernels depend on"
              " the thread count, the numbers from here on may differ from a straight run's", file=sys.stderr, flush=True)
    return config.threads


def thread_count_changes_numbers(agent, batch: dict, states: torch.Tensor, most: int) -> bool:
    """Whether one update() and one act() give other bits with `most` threads than with one, from the same state and
    random draws: the kernels at the run's own shapes, on this CPU. The agent, the generators and the thread count
    are put back afterwards, so the run computes what it would have without this check."""
    tensors = agent.state_tensors()
    saved, generator, threads = [tensor.detach().clone() for tensor in tensors], torch.get_rng_state(), torch.get_num_threads()

    def outcome(count: int) -> list:
        torch.set_num_threads(count)
        torch.set_rng_state(generator)
        with torch.no_grad():
            for tensor, value in zip(tensors, saved):
                tensor.copy_(value)
        agent.update(batch)
        action = agent.act(states)
        return [tensor.detach().clone() for tensor in tensors] + [action]

    try:
        return any(not torch.equal(one, many) for one, many in zip(outcome(1), outcome(most)))
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(generator)
        with torch.no_grad():
            for tensor, value in zip(tensors, saved):
                tensor.copy_(value)
