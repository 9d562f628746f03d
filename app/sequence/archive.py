"""A clip's files as one zip, made as they come (the `sink` of `run_sequence`) and returned whole.

The layout is the folder's the CLI writes and the `sequence.zip` a job serves: ``frames/000000.<ext>``, ...,
``preview.mp4``, ``manifest.json``; entries are stored, not compressed (the formats that shrink already
are). The archive is spooled to a temporary file past `SPOOL_BYTES`, so a long clip does not sit in memory
twice while it is made.

    with ZipSink() as sink:
        run_sequence(predictor, clip, {"spz": {}}, sink=sink, limits=limits)
        body = sink.finish()
"""

from __future__ import annotations

import contextlib
import tempfile
import zipfile

SPOOL_BYTES = 64 * 1024**2
"""Archives up to this size are made in memory; larger ones in a temporary file."""


class ZipSink(contextlib.ExitStack):
    """`sink(path, body)` adds a file; `finish()` returns the archive's bytes. The temporary file goes when
    the `with` block ends."""

    def __enter__(self) -> ZipSink:
        super().__enter__()
        self._file = self.enter_context(tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES))
        self._archive = self.enter_context(zipfile.ZipFile(self._file, "w", compression=zipfile.ZIP_STORED,
                                                           allowZip64=True))
        return self

    def __call__(self, path: str, body: bytes) -> None:
        self._archive.writestr(path, body)

    def finish(self) -> bytes:
        self._archive.close()
        self._file.seek(0)
        return self._file.read()
