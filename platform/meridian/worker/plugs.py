"""The domains' worker parts, in the order they start (the worker's composition)."""

from __future__ import annotations

from typing import TYPE_CHECKING

# The write hooks the app's domains register (meridian.crud.hooks) hold for the worker's
# writes too (imports, rescoring): imported for that, as the app imports every domain.
import meridian.search.service  # noqa: F401
from meridian.fulfilment.worker import plug as fulfilment_plug
from meridian.leads.worker import plug as leads_plug
from meridian.projections.jobs import plug as projections_plug
from meridian.transfers.worker import plug as transfers_plug
from meridian.webhooks.worker import plug as webhooks_plug

if TYPE_CHECKING:
    from meridian.worker.main import PlugFactory

PLUGS: list[PlugFactory] = [
    webhooks_plug,
    fulfilment_plug,
    projections_plug,
    leads_plug,
    transfers_plug,
]
