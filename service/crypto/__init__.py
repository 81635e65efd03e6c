"""Key material: the Ed25519 key ring that signs verdicts."""
