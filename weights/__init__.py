"""Trained Zippy weights (installed as zippy_weights); see MODEL_CARD.md."""
