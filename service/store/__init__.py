"""Redis-backed stores; each takes a redis client, none opens one itself."""
