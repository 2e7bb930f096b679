"""D4RL's own files for the locomotion tasks (d4rl_files.py), fetched from a local HTTP server standing in for D4RL's
host (EDP_D4RL_MIRROR): a complete download, an interrupted one (resumed by an HTTP Range, or restarted where the
server ignores ranges), a corrupt one, a 404, and a run that downloads, checks and trains. Nothing leaves 127.0.0.1."""

import http.server
import json
import os
import re
import threading

import h5py
import numpy as np
import pytest

import d4rl_files
import edp_td3

TINY = ["--total-steps", "20", "--eval-every", "20", "--eval-episodes", "1", "--num-diffusion-steps", "50",
        "--dpm-steps", "3", "--batch-size", "32", "--eas-samples", "2", "--threads", "1", "--compile", "off",
        "--wandb-mode", "disabled"]


class Handler(http.server.BaseHTTPRequestHandler):
    """GET <mirror>/gym_mujoco_v2/<name>: the file, from the byte a Range asks for (unless `ranges` is off); each
    entry of `cuts` ends one answer after that many bytes, the connection closed with the file incomplete."""

    def do_GET(self):
        state = self.server.state
        state["requests"].append(self.headers.get("Range"))
        folder, _, name = self.path.rpartition("/")
        if folder != "/mirror/gym_mujoco_v2" or name not in state["files"]:
            self.send_error(404, "Not Found")
            return
        body, start = state["files"][name], 0
        if self.headers.get("Range") and state["ranges"]:
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        cut = state["cuts"].pop(0) if state["cuts"] else None
        self.wfile.write(body[start:] if cut is None else body[start:start + cut])

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def replica_bytes(tmp_path_factory):
    """A D4RL-format HDF5 file (make_demo_dataset.make_d4rl_hdf5: random actions on Hopper-v4) as bytes."""
    from make_demo_dataset import make_d4rl_hdf5

    path = tmp_path_factory.mktemp("replica") / "hopper.hdf5"
    return make_d4rl_hdf5("hopper", str(path), episodes=2, max_steps=60) and path.read_bytes()


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A local HTTP server as D4RL's host; D4RL's folder a fresh temporary one; no waiting between tries."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = dict(files={}, requests=[], cuts=[], ranges=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("EDP_D4RL_MIRROR", f"http://127.0.0.1:{httpd.server_address[1]}/mirror/")
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "d4rl"))
    monkeypatch.setattr(d4rl_files.time, "sleep", lambda seconds: None)
    yield httpd.state
    httpd.shutdown()
    httpd.server_close()


def test_d4rls_addresses_names_and_folder(monkeypatch):
    """d4rl/infos.py:297-300 (the -v2 URLs) and d4rl/offline_env.py:17, 31-34 (the folder, the file's URL name)."""
    monkeypatch.delenv("EDP_D4RL_MIRROR")
    monkeypatch.delenv("D4RL_DATASET_DIR")
    assert d4rl_files.url("hopper-medium-replay") == ("http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/"
                                                      "hopper_medium_replay-v2.hdf5")
    assert d4rl_files.url("halfcheetah-medium-expert").endswith("/gym_mujoco_v2/halfcheetah_medium_expert-v2.hdf5")
    assert d4rl_files.local_path("walker2d-medium") == os.path.expanduser("~/.d4rl/datasets/walker2d_medium-v2.hdf5")
    monkeypatch.setenv("EDP_D4RL_MIRROR", "https://example.org/d4rl/")
    monkeypatch.setenv("D4RL_DATASET_DIR", "/data/d4rl")
    assert d4rl_files.url("walker2d-medium") == "https://example.org/d4rl/gym_mujoco_v2/walker2d_medium-v2.hdf5"
    assert d4rl_files.local_path("walker2d-medium") == "/data/d4rl/walker2d_medium-v2.hdf5"
    assert d4rl_files.rows_note("hopper-medium-replay", 402_000) is None
    assert "402,000" in d4rl_files.rows_note("hopper-medium-replay", 120)
    assert d4rl_files.rows_note("walker2d-medium-expert", 120) is None  # not known: not compared


def test_a_complete_download_lands_in_d4rls_folder(server, replica_bytes, capsys):
    server["files"]["hopper_medium-v2.hdf5"] = replica_bytes
    path = d4rl_files.fetch("hopper-medium")
    assert path == str(d4rl_files.local_path("hopper-medium")) and open(path, "rb").read() == replica_bytes
    assert sorted(os.listdir(os.path.dirname(path))) == ["hopper_medium-v2.hdf5", "hopper_medium-v2.hdf5.lock"]
    assert server["requests"] == [None]
    assert d4rl_files.fetch("hopper-medium") == path and server["requests"] == [None]  # there: not fetched again
    assert "downloading D4RL's hopper_medium-v2.hdf5" in capsys.readouterr().err


@pytest.mark.parametrize("ranges", [True, False])
def test_an_interrupted_download_is_resumed_or_restarted(server, replica_bytes, ranges, capsys):
    """The server closes the connection after 1000 bytes: resumed from byte 1000 where it takes a Range, restarted
    where it ignores one; either way the file is whole, and nothing looked complete before."""
    server["files"]["hopper_medium_replay-v2.hdf5"] = replica_bytes
    server["cuts"], server["ranges"] = [1000], ranges
    path = d4rl_files.fetch("hopper-medium-replay")
    assert open(path, "rb").read() == replica_bytes and not os.path.exists(f"{path}.part")
    assert server["requests"] == [None, "bytes=1000-"]
    assert "cut at 1,000 of" in capsys.readouterr().err


def test_a_partial_file_from_an_earlier_run_is_resumed_and_a_dead_connection_keeps_it(server, replica_bytes):
    server["files"]["hopper_medium_expert-v2.hdf5"] = replica_bytes
    server["cuts"] = [700, 0, 0, 0]  # 700 bytes, then three answers that bring nothing
    with pytest.raises(d4rl_files.DownloadError, match="stops early .700 of"):
        d4rl_files.fetch("hopper-medium-expert")
    path = d4rl_files.local_path("hopper-medium-expert")
    assert not os.path.exists(path) and os.path.getsize(f"{path}.part") == 700  # never looks complete
    server["requests"].clear()
    assert open(d4rl_files.fetch("hopper-medium-expert"), "rb").read() == replica_bytes  # the next run resumes
    assert server["requests"] == ["bytes=700-"]


def test_a_complete_partial_file_is_checked_and_renamed(server, replica_bytes, tmp_path):
    """A .part already whole (the server answers 416 to the range after its end) is checked, not fetched again."""
    server["files"]["hopper_medium-v2.hdf5"] = replica_bytes
    os.makedirs(tmp_path / "d4rl")
    (tmp_path / "d4rl" / "hopper_medium-v2.hdf5.part").write_bytes(replica_bytes)
    assert open(d4rl_files.fetch("hopper-medium"), "rb").read() == replica_bytes


@pytest.mark.parametrize("content, message", [(b"<html>not a dataset</html>" * 50, "not HDF5"), (None, "lacks timeouts")])
def test_a_corrupt_download_is_removed_with_one_line(server, tmp_path, content, message):
    if content is None:  # HDF5, but not D4RL's arrays
        with h5py.File(tmp_path / "other.hdf5", "w") as file:
            for key in ("observations", "actions", "rewards", "terminals"):
                file.create_dataset(key, data=np.zeros(5))
        content = (tmp_path / "other.hdf5").read_bytes()
    server["files"]["walker2d_medium-v2.hdf5"] = content
    with pytest.raises(d4rl_files.DownloadError, match=message) as error:
        d4rl_files.fetch("walker2d-medium")
    assert "\n" not in str(error.value) and "it was removed" in str(error.value)
    assert not [name for name in os.listdir(tmp_path / "d4rl") if not name.endswith(".lock")]


def test_a_404_is_one_line_naming_the_file_and_where_it_goes(server, tmp_path, capsys):
    assert edp_td3.main(["--env", "hopper-medium-replay", "--run-dir", str(tmp_path / "run"), *TINY]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("error:") and "HTTP 404" in error, error
    assert str(tmp_path / "d4rl" / "hopper_medium_replay-v2.hdf5") in error and "--dataset-path" in error


def test_offline_is_one_line_saying_what_to_fetch_and_where(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "d4rl"))  # EDP_D4RL_MIRROR: conftest's, nothing listens
    assert edp_td3.main(["--env", "walker2d-medium-replay", "--run-dir", str(tmp_path / "run"), *TINY]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("error: D4RL's walker2d_medium_replay-v2.hdf5"), error
    assert f"put it at {tmp_path / 'd4rl' / 'walker2d_medium_replay-v2.hdf5'}" in error


def test_a_run_downloads_checks_and_trains_on_d4rls_file(server, replica_bytes, tmp_path, capsys):
    """`--env hopper-medium` with no --dataset-path: D4RL's file, downloaded from the mirror; a replica's other row
    count is said in one warning line and in the task card, and the run trains."""
    server["files"]["hopper_medium-v2.hdf5"] = replica_bytes
    assert edp_td3.main(["--env", "hopper-medium", "--run-dir", str(tmp_path / "run"), *TINY]) == 0
    card = json.loads((tmp_path / "run" / "summary.json").read_text())["task"]
    assert card["dataset"]["id"] == str(tmp_path / "d4rl" / "hopper_medium-v2.hdf5") and card["dataset"]["replica"]
    assert card["dataset"]["source"].endswith("/mirror/gym_mujoco_v2/hopper_medium-v2.hdf5)")
    assert re.fullmatch(r"\d+ rows where D4RL.s hopper_medium-v2.hdf5 holds 1,000,000: .*", card["dataset"]["size_differs"])
    assert card["eval_env"] == "Hopper-v4"
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "1,000,000" in warnings[0], warnings


def test_dataset_path_wins_over_d4rls_folder(server, replica_bytes, tmp_path):
    import tasks

    (tmp_path / "mine.hdf5").write_bytes(replica_bytes)
    config = edp_td3.Args(env="hopper-medium", dataset_path=str(tmp_path / "mine.hdf5"))
    data = tasks.load_data(config, tasks.TASKS["hopper-medium"])
    assert data.card["dataset"]["id"] == str(tmp_path / "mine.hdf5") and server["requests"] == []


def test_reproduce_fetches_the_locomotion_files_before_its_runs_and_passes_no_dataset_path(server, replica_bytes,
                                                                                            tmp_path):
    import reproduce

    server["files"] |= {d4rl_files.file_name(task): replica_bytes for task in ("hopper-medium", "walker2d-medium")}
    args = reproduce.Args(tasks=["hopper-medium", "walker2d-medium"], algos=["td3"], seeds=[0],
                          out_dir=str(tmp_path / "sweep"))
    runs = reproduce.plan(args)
    assert not any("--dataset-path" in run.command for run in runs)
    assert reproduce.missing_d4rl_files(args, runs) == ["hopper-medium", "walker2d-medium"]
    reproduce.check_d4rl_files(args, runs)
    assert reproduce.missing_d4rl_files(args, runs) == [] and server["requests"] == [None, None]
    assert open(d4rl_files.local_path("walker2d-medium"), "rb").read() == replica_bytes


def test_minaris_mujoco_data_is_read_by_its_own_id_and_named_for_what_it_is(tmp_path, monkeypatch):
    """mujoco/hopper/medium-v0 (Minari's, new data on Hopper-v5) is no longer what hopper-medium reads; by its own id
    it loads, and the task card says what it is. A tiny stand-in written under that id, since nothing downloads here."""
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer

    import tasks
    from make_demo_dataset import run_episode, write_dataset

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    env = gym.make("Hopper-v5", max_episode_steps=15)
    env.action_space.seed(0)
    buffers = [EpisodeBuffer(id=0, seed=0, **run_episode(env, lambda obs: env.action_space.sample(), 0))]
    write_dataset("mujoco/hopper/medium-v0", buffers, env, env.spec, algorithm_name="stand-in", description="stand-in")
    assert tasks.TASKS["hopper-medium"].minari_id is None  # D4RL's file, not Minari's data
    config = edp_td3.Args(env="mujoco/hopper/medium-v0")
    data = tasks.load_data(config, tasks.find_task(config.env, None))
    assert data.card["dataset"]["id"] == "mujoco/hopper/medium-v0" and "not D4RL's -v2 file" in data.card["dataset"]["what"]
