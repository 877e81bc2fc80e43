"""Properties of the opportunity input schema: money survives validation exactly."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from meridian.opportunities.schemas import ISO_4217, OpportunityCreate
from meridian.web.responses import dumps

ACCOUNT = uuid.uuid4()

cents = st.integers(min_value=0, max_value=10**18 - 1)


@given(cents)
def test_amounts_round_trip_to_two_places(value: int) -> None:
    amount = Decimal(value).scaleb(-2)
    body = OpportunityCreate(account_id=ACCOUNT, name="D", currency="USD", amount=str(amount))
    assert body.amount == amount
    # What the API sends back: a string with exactly two decimal places.
    rendered = dumps({"a": body.amount}).decode()
    assert rendered == f'{{"a":"{amount:.2f}"}}'


@given(st.integers(min_value=1, max_value=10**17).map(lambda v: Decimal(v).scaleb(-3)))
def test_more_than_two_places_or_negative_is_refused(amount: Decimal) -> None:
    if amount == amount.quantize(Decimal("0.01")):
        amount += Decimal("0.001")
    for bad in (amount, -amount):
        with pytest.raises(ValidationError):
            OpportunityCreate(account_id=ACCOUNT, name="D", currency="USD", amount=str(bad))


@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=3, max_size=3))
def test_currency_accepted_exactly_when_listed(code: str) -> None:
    try:
        body = OpportunityCreate(account_id=ACCOUNT, name="D", currency=code.lower())
    except ValidationError:
        assert code not in ISO_4217
    else:
        assert code in ISO_4217
        assert body.currency == code


def test_currency_list_is_sane() -> None:
    assert len(ISO_4217) > 150
    assert {"USD", "EUR", "GBP", "JPY", "CHF", "XCG", "ZWG", "SLE", "VED"} <= ISO_4217
    # Withdrawn codes and non-money units are not accepted.
    assert not {"ANG", "BGN", "CUC", "HRK", "SLL", "ZWL", "XAU", "XTS", "XXX"} & ISO_4217
    assert all(len(c) == 3 and c.isascii() and c.isupper() for c in ISO_4217)
