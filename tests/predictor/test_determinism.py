"""The same photo gives the same Gaussians in every process on one CPU.

The first parallel call of MKL's vector maths (VML) in a process (the composer's `log`, in a prediction)
used to race with VML's CPU detection, and a thread that lost ran a less accurate kernel for its share
of the tensor (`app.devices.prepare_cpu_maths`). Only that first call could go wrong, so each fresh
process predicts twice: the second prediction is the reference for the first. Sixteen intra-op threads
on a few cores make the race more likely, but it stays a matter of timing (before the fix, up to two
processes in five lost it here, and none in eight on an idle machine), so each process also reports
VML's cached CPU type, read from libtorch's symbol table: it must be set once the predictor is loaded,
before any prediction.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
PROCESSES = 2
LIBTORCH_CPU = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
VML_CPU_TYPE = "mkl_vml_serv_cpu_detect.vml_cpu_type"
"""MKL's cache of the detected CPU: -1 until VML's first call has finished detecting it."""

PREDICT_TWICE = """
import ctypes, sys
import torch
torch.set_num_threads(16)
from app.imaging import load_image
from app.predictor import SharpPredictor
from tests.helpers import digest
predictor = SharpPredictor.load("tiny", device="cpu")
library, offset = sys.argv[2], int(sys.argv[3])
if offset >= 0:
    base = min(int(line.split("-")[0], 16) for line in open("/proc/self/maps") if line.rstrip().endswith(library))
    print(ctypes.c_int.from_address(base + offset).value)
else:
    print("unknown")
image = load_image(sys.argv[1])
for _ in range(2):
    scene = predictor.predict(image).scene
    arrays = (scene.positions, scene.scales, scene.rotations, scene.colors, scene.opacities)
    print(" ".join(digest(array.tobytes()) for array in arrays))
"""


def vml_cpu_type_offset() -> int:
    """The offset of `VML_CPU_TYPE` in libtorch_cpu.so, or -1 where `nm` or the symbol is missing."""
    if shutil.which("nm") is None or not LIBTORCH_CPU.is_file():
        return -1
    symbols = subprocess.run(["nm", str(LIBTORCH_CPU)], capture_output=True, text=True, timeout=120).stdout
    return next((int(line.split()[0], 16) for line in symbols.splitlines() if line.endswith(" " + VML_CPU_TYPE)), -1)


def test_fresh_processes_predict_the_same_bytes(conformance_dir: Path) -> None:
    photo = conformance_dir / "coffee.png"
    offset = vml_cpu_type_offset()
    command = [sys.executable, "-c", PREDICT_TWICE, str(photo), LIBTORCH_CPU.name, str(offset)]
    runs = [subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300) for _ in range(PROCESSES)]
    assert all(run.returncode == 0 for run in runs), [run.stderr for run in runs]

    names = ["positions", "scales", "rotations", "colors", "opacities"]
    reference = runs[0].stdout.split("\n")[2]
    for process, run in enumerate(runs):
        cpu_type, first, second = run.stdout.split("\n")[:3]
        if offset >= 0:
            assert int(cpu_type) >= 0, f"process {process}: VML had not detected the CPU when the predictor was loaded"
        for name, got, want in zip(names, first.split(), second.split(), strict=True):
            assert got == want, f"process {process}: the first prediction's {name} differ from the second's"
        assert second == reference, f"process {process}: its predictions differ from process 0's"
