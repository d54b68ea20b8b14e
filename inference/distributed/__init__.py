"""Multi-rank execution: torchrun context, Ulysses sequence parallelism and FSDP2, applied from outside the models."""
