"""Deployment to Modal, outside the library: only `modal_api.py` and `modal_app.py` import this package.

* `deploy.config`: names, the deploy-time switches (`SHARP_GPU` & co.) and the container's environment,
  derived from `app.settings.Settings`; every switch is baked into the image so that the container's
  re-import of a deploy file defines the same classes as `modal deploy` did.
* `deploy.images`: the GPU image (pinned torch, the project, `app/` and `deploy/`), the light image of
  the CPU-only functions, and the two Volumes.
* `deploy.container`: the one lifecycle of every GPU class (`ModelContainer`) and the checkpoint on the Volume.
* `deploy.front`: the CPU web container of `modal_api.py` that forwards predictions to the GPU class.
* `deploy.check` (`python -m deploy check`): what a deploy needs, checked offline.

The `app` package never imports `modal` or this package.
"""
