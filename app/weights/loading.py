"""Loading a checkpoint into the network: mmap'ed state_dict, key and shape checks, `assign=True`.

Cold load without copying the ~2.8 GB of weights: build the network on the meta device, load the
checkpoint with `load_state_dict(path, mmap=True)` and call `load_weights(model, sd, assign=True)`.
The parameters then *are* the memory-mapped tensors: the load takes well under a second and the
pages are read from disk on first use. Replacing the file with `os.replace` (as downloads do) is
safe while a process has it mapped; truncating or rewriting it in place is not.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from app.weights.errors import CheckpointFormatError, CheckpointMismatchError, CheckpointNotAvailableError

logger = logging.getLogger(__name__)

_ZIP_MAGIC = b"PK\x03\x04"
_MAX_LISTED = 5



def load_state_dict(
    path: Path, *, mmap: bool = True, map_location: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Read a state_dict with `torch.load(weights_only=True)`.

    With `mmap` the tensors are views of the memory-mapped file: loading costs almost nothing and
    pages are read on first use (combine with `load_weights(..., assign=True)` into a model built on
    the meta device for a cold load without copying). Files in the legacy, pre-zip format cannot be
    mapped and are read fully instead. A dict wrapping the weights under "state_dict" or "model" is
    unwrapped. Raises `CheckpointFormatError` naming the file if it cannot be read.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointNotAvailableError(f"The checkpoint file {path} does not exist.")
    try:
        with path.open("rb") as f:
            is_zip = f.read(4) == _ZIP_MAGIC
    except OSError as exc:
        raise CheckpointFormatError(f"Cannot read the checkpoint file {path}: {exc}.") from exc
    if mmap and not is_zip:
        logger.info("%s uses the legacy torch.save format; loading it without mmap.", path)
        mmap = False
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:
        summary = " ".join(str(exc).split())
        if len(summary) > 300:
            summary = summary[:300] + "..."
        raise CheckpointFormatError(
            f"{path} is not a loadable PyTorch checkpoint ({type(exc).__name__}: {summary}). It may be "
            "truncated or corrupt: delete it to download it again, or point SHARP_CHECKPOINT at a "
            "state_dict saved with torch.save."
        ) from exc
    return _as_state_dict(obj, path)


def _as_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    def is_tensor_dict(value: object) -> bool:
        return (
            isinstance(value, Mapping)
            and len(value) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
        )

    if is_tensor_dict(obj):
        return dict(obj)  # type: ignore[call-overload]
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if is_tensor_dict(obj.get(key)):
                return dict(obj[key])
        keys = ", ".join(repr(k) for k in list(obj)[:_MAX_LISTED]) or "none"
        raise CheckpointFormatError(
            f"{path} holds a dict that is not a state_dict (top-level keys: {keys}) and has no tensor "
            "dict under 'state_dict' or 'model'. Point SHARP_CHECKPOINT at the SHARP model's state_dict."
        )
    raise CheckpointFormatError(
        f"{path} holds a {type(obj).__name__}, not a state_dict (a dict of tensors). Point "
        "SHARP_CHECKPOINT at the SHARP model's state_dict."
    )


def check_state_dict(
    expected: Mapping[str, torch.Size | tuple[int, ...]], state_dict: Mapping[str, torch.Tensor]
) -> None:
    """Raise `CheckpointMismatchError` unless `state_dict` has exactly the expected keys and shapes.

    The message gives the counts and the first few missing keys, unexpected keys and shape
    mismatches; the error's `missing`, `unexpected` and `mismatched` attributes list them all.
    """
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        (key, tuple(tensor.shape), tuple(expected[key]))
        for key, tensor in state_dict.items()
        if key in expected and tuple(tensor.shape) != tuple(expected[key])
    ]
    if not (missing or unexpected or mismatched):
        return

    def listing(items: list[str]) -> str:
        shown = "; ".join(items[:_MAX_LISTED])
        return f"{shown}; ..." if len(items) > _MAX_LISTED else shown

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {listing(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {listing(unexpected)}")
    if mismatched:
        shapes = [f"{key}: got {list(got)} vs expected {list(want)}" for key, got, want in mismatched]
        parts.append(f"{len(mismatched)} shape mismatch(es): {listing(shapes)}")
    raise CheckpointMismatchError(
        f"The checkpoint does not fit the model (the model has {len(expected)} tensors, the checkpoint "
        f"{len(state_dict)}). {'. '.join(parts)}. Use the checkpoint that matches the model preset "
        "(SHARP_PRESET=sharp loads the official SHARP checkpoint).",
        missing=missing,
        unexpected=unexpected,
        mismatched=mismatched,
    )


def load_weights(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *, assign: bool = True
) -> None:
    """Check `state_dict` against the model's keys and shapes, then load it strictly.

    With `assign=True` the model's parameters become the given tensors (no copy): this is what
    makes a model built on the meta device usable, and with an mmap'ed state_dict the weights stay
    backed by the file. `assign=False` copies into the model's existing tensors (dtype/device kept).
    Tensors that are not in the state_dict (non-persistent buffers) are left as they are; a warning
    names any that are still on the meta device. Raises `CheckpointMismatchError`.
    """
    own = model.state_dict()
    check_state_dict({key: tensor.shape for key, tensor in own.items()}, state_dict)
    if not assign and any(tensor.is_meta for tensor in own.values()):
        raise ValueError("The model is on the meta device: load into it with assign=True.")
    try:
        model.load_state_dict(state_dict, strict=True, assign=assign)
    except RuntimeError as exc:
        raise CheckpointMismatchError(f"Loading the checkpoint into the model failed: {exc}") from exc
    still_meta = meta_tensor_names(model)
    if still_meta:
        logger.warning(
            "%d model tensor(s) are still on the meta device after loading (not in the checkpoint): %s",
            len(still_meta),
            ", ".join(still_meta[:_MAX_LISTED]),
        )


def meta_tensor_names(model: torch.nn.Module) -> list[str]:
    """Names of the model's parameters and buffers (persistent or not) that are on the meta device."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return [name for name, tensor in tensors if tensor.is_meta]
