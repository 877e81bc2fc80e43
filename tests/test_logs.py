"""Log lines carry their request's context, whoever logs them (a message's own
``extra`` kept), and the JSON format writes one object per line with it; text stays
readable."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import uuid

from meridian import logs
from tenancy.context import current_tenant_id


def _formatter(log_format: str) -> logging.Formatter:
    config = logs.config(log_format)
    configurator = logging.config.DictConfigurator(config)
    formatter: logging.Formatter = configurator.configure_formatter(
        config["formatters"]["meridian"]
    )
    return formatter


def _line(log_format: str, logger: logging.Logger, message: str) -> str:
    """What the deployment's handler (its filter and formatter) writes of ``message``."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(_formatter(log_format))
    handler.addFilter(logs.ContextFilter())
    logger.addHandler(handler)
    try:
        logger.error(message)
    finally:
        logger.removeHandler(handler)
    return out.getvalue()


def test_every_record_carries_the_request_context() -> None:
    logger = logging.getLogger(f"test.logs.{uuid.uuid4().hex}")
    tenant = uuid.uuid4()
    tokens = (
        logs.request_id.set("req-1"),
        logs.trace_id.set("a" * 32),
        logs.shard_id.set("us-1"),
        current_tenant_id.set(tenant),
    )
    try:
        line = _line("json", logger, "something happened")
    finally:
        current_tenant_id.reset(tokens[3])
        logs.shard_id.reset(tokens[2])
        logs.trace_id.reset(tokens[1])
        logs.request_id.reset(tokens[0])
    record = json.loads(line)
    assert record["message"] == "something happened"
    assert record["level"] == "ERROR"
    assert record["logger"] == logger.name
    assert (record["request_id"], record["trace_id"]) == ("req-1", "a" * 32)
    assert (record["tenant_id"], record["shard_id"]) == (str(tenant), "us-1")
    assert "time" in record
    # Outside a request the fields are there, empty.
    outside = json.loads(_line("json", logger, "idle"))
    assert outside["request_id"] is None
    assert outside["tenant_id"] is None


def test_text_lines_name_the_request() -> None:
    logger = logging.getLogger(f"test.logs.{uuid.uuid4().hex}")
    token = logs.request_id.set("req-2")
    try:
        line = _line("text", logger, "plain")
    finally:
        logs.request_id.reset(token)
    assert line.rstrip().endswith("plain [request req-2]")


def test_a_message_s_own_tenant_id_is_kept() -> None:
    logger = logging.getLogger(f"test.logs.{uuid.uuid4().hex}")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(_formatter("json"))
    handler.addFilter(logs.ContextFilter())
    logger.addHandler(handler)
    try:
        logger.error("moved", extra={"tenant_id": "t-1"})
    finally:
        logger.removeHandler(handler)
    assert json.loads(out.getvalue())["tenant_id"] == "t-1"
