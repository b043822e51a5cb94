"""Contrastive training: data, augmentations, methods, losses, the loop, evaluation and figures."""
