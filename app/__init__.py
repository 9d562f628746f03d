"""sharp-serve: one photo in, a 3D Gaussian splat scene out, with Apple's SHARP model."""

__version__ = "0.1.0"
