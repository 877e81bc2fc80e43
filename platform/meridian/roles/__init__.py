"""Roles of a tenant (``/v1/roles``): the shared templates, overrides and custom roles."""
