"""Helpers the test modules share, so that no test module imports another (fixtures stay in conftest.py)."""
from .exact_resume import COMMON, assert_same_weights, metric_history, sctrain_args
from .kernels import on_both_paths
from .paths import REPO, SHARED
from .ports import free_port
from .processes import TIMEOUT, descendants, finish, kill_tree, run, stalled_save, start, wait_for
from .trainers import one_torch_thread, quickly_trained, train_on_one_thread, trainer_for

__all__ = ["COMMON", "REPO", "SHARED", "TIMEOUT", "assert_same_weights", "descendants", "finish", "free_port",
           "kill_tree", "metric_history", "on_both_paths", "one_torch_thread", "quickly_trained", "run", "sctrain_args",
           "stalled_save", "start", "train_on_one_thread", "trainer_for", "wait_for"]
