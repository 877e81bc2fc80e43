"""Fulfilment: the saga run when an opportunity is won (its steps, its state, its jobs)."""
