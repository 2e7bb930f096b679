"""Evaluation of a policy in its task's environment: all episodes stepped together, one batched policy call per
environment step, scored on the task's scale; and the two numbers the paper reports, RAT and OMS."""

from __future__ import annotations

import glob
import os
import sys
import time
from typing import Callable, Optional

import gymnasium as gym
import numpy as np
import torch

from errors import one_line
from tasks import flatten_observation, normalize_observations


class EvaluationStopped(Exception):
    """A stop (SIGINT / SIGTERM) arrived during an evaluation: it is abandoned, the run saves and ends."""


def summarize(evaluations: list) -> tuple:
    """RAT: mean of the last 10 evaluations' scores; OMS: the best evaluation (Sec. 5)."""
    scores = [evaluation["normalized_score"] for evaluation in evaluations]
    return float(np.mean(scores[-10:])), float(np.max(scores))


class Evaluator:
    """Runs `episodes` episodes in a vector env. Evaluation at training step k draws its episodes (environments
    and policy noise alike) from seed + k: each evaluation sees new episodes, as the authors' (so RAT averages 10
    evaluations' worth of episodes), and a checkpoint of step k evaluated again scores what its run did. With
    `video_folder`, the first episode of each evaluation is recorded there."""

    def __init__(self, make_env: Callable, episodes: int, seed: int, statistics: dict, domain: str, score: Callable, device,
                 video_folder: Optional[str] = None):
        self.recorder, self.take_video = None, False
        makers = [make_env] * episodes
        if video_folder is not None and can_render(make_env):
            def recorded():
                self.recorder = gym.wrappers.RecordVideo(make_env(render_mode="rgb_array"), video_folder, disable_logger=True,
                                                         episode_trigger=lambda episode: self.take_video)
                return self.recorder
            makers[0] = recorded
        self.envs = gym.vector.SyncVectorEnv(makers)
        self.episodes, self.seed, self.domain, self.score, self.device = episodes, seed, domain, score, device
        self.statistics = statistics

    def __call__(self, act: Callable[[torch.Tensor], torch.Tensor], step: int = 0, name: str = "eval",
                 stop: Callable[[], bool] = lambda: False) -> dict:
        """Scores of the evaluation at training step `step`; `name` names its video, <name>-episode-<k>.mp4. `stop`
        is asked at every environment step: when it says so, the evaluation ends with EvaluationStopped."""
        start = time.perf_counter()
        if self.recorder is not None:
            self.recorder.name_prefix, self.take_video = name, True
        with torch.random.fork_rng(devices=[self.device] if torch.device(self.device).type == "cuda" else []):
            torch.manual_seed(self.seed + step)  # the policy noise of this step's evaluation; training's RNG is untouched
            result = self.run_episodes(act, self.seed + step, stop)
        if self.recorder is not None:
            if self.recorder.recording:
                self.recorder.stop_recording()  # episode 0 may have ended last: write its video now
            videos = glob.glob(os.path.join(self.recorder.video_folder, f"{name}-episode-*.mp4"))
            if videos:
                result["video"] = max(videos, key=os.path.getmtime)
        return result | dict(eval_seconds=time.perf_counter() - start)

    def run_episodes(self, act: Callable[[torch.Tensor], torch.Tensor], seed: int, stop: Callable[[], bool]) -> dict:
        observation, _ = self.envs.reset(seed=seed)
        n, low, high = self.episodes, self.statistics["action_low"], self.statistics["action_high"]
        returns, lengths = np.zeros(n), np.zeros(n, dtype=int)
        success, has_success = np.zeros(n, dtype=bool), False
        finished = np.zeros(n, dtype=bool)
        action = np.zeros(self.envs.action_space.shape, dtype=np.float32)
        while not finished.all():
            if stop():
                raise EvaluationStopped
            active = ~finished
            # every episode's state, ended ones too (their actions are ignored): one batch shape, so a compiled act()
            # never recompiles as episodes end
            state = normalize_observations(flatten_observation(observation), self.statistics)
            policy_action = act(torch.as_tensor(state, dtype=torch.float32, device=self.device)).cpu().numpy()
            action[active] = ((high + low) / 2 + (high - low) / 2 * policy_action)[active]
            observation, reward, terminated, truncated, info = self.envs.step(action)
            returns[active] += reward[active]
            lengths[active] += 1
            if "success" in info:  # AntMaze and other goal tasks
                has_success = True
                success[active] |= np.asarray(info["success"], dtype=bool)[active] & np.asarray(info["_success"])[active]
            finished |= terminated | truncated
            self.take_video = False  # env 0's next episode (autoreset) is not recorded
        scores = 100.0 * success if self.domain == "antmaze" else self.score(returns)  # x100, AntMaze by success
        result = dict(normalized_score=float(scores.mean()), normalized_score_std=float(scores.std()),
                      **{"return": float(returns.mean())}, return_std=float(returns.std()),
                      episode_length=float(lengths.mean()))
        if has_success:
            result["success_rate"] = float(success.mean())
        return result

    def close(self):
        self.envs.close()


def can_render(make_env: Callable) -> bool:
    """Whether the evaluation env renders frames here; if not, one line says why and evaluation goes on."""
    try:
        import moviepy  # noqa: F401  (RecordVideo writes mp4 with it)

        env = make_env(render_mode="rgb_array")
        env.reset(seed=0)
        frame = env.render()
        env.close()
        if frame is None:
            raise RuntimeError("the env returned no frame")
        return True
    except Exception as error:  # no GL (MuJoCo needs MUJOCO_GL=egl or osmesa headless), no pygame, no moviepy
        print(f"warning: --capture-video: cannot render here ({one_line(error)}); evaluating without video",
              file=sys.stderr, flush=True)
        return False
