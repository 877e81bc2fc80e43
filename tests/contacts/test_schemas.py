"""Properties of the contact input schema: e-mail normalisation and phone checks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from meridian.contacts.schemas import ContactCreate

atoms = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+_-",
    min_size=1,
    max_size=20,
)
labels = st.from_regex(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?", fullmatch=True)
tlds = st.from_regex(r"[a-zA-Z]{2,10}", fullmatch=True)


@given(atoms, st.lists(labels, min_size=1, max_size=3), tlds, st.sampled_from(["", " ", "\t"]))
def test_email_is_stored_trimmed_and_lower_cased(
    local: str, hosts: list[str], tld: str, pad: str
) -> None:
    raw = f"{pad}{local}@{'.'.join([*hosts, tld])}{pad}"
    stored = ContactCreate(last_name="L", email=raw).email
    assert stored == raw.strip().lower()
    # Normalising is idempotent: the stored form validates to itself.
    assert ContactCreate(last_name="L", email=stored).email == stored


@given(st.text(max_size=30).map(lambda t: t.replace("@", "")))
def test_email_without_an_at_is_refused(text: str) -> None:
    with pytest.raises(ValidationError):
        ContactCreate(last_name="L", email=text)


@given(st.text(alphabet="0123456789 ()-", min_size=1, max_size=38), st.booleans())
def test_phone_accepted_exactly_with_3_to_15_digits(body: str, plus: bool) -> None:
    raw = ("+" if plus else "") + body
    digits = sum(ch.isdigit() for ch in raw)
    try:
        stored = ContactCreate(last_name="L", phone=raw).phone
    except ValidationError:
        assert not 3 <= digits <= 15
    else:
        assert 3 <= digits <= 15
        assert stored == raw.strip()
