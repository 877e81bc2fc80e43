"""Mechanisms the infrastructure packages share, each written once.

``localcache`` (bounded per-process LRU with a deadline per entry), ``singleflight``
(one in-flight load per key), ``breaker`` (the circuit breaker of Redis and of shards),
``pubsub`` (a Redis pub/sub subscription that reconnects by itself). The lowest layer:
it imports no other package of the project, nor the web framework.
"""
