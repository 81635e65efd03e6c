"""GET /v1/stats and the CSV reports (SPEC §14)."""
