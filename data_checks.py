"""Checks of offline data as read from a file, before anything trains on it: numbers only, one row per transition,
the right dimensions, finite and of physical magnitude. Each failure is one line naming the array and row."""

import os

import numpy as np

from errors import UsageError


def check_dtype(key: str, value: np.ndarray, source: str):
    """Real numbers; booleans only where a flag belongs (terminals, timeouts, dones)."""
    if np.iscomplexobj(value) or not (np.issubdtype(value.dtype, np.number) or value.dtype == bool) or (
            value.dtype == bool and key in ("observations", "next_observations", "actions", "rewards")):
        raise UsageError(f"{source}: {key} holds {value.dtype}, not {'real ' if value.dtype.kind in 'bc' else ''}numbers")


def memory_bytes() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


LARGEST_VALUE = 1e9  # no physical observation, action or reward of these tasks comes near; 1e30 squares to inf


def check_arrays(arrays: dict, source: str):
    """Numbers only, one row per transition, the right number of dimensions, no NaN or inf and no absurd magnitudes
    (said by array and row)."""
    scalars = [key for key, value in arrays.items() if np.ndim(value) == 0]
    if scalars:  # an HDF5 scalar dataset where an array belongs
        raise UsageError(f"{source}: {', '.join(scalars)} is a single value, not an array with a row per transition")
    n = len(arrays["observations"])
    if n == 0:
        raise UsageError(f"{source} holds no transitions")
    for key, value in arrays.items():
        check_dtype(key, value, source)
        matrix = key in ("observations", "next_observations", "actions")
        if value.shape[:1] != (n,) or value.ndim != 1 + matrix:
            raise UsageError(f"{source}: {key} has shape {value.shape}; expected {'(N, d)' if matrix else '(N,)'}"
                             f" with N = {n}, as observations")
        finite = np.isfinite(value.reshape(n, -1)).all(1)
        if not finite.all():
            raise UsageError(f"{source}: {key} holds NaN or inf (row {int(np.flatnonzero(~finite)[0])})")
        huge = (np.abs(value.reshape(n, -1)) > LARGEST_VALUE).any(1)
        if huge.any():
            row = int(np.flatnonzero(huge)[0])
            raise UsageError(f"{source}: {key} holds values beyond +-{LARGEST_VALUE:g} (row {row}:"
                             f" {np.abs(value[row]).max():.3g}), far outside any physical quantity of these tasks")
