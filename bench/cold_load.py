"""Cold-load benchmark for a checkpoint with the exact tensor shapes of the official SHARP one.

Writes a synthetic ~2.8 GB state_dict (the shapes of `app.model.build_network("sharp")`, which a test
holds equal to the official manifest) to a temporary directory, then measures each way of loading it
in a fresh process, after evicting the file from the page cache (POSIX_FADV_DONTNEED) where the OS allows:

- `full`:   `torch.load` without mmap (every byte read and copied into RAM);
- `mmap`:   `torch.load` with mmap (tensors are views of the file, pages are read on first use),
            then the first read of every weight, which is where the deferred disk reads land;
- `assign`: mmap load + building the network on the meta device + `load_weights(assign=True)`;
- `copy`:   full load + building the network on the CPU (allocation + init) + `load_weights` by copy.

Times are wall-clock
seconds, excluding interpreter start and imports; memory is in GB (10^9 bytes): anonymous (private
copies), file-backed (mapped checkpoint pages) and the process's peak RSS. The file is deleted at
the end. Run: `.venv/bin/python -m bench.cold_load`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from app.model import build_network  # noqa: E402
from app.weights import load_state_dict, load_weights  # noqa: E402

SCENARIOS = ("full", "mmap", "assign", "copy")


def evict(path: Path) -> bool:
    """Drop the file's pages from the page cache; False where the OS does not allow it."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def memory_gb() -> dict[str, float]:
    """This process's anonymous and file-backed resident memory and peak RSS, in GB."""
    fields = {"RssAnon": "anon_gb", "RssFile": "file_gb", "VmHWM": "peak_gb"}
    out = dict.fromkeys(fields.values(), float("nan"))
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in fields:
                out[fields[name]] = int(value.split()[0]) * 1024 / 1e9
    return out


class Clock:
    """Named wall-clock laps, in seconds."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self.start = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self.start
        self.start = now


def run_scenario(scenario: str, path: Path) -> dict[str, object]:
    """Measure one scenario in this process; returns laps (s) and memory (GB)."""
    result: dict[str, object] = {}
    mmap = scenario in ("mmap", "assign")
    clock = Clock()
    state_dict = load_state_dict(path, mmap=mmap)
    clock.lap("torch.load, mmap" if mmap else "torch.load, no mmap")
    if scenario == "mmap":
        result["memory_after_load"] = memory_gb()
        sum(float(t.sum(dtype=torch.float64)) for t in state_dict.values())
        clock.lap("first read of every weight")
    elif scenario == "assign":
        model = build_network("sharp", device="meta")
        clock.lap("build network on meta device")
        load_weights(model, state_dict, assign=True)
        clock.lap("load_weights(assign=True)")
        assert not any(t.is_meta for t in model.state_dict().values())
    elif scenario == "copy":
        model = build_network("sharp", device="cpu")
        clock.lap("build network on CPU (allocate + init)")
        load_weights(model, state_dict, assign=False)
        clock.lap("load_weights(assign=False), copy")
    result.update(laps=clock.laps, memory=memory_gb())
    return result


def write_checkpoint(path: Path) -> dict[str, tuple[int, ...]]:
    """torch.save float32 tensors of the network's shapes, tensor i filled with the constant i / 1000."""
    shapes = {key: tuple(t.shape) for key, t in build_network("sharp", device="meta").state_dict().items()}
    torch.save({key: torch.full(shape, i / 1000.0) for i, (key, shape) in enumerate(shapes.items())}, path)
    return shapes


def print_result(scenario: str, result: dict[str, object]) -> float:
    """Print one scenario's laps and memory; returns its total seconds."""
    laps: dict[str, float] = result["laps"]  # type: ignore[assignment]
    total = sum(laps.values())
    print(f"\n{scenario}")
    for name, seconds in laps.items():
        print(f"  {name:<44} {seconds:8.3f} s")
    print(f"  {'total':<44} {total:8.3f} s")
    for label, key in (("memory after load", "memory_after_load"), ("memory at the end", "memory")):
        if key in result:
            mem: dict[str, float] = result[key]  # type: ignore[assignment]
            print(
                f"  {label:<44} anon {mem['anon_gb']:.2f} GB, file-backed {mem['file_gb']:.2f} GB, "
                f"peak RSS {mem['peak_gb']:.2f} GB"
            )
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tmp-dir", type=Path, default=None, help="where to write the ~2.8 GB file")
    parser.add_argument("--child", choices=SCENARIOS, help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_scenario(args.child, args.file)))
        return

    with tempfile.TemporaryDirectory(dir=args.tmp_dir, prefix="sharp-cold-load-") as tmp:
        path = Path(tmp) / "sharp_synthetic.pt"
        start = time.perf_counter()
        shapes = write_checkpoint(path)
        n_params = sum(torch.Size(s).numel() for s in shapes.values())
        print(f"checkpoint: {len(shapes)} tensors, {n_params:,} parameters; torch {torch.__version__}, "
              f"{os.cpu_count()} CPUs")
        size = path.stat().st_size
        print(
            f"wrote {path.name}: {size:,} bytes ({size / 1e9:.3f} GB) in {time.perf_counter() - start:.1f} s"
        )
        evicted = evict(path)
        print(f"page cache evicted before each scenario: {'yes' if evicted else 'no (warm cache figures)'}")

        totals: dict[str, float] = {}
        for scenario in SCENARIOS:
            evict(path)
            command = [sys.executable, __file__, "--child", scenario, "--file", str(path)]
            done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
            totals[scenario] = print_result(scenario, json.loads(done.stdout.strip().splitlines()[-1]))

    print(f"\nfile size: {size / 1e9:.3f} GB")
    print(f"torch.load without mmap: {totals['full']:.3f} s")
    print(f"torch.load with mmap, then first read of every weight: {totals['mmap']:.3f} s")
    print(f"mmap + meta build + load_weights(assign=True): {totals['assign']:.3f} s")
    print(f"full load + CPU build + load_weights by copy: {totals['copy']:.3f} s")
    print(f"cold_load_seconds_mmap_assign: {totals['assign']:.3f}")


if __name__ == "__main__":
    main()
