"""Capability checks (Casbin RBAC with domains, one enforcer per tenant), field rules
(``pii:read`` masking) and record scope.

Modules: ``policy`` (model, catalogue, role templates), ``store`` (control-plane
storage), ``enforcer`` (per-tenant enforcers and the memo), ``watcher`` (Redis
announcements between instances), ``fields`` (masking), ``models`` (tables).
"""
