"""Scheduling: which requests run each step, their KV bookkeeping, and what each step's
results do to them."""
