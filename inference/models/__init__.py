"""Model code for LingBot-World-Fast (no torch.distributed, no environment reads)."""
