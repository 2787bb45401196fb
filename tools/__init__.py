"""Build tools (not imported at run time): the default vocabulary build and the demo model training."""
