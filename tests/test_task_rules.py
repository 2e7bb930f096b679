"""The task card says the terminal rule that the data follow, and AntMaze's relabel radius is D4RL's (issue 27).

The card's `terminals` text is what a reader of summary.json learns about the done flags; here each rule's text is
checked against the done flags the loaded data actually hold, computed from the Minari episodes read directly
(not through tasks.py). The relabel (D4RL: reward 1 where the achieved goal AFTER the step is within 0.5 of the
evaluation goal) is checked on synthetic achieved goals just inside and just outside that radius.
"""

import minari
import numpy as np
import pytest

import edp_td3
import tasks
from test_scripts import resolve, write_hopper_hdf5


def episode_rule(name):
    """The done flags of one Minari episode under a terminal rule, from its own arrays (and, for AntMaze, the
    relabelled rewards the loader computed, which test_relabel_* and test_paper_tasks.py check)."""
    def dataset(episode, rewards):
        return np.asarray(episode.terminations, dtype=bool)

    def last_step(episode, rewards):
        return dataset(episode, rewards) | (np.arange(len(episode.rewards)) == len(episode.rewards) - 1)

    def reward(episode, rewards):
        return dataset(episode, rewards) | rewards.astype(bool)

    def pen_dropped(episode, rewards):
        # D4RL pen_v0.py:85-87: done when the pen's height obj_pos[2] < 0.075 after the step; obj_pos is
        # observation[24:27] of AdroitHandPen's 45-d observation (adroit_pen.py _get_obs: 24 hand joints first)
        return dataset(episode, rewards) | (np.asarray(episode.observations)[1:, 26] < 0.075)

    return dict(dataset=dataset, last_step=last_step, reward=reward, pen_dropped=pen_dropped)[name]


# (task, --terminals) -> (words the card's terminals text must hold, the rule the done flags follow).
# To add a rule: one row with its words and its rule function above.
TERMINAL_RULES = {
    ("antmaze-umaze", "d4rl"): (("goal reached", "relabelled reward"), "reward"),
    ("kitchen-complete", "d4rl"): (("last step of each demonstration",), "last_step"),
    ("pen-cloned", "d4rl"): (("pen dropped", "0.075"), "pen_dropped"),
    ("pen-human", "d4rl"): (("the dataset's terminations",), "dataset"),  # D4RL's human demonstrations mark none
    ("antmaze-umaze", "dataset"): (("the dataset's terminations",), "dataset"),
    ("kitchen-complete", "dataset"): (("the dataset's terminations",), "dataset"),
    ("pen-human", "dataset"): (("the dataset's terminations",), "dataset"),
}


@pytest.mark.parametrize("task,terminals", sorted(TERMINAL_RULES))
def test_the_task_cards_terminals_text_names_the_rule_the_done_flags_follow(task, terminals, replicas):
    words, rule = TERMINAL_RULES[(task, terminals)]
    data = tasks.load_minari(tasks.TASKS[task], edp_td3.Args(env=task, terminals=terminals))
    text = data.card["terminals"]
    for word in words:
        assert word in text, (task, terminals, text)
    episodes = list(minari.load_dataset(replicas[task]).iterate_episodes())
    lengths = [len(episode.rewards) for episode in episodes]
    starts = np.r_[0, np.cumsum(lengths)]
    expected = np.concatenate([episode_rule(rule)(episode, data.rewards[start:start + length])
                               for episode, start, length in zip(episodes, starts, lengths)])
    np.testing.assert_array_equal(data.dones.astype(bool), expected)
    if rule != "dataset":  # the rule marks something the dataset's own flags do not: the check is not vacuous
        dataset_flags = np.concatenate([np.asarray(episode.terminations, dtype=bool) for episode in episodes])
        assert (expected & ~dataset_flags).any()


def test_a_d4rl_file_keeps_and_names_its_own_terminals(tmp_path):
    """A D4RL HDF5 file: the card says the file's terminals; the one terminal of the file (its first episode, step
    3 of 12) is the one done flag."""
    path = write_hopper_hdf5(tmp_path / "hopper.hdf5", lengths=(3, 4, 5))
    data = tasks.load_hdf5(tasks.TASKS["hopper-medium"], resolve("edp_td3", "hopper-medium", dataset_path=str(path)))
    assert "the file's terminals" in data.card["terminals"]
    assert data.dones.sum() == 1 and data.dones[2] == 1


# ----------------------------------------------------------------------------------------------
# AntMaze relabel: 1 within 0.5 (D4RL scripts/generation/relabel_antmaze_rewards.py:31, 36: the norm of the
# achieved goal at t + 1 minus the target, <= 0.5)
# ----------------------------------------------------------------------------------------------
GOAL = np.array([2.0, -1.0])
ACHIEVED = GOAL + np.array([
    [0.0, 0.0],  # t = 0: at the goal, but this is the state BEFORE the first step: no reward of its own
    [0.499, 0.0],  # after step 0: 0.499 away, inside
    [0.501, 0.0],  # after step 1: 0.501, outside
    [0.0, -0.499],  # after step 2: inside
    [0.45, 0.45],  # after step 3: 0.636 away (each axis 0.45 < 0.5): outside
    [0.35, 0.35],  # after step 4: 0.495 away (L1 0.7 > 0.5): inside
])
RELABELLED = [True, False, True, False, True]  # one per transition: T + 1 achieved goals, T rewards


def test_relabel_pays_within_half_a_unit_of_the_goal_after_the_step():
    np.testing.assert_array_equal(tasks.antmaze_relabel(ACHIEVED, GOAL), RELABELLED)
    # float32 goals, as the loader passes the evaluation goal
    np.testing.assert_array_equal(tasks.antmaze_relabel(ACHIEVED, GOAL.astype(np.float32)), RELABELLED)
