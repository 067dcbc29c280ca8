"""Training: losses, metrics and the trainer."""
