"""The embedded default (issue 26): with no --env a script trains on the offline demo dataset, made on first use in
a fresh datasets folder with one line saying so; the other demo ids are made, not sent to a download."""

import json

import pytest

import edp_crr
import edp_td3
from test_scripts import resolve

TINY = ["--total-steps", "20", "--eval-every", "20", "--eval-episodes", "1", "--num-diffusion-steps", "50",
        "--dpm-steps", "3", "--batch-size", "32", "--eas-samples", "2", "--threads", "1", "--compile", "off",
        "--wandb-mode", "disabled"]


@pytest.fixture
def empty_datasets_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path / "minari"


def test_no_env_trains_on_the_demo_made_on_first_use(empty_datasets_folder, tmp_path, capsys):
    assert edp_td3.main(["--run-dir", str(tmp_path / "first"), *TINY]) == 0
    out = capsys.readouterr().out
    made = [line for line in out.splitlines() if line.startswith("making the offline demo dataset")]
    assert made == [f"making the offline demo dataset edp/pendulum-mixed-v0 in {empty_datasets_folder} (first use, a"
                    " few seconds; the same as `python make_demo_dataset.py pendulum`)"]
    summary = json.loads((tmp_path / "first" / "summary.json").read_text())
    assert summary["env"] == "edp/pendulum-mixed-v0" and summary["task"]["dataset"]["episodes"] == 60
    assert (empty_datasets_folder / "edp" / "pendulum-mixed-v0" / "data" / "main_data.hdf5").is_file()
    assert edp_crr.main(["--run-dir", str(tmp_path / "second"), *TINY]) == 0  # made once: the second run reads it
    assert "making the offline demo dataset" not in capsys.readouterr().out
    second = json.loads((tmp_path / "second" / "summary.json").read_text())
    assert second["task"]["dataset"]["fingerprint"] == summary["task"]["dataset"]["fingerprint"]


def test_every_demo_id_is_made_not_downloaded(empty_datasets_folder, capsys):
    import tasks
    from make_demo_dataset import DATASET_IDS

    dataset = tasks.open_minari(DATASET_IDS["modes"])  # the quickest to make; pointmaze and pendulum take the same path
    assert dataset.total_episodes == 60 and "making the offline demo dataset edp/modes-v0" in capsys.readouterr().out


def test_an_id_neither_local_nor_a_demo_fails_in_one_line(empty_datasets_folder, tmp_path, capsys):
    assert edp_td3.main(["--env", "edp/pendulum-mixed-v1", "--run-dir", str(tmp_path / "run"), *TINY]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "minari download edp/pendulum-mixed-v1" in error, error
    assert not (empty_datasets_folder / "edp" / "pendulum-mixed-v1").exists()


@pytest.mark.parametrize("preset", ["paper", "released"])
def test_the_demo_runs_a_quick_start_long_and_paper_tasks_keep_their_presets(preset):
    config = resolve("edp_td3", edp_td3.Args().env, preset=preset)
    assert (config.env, config.total_steps, config.eval_every) == ("edp/pendulum-mixed-v0", 6000, 1000)
    assert resolve("edp_td3", "hopper-medium", preset=preset).total_steps == 2_000_000
    assert resolve("edp_td3", "edp/modes-v0", preset=preset).eval_every == 10_000  # other demos: no row of their own
