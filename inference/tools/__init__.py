"""Command-line tools (tiny checkpoints for tests and benches)."""
