"""Devices: the check-in decision, overrides (unlocks, locks), retention of check-in facts."""
