"""Anything -> images in [0, 1]: image sets for certification (images) and datasets for
training and evaluation (datasets)."""
