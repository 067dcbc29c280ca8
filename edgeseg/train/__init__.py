"""Training: losses, metrics and the trainer."""

# The loss names alone, free of PyTorch, so the CLI can offer them without importing it.
LOSSES = ("ce", "ohem", "ce+dice", "ce+boundary", "ce+dice+boundary")
MIXES = ("none", "cutmix", "classmix", "mixup")
TEACHER_LOGITS = ("auto", "stored", "live")
