"""Speed and error of each precision mode on the conformance case, in one process.

    python -m bench.precision [--device auto|cpu|cuda] [--float16] [--ablate] [--repeats N]

Runs the full-size network (the conformance kit's seed-0 weights, coffee.png, f_px = 500) once
per mode: float32, bfloat16 autocast around the whole network, the recommended mixed bfloat16
policy (`--dtype bfloat16`), and float16 autocast with `--float16` (slow on a CPU). Per mode it
prints the forward time, the speed-up over float32, and the relative L2 error of the final
positions, covariances, colours and opacities against the float32 run.

`--ablate` adds the per-part study behind the policy: bfloat16 in one part of the network only,
and everywhere but one part; plus the composer and the unprojection inputs in bfloat16
(evaluated on the float32 run's captured deltas, no extra forward).

The last two lines are `bf16_speedup_vs_fp32: X` and `bf16_rel_l2_positions: Y` for the
recommended bfloat16 mode. Timings are single runs unless `--repeats` says otherwise; on a
shared machine they move by several percent between runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import app.model.network as network_module
from app.devices import select_device
from app.gaussians import GaussianScene
from app.imaging import load_image
from app.model.composer import NetworkGaussians, compose_gaussians
from app.model.initializer import BaseGaussians
from app.model.network import build_network, fill_synthetic_weights
from app.model.precision import (
    AUTOCAST_BF16,
    AUTOCAST_FP16,
    MIXED_BF16,
    NETWORK_PARTS,
    PrecisionPolicy,
    precision_context,
)
from app.predictor import SharpPredictor
from app.predictor.unproject import unproject_to_camera
from bench.common import CONFORMANCE_DIR, conformance_network, synchronize
from bench.gpu import covariances, rel_l2

F_PX = 500.0


@dataclass
class Result:
    name: str
    seconds: float
    scene: GaussianScene


def run_mode(network: torch.nn.Module, predictor: SharpPredictor, image: object, mode: str | PrecisionPolicy,
             repeats: int) -> tuple[float, GaussianScene, NetworkGaussians]:
    """Best-of-`repeats` forward time (s) under `mode`, the unprojected scene and the raw network output."""
    device = predictor.device
    network_input = predictor.preprocess(image)  # type: ignore[arg-type]
    factor = torch.tensor([F_PX / image.width], dtype=torch.float32, device=device)  # type: ignore[attr-defined]
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        with torch.inference_mode(), precision_context(network, mode, device.type):
            gaussians = network(network_input, factor)
        synchronize(device)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        print(f"  ({mode if isinstance(mode, str) else mode.name}: {wall:.1f} s wall, {cpu:.1f} s CPU)", flush=True)
        best = min(best, wall)
    scene = unproject_to_camera(gaussians, F_PX, image.width, image.height)  # type: ignore[attr-defined]
    return best, scene, gaussians


def error_columns(scene: GaussianScene, reference: GaussianScene, reference_covs: np.ndarray) -> list[float]:
    return [
        rel_l2(scene.positions, reference.positions.astype(np.float64)),
        rel_l2(covariances(scene.rotations, scene.scales), reference_covs),
        rel_l2(scene.colors, reference.colors.astype(np.float64)),
        rel_l2(scene.opacities, reference.opacities.astype(np.float64)),
    ]


def print_table(title: str, rows: list[tuple[str, float | None, float | None, list[float]]]) -> None:
    print(f"\n{title}")
    print("| mode | forward s | speed-up vs float32 | positions | covariances | colours | opacities |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, seconds, speedup, errs in rows:
        time_cell = "—" if seconds is None else f"{seconds:.1f}"
        speed_cell = "—" if speedup is None else f"{speedup:.2f}×"
        print(f"| {name} | {time_cell} | {speed_cell} | " + " | ".join(f"{e:.1e}" for e in errs) + " |")
    sys.stdout.flush()


def bf16_after_network(captured: dict[str, object], image: object) -> tuple[GaussianScene, GaussianScene]:
    """The float32 run's deltas through (a) the composer computed in bfloat16, (b) outputs rounded to bfloat16."""
    delta = captured["delta"]
    base = captured["base"]
    scale = captured["global_scale"]
    assert isinstance(delta, torch.Tensor) and isinstance(base, BaseGaussians) and isinstance(scale, torch.Tensor)
    low = torch.bfloat16
    base_low = BaseGaussians(**{f.name: getattr(base, f.name).to(low) for f in fields(BaseGaussians)})
    composed = compose_gaussians(delta.to(low), base_low, scale.to(low))
    in_composer = unproject_to_camera(composed, F_PX, image.width, image.height)  # type: ignore[attr-defined]
    exact = compose_gaussians(delta, base, scale)
    rounded = replace(exact, **{f.name: getattr(exact, f.name).to(low).float() for f in fields(NetworkGaussians)})
    at_unprojection = unproject_to_camera(rounded, F_PX, image.width, image.height)  # type: ignore[attr-defined]
    return in_composer, at_unprojection


def same(a: object, b: object) -> bool:
    """Exact equality of (nested) call arguments."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


class PartMemo:
    """Replays a network part's output when it sees exactly the inputs (and autocast state) of an earlier run.

    The ablation runs the float32 forward and the all-bfloat16 forward first; every later variant then
    recomputes only the parts whose precision or inputs differ from one of those two. The results are
    the same as full forwards (a part's output depends only on its inputs and its precision); the
    times are not, so the ablation reports errors only.
    """

    def __init__(self, network: torch.nn.Module, names: list[str], device_type: str, capacity: int = 2) -> None:
        self.entries: dict[tuple[str, bool, tuple[str, ...]], list[tuple[object, object]]] = {}
        self.hits = self.misses = 0
        for name in names:
            module = network.get_submodule(name)
            module.forward = self._wrap(name, module, device_type, capacity)  # type: ignore[method-assign]

    def _wrap(self, name: str, part: torch.nn.Module, device_type: str, capacity: int) -> Callable[..., object]:
        forward = part.forward

        def run(*args: object, **kwargs: object) -> object:
            # The part's precision: autocast on or off, and which layers inside it a policy has wrapped.
            islands = tuple(inner for inner, module in part.named_modules() if inner and "forward" in module.__dict__)
            key = (name, torch.is_autocast_enabled(device_type), islands)
            entries = self.entries.setdefault(key, [])
            for inputs, output in entries:
                if same(inputs, (args, kwargs)):
                    self.hits += 1
                    return output
            self.misses += 1
            output = forward(*args, **kwargs)
            if len(entries) < capacity:
                entries.append(((args, kwargs), output))
            return output

        return run


def ablate(network: torch.nn.Module, predictor: SharpPredictor, image: object, reference: GaussianScene,
           reference_covs: np.ndarray, captured: dict[str, object], memo: PartMemo) -> None:
    """bfloat16 in one part only, and everywhere but one part; errors only (parts are replayed, see PartMemo)."""
    parts = list(NETWORK_PARTS)
    all_parts = tuple(name for part in parts for name in NETWORK_PARTS[part])
    variants: list[tuple[str, PrecisionPolicy]] = [
        ("float32 (replayed: checks the memo)", PrecisionPolicy("fp32", torch.bfloat16, ())),
        ("bf16 in every part", PrecisionPolicy("all", torch.bfloat16, all_parts)),
    ]
    variants += [(f"bf16 only in: {part}", PrecisionPolicy(part, torch.bfloat16, NETWORK_PARTS[part]))
                 for part in parts]
    variants += [(f"bf16 everywhere but: {part}", PrecisionPolicy(
        f"not {part}", torch.bfloat16, tuple(n for n in all_parts if n not in NETWORK_PARTS[part])))
        for part in parts]
    variants += [("recommended policy (--dtype bfloat16)", MIXED_BF16)]
    variants += [("bf16 in every part, normalisations float32", replace(MIXED_BF16, reduced=all_parts))]
    rows: list[tuple[str, float | None, float | None, list[float]]] = []
    for label, policy in variants:
        _, scene, _ = run_mode(network, predictor, image, policy, 1)
        errs = error_columns(scene, reference, reference_covs)
        rows.append((label, None, None, errs))
        print(f"{label}: positions {errs[0]:.1e}, covariances {errs[1]:.1e} (memo hits {memo.hits}, "
              f"misses {memo.misses})", flush=True)
    with torch.inference_mode():
        in_composer, at_unprojection = bf16_after_network(captured, image)
    rows.append(("composer computed in bf16 (float32 network)", None, None,
                 error_columns(in_composer, reference, reference_covs)))
    rows.append(("network outputs rounded to bf16 before the unprojection", None, None,
                 error_columns(at_unprojection, reference, reference_covs)))
    print_table("Ablation (errors: relative L2 against the float32 run)", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--float16", action="store_true", help="also run float16 autocast (slow on a CPU)")
    parser.add_argument("--ablate", action="store_true", help="also run the per-part ablation")
    parser.add_argument("--repeats", type=int, default=1, help="forwards per mode; the fastest counts")
    parser.add_argument("--preset", default="sharp", help="'tiny' (synthetic weights) for a quick smoke run")
    args = parser.parse_args()

    device = select_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    if device.type == "cuda":
        # As the predictor sets them: cuDNN TF32 convolutions on (PyTorch's default), matmul TF32 off.
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = False
    if args.preset == "sharp":
        network = conformance_network().to(device)
    else:
        network = build_network(args.preset, device=device)
        fill_synthetic_weights(network)
    predictor = SharpPredictor(network, weights="synthetic", device=device, dtype="float32")
    image = load_image(CONFORMANCE_DIR / "coffee.png")
    if device.type == "cuda":  # warm-up: CUDA context, cuDNN autotuning
        run_mode(network, predictor, image, "float32", 1)

    captured: dict[str, object] = {}

    def capturing_compose(delta: torch.Tensor, base: BaseGaussians, global_scale: torch.Tensor) -> NetworkGaussians:
        captured.update(delta=delta, base=base, global_scale=global_scale)
        return compose_gaussians(delta, base, global_scale)

    all_parts = [name for names in NETWORK_PARTS.values() for name in names]
    memo = PartMemo(network, all_parts, device.type) if args.ablate else None
    network_module.compose_gaussians = capturing_compose  # type: ignore[assignment]
    fp32_seconds, reference, _ = run_mode(network, predictor, image, "float32", args.repeats)
    network_module.compose_gaussians = compose_gaussians
    reference_covs = covariances(reference.rotations, reference.scales)
    print(f"float32: {fp32_seconds:.1f} s")
    if memo is not None:
        ablate(network, predictor, image, reference, reference_covs, captured, memo)
        for name in all_parts:
            network.get_submodule(name).__dict__.pop("forward", None)
        memo.entries.clear()

    modes: list[tuple[str, str | PrecisionPolicy]] = [
        ("bfloat16 autocast (whole network)", AUTOCAST_BF16),
        ("bfloat16 mixed policy (recommended, --dtype bfloat16)", "bfloat16"),
    ]
    if args.float16:
        modes.append(("float16 autocast (whole network)", AUTOCAST_FP16))
    rows: list[tuple[str, float | None, float | None, list[float]]] = [
        ("float32", fp32_seconds, 1.0, error_columns(reference, reference, reference_covs))]
    recommended: tuple[float, float] | None = None
    for label, mode in modes:
        seconds, scene, _ = run_mode(network, predictor, image, mode, args.repeats)
        errs = error_columns(scene, reference, reference_covs)
        rows.append((label, seconds, fp32_seconds / seconds, errs))
        print(f"{label}: {seconds:.1f} s, positions {errs[0]:.1e}, covariances {errs[1]:.1e}", flush=True)
        if mode == "bfloat16":
            recommended = (fp32_seconds / seconds, errs[0])
    print_table("Modes (errors: relative L2 against the float32 run)", rows)

    assert recommended is not None
    print(f"bf16_speedup_vs_fp32: {recommended[0]:.2f}")
    print(f"bf16_rel_l2_positions: {recommended[1]:.2e}")


if __name__ == "__main__":
    main()
