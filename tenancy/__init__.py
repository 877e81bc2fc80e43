"""Tenant context, the control-plane directory and tenant resolution."""
