"""The data, evaluation, networks and run blocks repeat in the three scripts on purpose (each reads
top to bottom on its own); they must stay identical, word for word."""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["edp_td3.py", "edp_crr.py", "edp_iql.py"]
BLOCK = re.compile(r"^# ---8<--- shared: (\w+) ---\n(.*?)^# ---8<--- end shared: \1 ---$", re.S | re.M)


def shared_blocks(script):
    with open(os.path.join(ROOT, script)) as file:
        return dict(BLOCK.findall(file.read()))


def test_every_script_has_the_same_shared_blocks():
    names = {script: sorted(shared_blocks(script)) for script in SCRIPTS}
    assert names["edp_td3.py"] == ["data", "evaluation", "imports", "networks", "run"]
    assert all(value == names["edp_td3.py"] for value in names.values()), names


@pytest.mark.parametrize("script", SCRIPTS[1:])
@pytest.mark.parametrize("block", ["imports", "data", "networks", "evaluation", "run"])
def test_shared_block_is_identical_to_edp_td3(script, block):
    reference, other = shared_blocks("edp_td3.py")[block], shared_blocks(script)[block]
    assert len(reference.splitlines()) > 5
    if other != reference:
        import difflib

        diff = "".join(difflib.unified_diff(reference.splitlines(True), other.splitlines(True), "edp_td3.py", script))
        pytest.fail(f"shared block '{block}' of {script} differs from edp_td3.py:\n{diff}")


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_reader_meets_the_algorithm_first(script):
    """Args, the defaults table, networks and the algorithm class come first; the shared data, evaluation and run blocks follow."""
    with open(os.path.join(ROOT, script)) as file:
        lines = file.read().splitlines()
    def first(pattern):
        return next(number for number, line in enumerate(lines, 1) if re.match(pattern, line))
    order = [first(r"class Args\b"), first(r"PAPER = "), first(r"# ---8<--- shared: networks"),
             first(r"class EDP\w+\(DiffusionAgent\)"), first(r"# ---8<--- shared: data"),
             first(r"# ---8<--- shared: evaluation"), first(r"# ---8<--- shared: run")]
    assert order == sorted(order), order
    assert order[3] <= 250, f"the algorithm class starts at line {order[3]} (issue 12: within the first ~250)"
