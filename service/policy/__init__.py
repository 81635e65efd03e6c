"""Policy operations: the version a worker serves, publishing, simulation, allocation import,
version diffs."""

#: The longest note a published version keeps (API, console and CLI alike).
MAX_NOTE_CHARS = 1000
