"""Buffered random ids: the right shape, no repeats, and never shared with a forked worker."""

from __future__ import annotations

import os
import re

from helpline.ids import random_hex


def test_ids_are_hex_of_the_asked_length_and_do_not_repeat() -> None:
    ids = [random_hex(12) for _ in range(20_000)]  # several refills of the buffer
    assert all(re.fullmatch(r"[0-9a-f]{24}", value) for value in ids)
    assert len(set(ids)) == len(ids)
    assert len(random_hex(5000)) == 10_000  # more than a buffer holds: straight from the system


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    random_hex(8)  # the parent's buffer is filled before the fork, as in a pre-forking server
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.write(write_end, random_hex(16).encode())
        os._exit(0)
    os.close(write_end)
    parent_id = random_hex(16)
    with os.fdopen(read_end) as pipe:
        child_id = pipe.read()
    os.waitpid(child, 0)
    assert len(child_id) == 32
    assert child_id != parent_id
