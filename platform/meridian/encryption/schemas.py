"""Input types of sensitive fields shared by several resources."""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints

from meridian.crud.schemas import padded

# VAT numbers, EINs, SIRENs, …: letters, digits and the usual separators. Searching
# compares the digits only (tenancy.crypto.normalize_tax_id), so at least two are needed.
# A letter or digit first, then those and the separators, two digits at least.
_CHAR = "[A-Za-z0-9 ./-]"
TAX_ID_PATTERN = rf"^([0-9]|[A-Za-z]{_CHAR}*[0-9]){_CHAR}*[0-9]{_CHAR}*$"
TaxId = Annotated[str, StringConstraints(max_length=40, pattern=padded(TAX_ID_PATTERN))]
