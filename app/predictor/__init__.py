"""The predictor: a loaded SHARP network and what turns a decoded photo into its input and its output.

- `predictor`: `SharpPredictor`, loading (`load`, `from_settings`) and `predict(image) -> Prediction`.
- `preprocess`: the photo resized to the network's square input.
- `unproject`: the network's Gaussians in metric OpenCV camera space.
- `progress`: how far a forward pass has got, from forward hooks (for job progress).
"""

from app.predictor.predictor import SharpPredictor

__all__ = ["SharpPredictor"]
