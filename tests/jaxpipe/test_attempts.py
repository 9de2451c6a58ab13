"""Attempt numbers from the store, and the checkpoints a job keeps or skips."""

from __future__ import annotations

from jaxpipe.runtime import checkpoint
from jaxpipe.runtime.attempts import job_losses, next_attempt
from jaxpipe.runtime.job import Keys
from jaxpipe.runtime.metrics import LossRecord
from transports import FileStore

KEYS = Keys("j")


def test_attempts_are_numbered_after_every_one_the_store_shows(tmp_path):
    store = FileStore(str(tmp_path))
    assert next_attempt(store, KEYS) == 0
    store.put(KEYS.status(2, 0, 1) + ".claim", b"{}")  # a crashed driver's claim
    assert next_attempt(store, KEYS) == 3
    store.put(KEYS.metrics(0, 4, 7), b"{}")
    store.put(KEYS.cancel(5), b"{}")
    store.put(KEYS.loss(3, 1, 6), b"{}")
    assert next_attempt(store, KEYS) == 7


def test_each_iterations_loss_comes_from_the_latest_attempt_that_ran_it(tmp_path):
    store = FileStore(str(tmp_path))
    store.put(KEYS.loss(0, 1, 0), LossRecord.of({0: 1.0, 1: 3.0}).to_json())
    store.put(KEYS.loss(1, 1, 0), LossRecord.of({0: 99.0}).to_json())  # a failed attempt's
    store.put(KEYS.loss(1, 1, 1), LossRecord.of({0: 4.0}).to_json())
    assert job_losses(store, KEYS, 2) == (2.0, 4.0)


def marks(store: FileStore, t: int, stages: int = 2) -> None:
    for k in range(stages):
        store.put(KEYS.checkpoint(t, k, "params"), b"x")
        store.put(KEYS.checkpoint(t, k, "done"), b"{}")


def test_a_corrupt_checkpoint_is_skipped_with_its_reason_and_old_ones_pruned(tmp_path):
    store = FileStore(str(tmp_path))
    for t in (0, 2, 4, 6):
        marks(store, t)
    store.put(KEYS.checkpoint(8, 0, "done"), b"{}")  # incomplete: stage 1 never finished
    store.put(KEYS.checkpoint(6, 1, "corrupt"), b'{"part": "opt", "error": "truncated"}')
    assert checkpoint.latest_complete(store, KEYS, 2) == 4
    assert checkpoint.skipped(store, KEYS, 2) == {6: "stage 1 opt: truncated"}
    assert checkpoint.prune(store, KEYS, 2, keep=2) == [0]
    left = {int(k.split("/")[3]) for k in store.list(KEYS.checkpoints())}
    assert left == {2, 4, 6, 8}
    assert checkpoint.prune(store, KEYS, 2, keep=0) == []  # 0 keeps all
