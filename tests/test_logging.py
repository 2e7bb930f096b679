"""What a run logs: its training metrics with the training speed, and in a log file plain lines instead of a redrawn
progress bar (issue 25)."""

import os
import subprocess
import sys

import edp_td3

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--env", "edp/pendulum-mixed-v0", "--num-diffusion-steps", "50", "--dpm-steps", "3", "--batch-size", "32",
        "--eval-episodes", "1", "--compile", "off", "--threads", "1"]


def test_training_metrics_carry_the_steps_per_second(datasets, tmp_path, monkeypatch):
    import wandb

    init, logged = wandb.init, []

    class RunSpy:  # hears what the run logs
        def __init__(self, *args, **kwargs):
            self.run = init(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(self.run, name)

        def log(self, values, **kwargs):
            logged.append((kwargs.get("step"), values))
            return self.run.log(values, **kwargs)

    monkeypatch.setattr(wandb, "init", RunSpy)
    assert edp_td3.main([*TINY, "--total-steps", "20", "--eval-every", "20", "--log-every", "10", "--wandb-mode", "disabled",
                         "--run-dir", str(tmp_path / "run")]) == 0
    training = [(step, values) for step, values in logged if "train/critic_loss" in values]
    assert [step for step, _ in training] == [10, 20]
    assert all(values["train/steps_per_second"] > 0 for _, values in training)


def test_in_a_log_file_progress_is_plain_lines(datasets, tmp_path):
    log = tmp_path / "train.log"
    with open(log, "w") as file:
        done = subprocess.run([sys.executable, os.path.join(ROOT, "edp_td3.py"), *TINY, "--total-steps", "20",
                               "--eval-every", "20", "--log-every", "10", "--wandb-mode", "disabled", "--run-dir",
                               str(tmp_path / "run")], stdout=file, stderr=subprocess.STDOUT, timeout=300,
                              env=os.environ | {"PYTHONPATH": ROOT})
    text = log.read_text()
    assert done.returncode == 0, text
    assert "\r" not in text  # no redrawn bar
    assert "step 10 of 20:" in text and "step 20 of 20:" in text and "steps/s" in text
