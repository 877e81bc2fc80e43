"""Opportunity request and response bodies: money as exact decimals in ISO 4217 codes."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Any
from uuid import UUID

from pydantic import AfterValidator, ConfigDict, Field, StringConstraints, WithJsonSchema

from meridian.crud.schemas import (
    NOT_BLANK,
    CustomValues,
    ExternalId,
    InputModel,
    IsoDate,
    Omittable,
    RecordRead,
    decimal_text,
)

# ISO 4217 List One (current currencies and funds) as of amendment 180 (2026-01-01:
# BGN withdrawn). Left out on purpose: precious metals (XAG, XAU, XPD, XPT), bond-market
# units (XBA-XBD), XTS (testing) and XXX (no currency), which never price a deal.
# fmt: off
ISO_4217 = frozenset((
    "AED", "AFN", "ALL", "AMD", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BHD",
    "BIF", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF",
    "CHE", "CHF", "CHW", "CLF", "CLP", "CNY", "COP", "COU", "CRC", "CUP", "CVE", "CZK", "DJF",
    "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP",
    "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR",
    "ISK", "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT",
    "LAK", "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP",
    "MRU", "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR",
    "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB",
    "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN",
    "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH",
    "UGX", "USD", "USN", "UYI", "UYU", "UYW", "UZS", "VED", "VES", "VND", "VUV", "WST", "XAD",
    "XAF", "XCD", "XCG", "XDR", "XOF", "XPF", "XSU", "XUA", "YER", "ZAR", "ZMW", "ZWG",
))
# fmt: on

_CENT = Decimal("0.01")


# Sent in upper or lower case (stored upper); the OpenAPI document lists them all.
CURRENCY_CODES = sorted(ISO_4217) + sorted(c.lower() for c in ISO_4217)


def _check_currency(value: str) -> str:
    if value.upper() not in ISO_4217 or value not in (value.upper(), value.lower()):
        raise ValueError("must be an active ISO 4217 currency code such as USD or EUR")
    return value.upper()


def _to_cents(value: Decimal) -> Decimal:
    # One representation per amount ("10.5", "10.50", -0 are the same money).
    return value.quantize(_CENT) if value else Decimal("0.00")


Name = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=NOT_BLANK)]
# Numeric(18, 2) in the database; a JSON number or a decimal string is accepted.
# As a string: 16 significant digits before the point at most, two significant decimals
# at most (trailing zeros are fine), and "-0" is zero.
AMOUNT_TEXT = r"^(-0+(\.0+)?|0*[0-9]{1,16}(\.[0-9]{1,2}0*)?)$"
Amount = Annotated[
    Decimal,
    decimal_text(AMOUNT_TEXT),
    Field(ge=0, max_digits=18, decimal_places=2),
    AfterValidator(_to_cents),
    WithJsonSchema(
        {
            "description": "Non-negative, at most two decimals and 16 digits before them; "
            'returned as a decimal string ("1250.00").',
            "anyOf": [
                {"type": "number", "minimum": 0, "exclusiveMaximum": 1e16, "multipleOf": 0.01},
                {"type": "string", "pattern": AMOUNT_TEXT},
            ],
        }
    ),
]
Currency = Annotated[
    str,
    StringConstraints(min_length=3, max_length=3),
    AfterValidator(_check_currency),
    Field(json_schema_extra={"enum": CURRENCY_CODES}),
]


class OpportunityCreate(InputModel):
    account_id: UUID
    name: Name
    amount: Amount = Decimal("0.00")
    currency: Currency
    # Omitted: the tenant's default pipeline and its first stage.
    pipeline_id: UUID | None = None
    stage_id: UUID | None = None
    expected_close_date: IsoDate | None = None
    owner_id: UUID | None = None
    external_id: ExternalId | None = None
    custom: CustomValues | None = None


class OpportunityUpdate(InputModel):
    # A new pipeline needs a stage of it.
    model_config = ConfigDict(
        json_schema_extra={"dependentRequired": {"pipeline_id": ["stage_id"]}}
    )

    account_id: Omittable[UUID] = None
    name: Omittable[Name] = None
    amount: Omittable[Amount] = None
    currency: Omittable[Currency] = None
    pipeline_id: Omittable[UUID] = None
    stage_id: Omittable[UUID] = None
    expected_close_date: IsoDate | None = None  # null clears these two
    owner_id: UUID | None = None
    external_id: ExternalId | None = None  # null clears it
    custom: CustomValues | None = None  # a patch: a field set to null is cleared


class OpportunityRead(RecordRead):
    account_id: UUID
    name: str
    amount: Decimal = Field(description='A decimal string with two places, e.g. "1250.00".')
    currency: str
    pipeline_id: UUID
    stage_id: UUID
    expected_close_date: date | None
    owner_id: UUID | None
    external_id: str | None
    custom: dict[str, Any]
