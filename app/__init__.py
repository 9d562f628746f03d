"""sharp-serve: one photo in, a 3D Gaussian splat scene out, with Apple's SHARP model."""

__version__ = "0.1.0"
CODE_LICENCE = "Apache-2.0"
"""The licence of this project's code (LICENSE); the SHARP weights have Apple's own (NOTICE)."""
