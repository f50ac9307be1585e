"""Document versions are ordered by the revision that wrote them, a deletion after the version it deleted."""

from __future__ import annotations

import pytest

from helpline.knowledge import versions


def test_a_version_names_its_revision_and_hash() -> None:
    assert versions.version(12, "abc") == "12:abc"
    assert versions.deleted(12) == "12:-"
    assert [versions.revision(v) for v in ("12:abc", "12:-", "abc", ":abc", "x:abc", "")] == [12, 12, -1, -1, -1, -1]


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("5:aaa", "9:bbb"),  # a later change, whatever the hashes
        ("9:bbb", "10:aaa"),  # back to an older text: a new revision
        ("9:bbb", "9:-"),  # deleted after it
        ("9:-", "12:ccc"),  # written again after the deletion
        ("abc", "0:abc"),  # a version written by a release before revisions is older than any
    ],
)
def test_newer_versions_win_whichever_arrives_last(older: str, newer: str) -> None:
    assert versions.order(older) < versions.order(newer)
    assert versions.newest(older, newer) == newer
    assert versions.newest(newer, older) == newer


def test_of_two_versions_in_no_known_form_the_one_given_first_is_kept() -> None:
    assert versions.newest("v2", "v1") == "v2"
    assert versions.newest("v1", "v2") == "v1"
