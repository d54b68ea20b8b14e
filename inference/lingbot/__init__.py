"""The lingbot-fast world engine: checkpoint folder loading, per-session streaming state, chunk pipeline."""
