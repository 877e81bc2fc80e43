"""Input types of sensitive fields shared by several resources."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, StringConstraints

# VAT numbers, EINs, SIRENs, …: letters, digits and the usual separators. Searching
# compares the digits only (tenancy.crypto.normalize_tax_id), so at least two are needed.
_TAX_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ./-]*$")


def _check_tax_id(value: str) -> str:
    if not _TAX_ID.match(value) or sum(ch.isdigit() for ch in value) < 2:
        raise ValueError(
            "must be a tax identifier: letters, digits, spaces, dots, dashes or slashes, "
            "with at least two digits"
        )
    return value


TaxId = Annotated[str, StringConstraints(max_length=40), AfterValidator(_check_tax_id)]
