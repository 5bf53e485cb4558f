"""Pure Flax Linen modules of Janus (no I/O, no global state)."""
