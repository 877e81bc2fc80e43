"""Liveness (``/healthz``), readiness (``/readyz``: control plane, shards, Redis) and
Prometheus metrics (``/metrics``)."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import literal, select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.responses import Response

from meridian.deps import RuntimeDep
from meridian.web.responses import json_response
from sharding.errors import ShardUnavailableError

router = APIRouter(tags=["health"])
_TIMEOUT = 2.0


class Liveness(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "degraded", "unavailable"]
    # "control", "shard:<id>", "redis": "ok" or "down: <reason>".
    checks: dict[str, str]


async def _ping_engine(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(select(literal(1)))


async def _check(name: str, probe: Any) -> tuple[str, str]:
    try:
        async with asyncio.timeout(_TIMEOUT):
            await probe
    except Exception as exc:  # any failure means "not ready"; the name says where
        return name, f"down: {type(exc).__name__}"
    return name, "ok"


@router.get("/healthz", response_model=Liveness)
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "The control plane is unreachable."}},
)
async def readyz(rt: RuntimeDep) -> Response:
    probes = [_check("control", _ping_engine(rt.control))]
    for shard_id in rt.engines.shards:
        wait = rt.engines.unavailable_for(shard_id)
        if wait > 0:  # breaker open: report without waiting
            probes.append(_fail(f"shard:{shard_id}", ShardUnavailableError(shard_id, wait)))
            continue
        engine = rt.engines.engine(shard_id, check=False)
        probes.append(_check(f"shard:{shard_id}", _ping_engine(engine)))
    if rt.redis is not None:
        probes.append(_check("redis", rt.redis.ping()))
    results = dict(await asyncio.gather(*probes))
    # Only the control plane gates readiness: without it this instance can serve no
    # tenant. A shard or Redis being down is reported but keeps the instance in
    # service, since it still serves every other tenant (and Redis is optional).
    if results["control"] != "ok":
        status, code = "unavailable", 503
    elif all(v == "ok" for v in results.values()):
        status, code = "ready", 200
    else:
        status, code = "degraded", 200
    return json_response({"status": status, "checks": results}, code)


async def _fail(name: str, exc: Exception) -> tuple[str, str]:
    return name, f"down: {type(exc).__name__}"


@router.get("/metrics", include_in_schema=False)
async def metrics(rt: RuntimeDep) -> Response:
    return Response(generate_latest(rt.metrics), media_type=CONTENT_TYPE_LATEST)
