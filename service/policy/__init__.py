"""Policy operations: the version a worker serves, publishing, simulation, allocation import,
version diffs."""
