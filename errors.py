"""The one error type of bad input, shared by every module: a UsageError is reported as one line on stderr and exit
code 2, never a traceback (runs.main, reproduce.py, make_demo_dataset.py, benchmark_speed.py)."""


class UsageError(Exception):
    """Bad input: reported as one line, exit code 2."""


def one_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"
