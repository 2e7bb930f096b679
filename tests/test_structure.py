"""The shape of the project: CleanRL-size scripts that hold their algorithm and training loop, shared modules that
hold the rest once, in one direction of imports."""

import ast
import os
import re

import pytest

import test_scripts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = [f"{name}.py" for name in test_scripts.SCRIPTS]  # every edp_*.py, and the copies named in EDP_SCRIPTS
MODULES = ["errors.py", "diffusion.py", "agents.py", "flags.py", "data_checks.py", "tasks.py", "d4rl_files.py", "evaluation.py",
           "checkpoints.py", "threads.py", "runs.py"]


def source(name):
    with open(os.path.join(ROOT, name)) as file:
        return file.read()


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_script_reads_top_to_bottom_with_its_algorithm_and_its_loop(script):
    text = source(script)
    lines = text.splitlines()
    assert len(lines) <= 350
    order = [next(i for i, line in enumerate(lines) if re.match(pattern, line)) for pattern in
             (r"class Args\(", r"PAPER = ", r"class \w+\(Agent\)", r"def train\(", r"def main\(")]
    assert order == sorted(order) and order[2] < 200, order  # flags, defaults, algorithm (before line 200), loop
    train = text[text.index("def train("):text.index("def main(")]
    assert "for step in range(" in train and ".update(" in train and "run.evaluate(" in train


def imports(name):
    """The repository's own modules a file imports."""
    local = {module[:-3] for module in MODULES + SCRIPTS + ["make_demo_dataset.py"]}
    found = set()
    for node in ast.walk(ast.parse(source(name))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found & local


def test_the_shared_modules_import_each_other_without_a_cycle_and_stay_readable():
    graph = {name[:-3]: imports(name) for name in MODULES}
    done, visiting = set(), []

    def visit(module):
        assert module not in visiting, f"import cycle: {' -> '.join(visiting + [module])}"
        if module in done:
            return
        visiting.append(module)
        for dependency in graph.get(module, ()):
            visit(dependency)
        visiting.pop()
        done.add(module)

    for module in graph:
        visit(module)
    assert all(len(source(name).splitlines()) <= 600 for name in MODULES)
    assert not any(script[:-3] in imports(name) for name in MODULES for script in SCRIPTS)  # modules never need a script


def test_diffusion_py_holds_the_policy_only():
    text = source("diffusion.py")
    assert not re.search(r"torch\.optim|torch\.compile|state_dict|checkpoint", text)
