"""A clip in, a scene per frame out: `run_sequence` (`app.sequence.run`) sends each frame of `app.video`
through `app.pipeline.run`, aligns the frames' scales (`app.sequence.align`) and makes the manifest and the
preview video (`app.sequence.preview`). See docs/video.md."""

from app.sequence.run import (
    ALIGN_MODES,
    FRAMES_DIR,
    MANIFEST_FILE,
    PREVIEW_FILE,
    Align,
    FileSink,
    SequenceProgress,
    run_sequence,
)

__all__ = ["ALIGN_MODES", "FRAMES_DIR", "MANIFEST_FILE", "PREVIEW_FILE", "Align", "FileSink", "SequenceProgress",
           "run_sequence"]
