"""Logs: one JSON object per line (``MERIDIAN_LOG_FORMAT=json``, the default) or plain
text, each record carrying what its request was about, never what it held.

Every record, whoever logs it (Meridian, uvicorn, the libraries), gets ``request_id``
(``X-Request-ID``, as sent or made up), ``trace_id`` (from a W3C ``traceparent``),
``tenant_id`` and ``shard_id``: the handler's ``ContextFilter`` reads them from context
variables that the request's middleware (``web.requests``) and the tenant dependency
set. (A filter rather than a record factory: messages pass ``tenant_id`` in ``extra``
themselves, which a factory's attribute would forbid.) Nothing of a request's body, a
record or a token is added: personal data stays out of the logs unless a message puts
it there, which Meridian's never do (they name ids and kinds).

The JSON is python-json-logger's, the one well-kept formatter for the standard logging
module.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

from opentelemetry import trace

from tenancy.context import current_tenant_id

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
trace_id: ContextVar[str | None] = ContextVar("trace_id", default=None)
shard_id: ContextVar[str | None] = ContextVar("shard_id", default=None)

FIELDS = ("request_id", "trace_id", "tenant_id", "shard_id")
_TEXT = "%(asctime)s %(levelname)s %(name)s %(message)s [request %(request_id)s]"
_JSON = "%(asctime)s %(levelname)s %(name)s %(message)s"


class ContextFilter(logging.Filter):
    """Adds the request's context to each record the handler writes (a value the
    message gave in ``extra`` is kept: it says the same, or more precisely)."""

    def filter(self, record: logging.LogRecord) -> bool:
        tenant = current_tenant_id.get()
        span = trace.get_current_span().get_span_context()
        context = {
            "request_id": request_id.get(),
            # The request's span's trace when traced (meridian.telemetry): a new one
            # when the caller sent none.
            "trace_id": format(span.trace_id, "032x") if span.is_valid else trace_id.get(),
            "tenant_id": str(tenant) if tenant is not None else None,
            "shard_id": shard_id.get(),
        }
        for name, value in context.items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


def config(log_format: str, level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the process (uvicorn's ``log_config``): one
    handler on stderr for every logger, uvicorn's included."""
    formatter: dict[str, Any]
    if log_format == "json":
        formatter = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": _JSON,
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        }
    else:
        formatter = {"format": _TEXT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"meridian": formatter},
        "filters": {"context": {"()": ContextFilter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "meridian",
                "filters": ["context"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            # uvicorn's own handlers would print its lines a second time, unformatted.
            name: {"handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }
