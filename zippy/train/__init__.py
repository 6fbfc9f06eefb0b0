"""Self-supervised training on homographic pairs (KP2D-style losses), CPU-friendly and resumable."""
