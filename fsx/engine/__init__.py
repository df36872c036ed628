"""The optimisation loop, mixed precision, checkpoints, early stopping with rollback."""
