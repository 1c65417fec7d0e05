"""dermseg's training library: config, data, losses, metrics, trainer, hooks, checkpoints."""
