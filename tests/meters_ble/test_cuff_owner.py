"""Whose measurements on a cuff are the patient's when the desk chose no cuff user (pure: no Bluetooth)."""

from __future__ import annotations

import pytest

from gateway.meters.session import CuffOwner


def patients(owner: CuffOwner, users: list[int | None]) -> list[bool]:
    return [owner.is_patients(user) for user in users]


def test_a_new_cuff_s_first_named_user_is_its_one_user() -> None:
    owner = CuffOwner.from_history(frozenset())
    assert patients(owner, [3, 1, 3, None, 2]) == [True, False, True, False, False]
    assert owner.user == 3


def test_a_cuff_that_named_one_user_before_keeps_that_user() -> None:
    owner = CuffOwner.from_history(frozenset({2}))
    assert patients(owner, [1, 2, None]) == [False, True, False]


@pytest.mark.parametrize("history", [frozenset({1, 2}), frozenset({1, 2, 5})])
def test_a_cuff_that_named_several_users_gives_the_patient_none(history: frozenset[int]) -> None:
    owner = CuffOwner.from_history(history)
    assert owner.shared
    assert patients(owner, [1, 2, None]) == [False, False, False]


def test_a_cuff_that_names_no_user_is_one_person_s() -> None:
    owner = CuffOwner.from_history(frozenset())
    assert patients(owner, [None, None]) == [True, True]
    assert owner.user is None
