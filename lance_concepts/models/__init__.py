"""Models that turn images and text into vectors: the open_clip encoder (real model, local weights, demo model) and the demo model's runtime files."""
