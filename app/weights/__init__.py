"""Finding, downloading, loading and checking the SHARP checkpoint.

- `resolve.py`: `resolve_checkpoint` picks the file: an explicit path (`SHARP_CHECKPOINT`), else
  the cached copy `<SHARP_CACHE_DIR>/<basename of SHARP_CHECKPOINT_URL>`, else a download of
  `SHARP_CHECKPOINT_URL` into that path (unless `SHARP_OFFLINE`).
- `download.py`: `download_file`; a `.part` is renamed into place only once its length, zip
  integrity and (if given) SHA-256 check out. `transfer.py` resumes and retries over httpx,
  `progress.py` shows progress with tqdm, `lock.py` holds the inter-process `filelock`.
- `checksum.py`: SHA-256 with a `<file>.sha256` sidecar.
- `loading.py`: `load_state_dict` (mmap), `check_state_dict`, `load_weights`, `meta_tensor_names`.
- `errors.py`: the `CheckpointError` family, with `code`, `status` and `retryable`.
"""

from app.weights.checksum import file_sha256, verify_sha256
from app.weights.download import download_file
from app.weights.errors import (
    CheckpointDownloadError,
    CheckpointError,
    CheckpointFormatError,
    CheckpointMismatchError,
    CheckpointNotAvailableError,
    ChecksumMismatchError,
)
from app.weights.loading import check_state_dict, load_state_dict, load_weights, meta_tensor_names
from app.weights.resolve import cached_checkpoint_path, checkpoint_filename, resolve_checkpoint

__all__ = [
    "CheckpointDownloadError",
    "CheckpointError",
    "CheckpointFormatError",
    "CheckpointMismatchError",
    "CheckpointNotAvailableError",
    "ChecksumMismatchError",
    "cached_checkpoint_path",
    "check_state_dict",
    "checkpoint_filename",
    "download_file",
    "file_sha256",
    "load_state_dict",
    "load_weights",
    "meta_tensor_names",
    "resolve_checkpoint",
    "verify_sha256",
]
