"""Tile-based alpha compositing of projected 2D Gaussians, in plain PyTorch (CPU, CUDA and MPS alike).

Image formation (Kerbl et al. 2023, "3D Gaussian Splatting for Real-Time Radiance Field Rendering", eq. 3 and
its CUDA rasteriser; gsplat's ``rasterize_to_pixels``). For a pixel with centre p (pixel (i, j) has its centre
at (i + 0.5, j + 0.5)) and the Gaussians sorted by depth z, nearest first:

    alpha_i = min(0.99, o_i exp(-½ (p - μ_i)ᵀ Σ₂D,i⁻¹ (p - μ_i)))      skipped (treated as 0) when < 1/255
    T_1 = 1,   T_{i+1} = T_i (1 - alpha_i)
    w_i = alpha_i T_i                                                  only while T_{i+1} >= 1e-4
    colour = Σ w_i c_i + T_end background,  alpha = Σ w_i,  depth = Σ w_i z_i / Σ w_i

The stopping rule is the one of the 3DGS CUDA code (``test_T = T * (1 - alpha); if (test_T < 0.0001f) done``):
the first Gaussian that would bring the transmittance below 1e-4 is *not* composited, and neither is any
Gaussian behind it; T_end is the transmittance after the last composited Gaussian, so ``alpha = 1 - T_end``.
Because the full product ``Π (1 - alpha)`` only decreases along the sorted list, "composited" is exactly
"the full product up to and including this Gaussian is >= 1e-4", which is what is evaluated here, as a mask.

Depth is the *normalised* expected depth of gsplat's ``"ED"`` mode (Σ w z / Σ w), 0 where nothing was
composited; the accumulated depth of gsplat's ``"D"`` mode is ``depth * alpha``. Colours are what viewers show
(sRGB in [0, 1]).

Implementation, without any per-Gaussian or per-pixel Python loop:

1. every visible Gaussian (already depth-sorted by `app.render.projection.project`) is paired with each
   ``tile_size x tile_size`` tile its support box overlaps; one stable sort of the int32 tile ids (the pairs are
   generated in depth order) gives each tile its depth-sorted list;
2. tiles are ordered by decreasing list length, so the tiles with entries left are always a prefix; passes of K
   list entries per tile then handle all those tiles at once (in chunks of at most ``max_elements``
   (tile, K, pixel) values): the K Gaussians' exponents at the tile's pixels come from one matrix product, since
   in tile-local pixel coordinates (u, v) the exponent is a quadratic form ``[u², uv, v², u, v, 1] · coeffs``;
3. T after each Gaussian is a cumulative product of ``1 - alpha`` along K times the T carried from the previous
   pass (float32 products: no cancellation); the weights ``alpha T_after / (1 - alpha)`` and the stopping mask
   follow elementwise, and one batched matrix product accumulates colour, depth and alpha. A chunk whose tiles
   have stopped at every pixel is skipped.

Defaults (4 x 4 tiles, K = 32) were the fastest on a 2-core CPU for a full-size SHARP scene at 512 x 512, whose
Gaussians cover about 5 x 5 pixels each there; they change speed and memory only, never the image (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from app.render.errors import RenderError
from app.render.projection import (
    ALPHA_MAX,
    ALPHA_MIN,
    CONIC_A,
    CONIC_B,
    CONIC_C,
    LOG_OPACITY,
    MEAN_X,
    MEAN_Y,
    ONE,
    RED,
    ProjectedGaussians,
)

T_MIN = 1e-4
"""Compositing stops before the transmittance would fall below this."""
LOG_T_MIN = math.log(T_MIN)
DEFAULT_TILE_SIZE = 4
DEFAULT_PASS_SIZE = 32
DEFAULT_MAX_ELEMENTS = 1 << 21
MAX_PAIRS = 1 << 26
"""Most (tile, Gaussian) pairs one frame may need (a bound on work); more is refused."""
BAND_PAIRS = 1 << 22
"""Most pairs composited at once (about 200 MB of bookkeeping): larger frames are done in bands of tile rows."""


@dataclass(frozen=True)
class RenderOutput:
    """One rendered frame (tensors on the render device).

    Attributes:
        color: (H, W, 3) float32 in [0, 1], background included.
        depth: (H, W) float32 metres, normalised expected depth Σ w z / Σ w (0 where alpha is 0).
        alpha: (H, W) float32 accumulated opacity Σ w = 1 - T_end, in [0, 1].
    """

    color: torch.Tensor
    depth: torch.Tensor
    alpha: torch.Tensor


@dataclass(frozen=True)
class TileLists:
    """Every (tile, Gaussian) pair, sorted by tile, then depth; P pairs.

    Attributes:
        gaussians: (P,) int64 index of each pair's Gaussian in the projected (depth-sorted) arrays.
        starts, counts: (tiles,) int64 first pair and number of pairs of each tile (row-major tile order).
    """

    gaussians: torch.Tensor
    starts: torch.Tensor
    counts: torch.Tensor


def tile_lists(projected: ProjectedGaussians, tile_size: int) -> TileLists:
    """Pair every visible Gaussian with the tiles its support box overlaps; sort the pairs by (tile, depth).

    The Gaussians are already depth-sorted, so one stable sort of the int32 tile ids orders the pairs.

    Raises:
        RenderError: ``too_large`` beyond `MAX_PAIRS` pairs.
    """
    s = tile_size
    tiles_x, tiles_y = -(-projected.width // s), -(-projected.height // s)
    device = projected.params.device
    boxes = projected.boxes // s
    span_x = boxes[:, 1] - boxes[:, 0] + 1
    counts = span_x * (boxes[:, 3] - boxes[:, 2] + 1)
    total = int(counts.sum()) if counts.numel() else 0
    if total > MAX_PAIRS:
        raise RenderError("too_large", f"the frame needs {total:,} tile-Gaussian pairs (limit {MAX_PAIRS:,}): "
                                       "too many large Gaussians for this image size")
    gaussian = torch.repeat_interleave(torch.arange(counts.numel(), device=device), counts)
    first = torch.cumsum(counts, 0) - counts
    per_gaussian = torch.stack([first, span_x, boxes[:, 0], boxes[:, 2]], dim=1).to(torch.int32)
    first_p, span_p, x0_p, y0_p = per_gaussian.index_select(0, gaussian).unbind(1)
    local = torch.arange(total, device=device, dtype=torch.int32) - first_p
    row = torch.div(local, span_p, rounding_mode="floor")
    tile = (y0_p + row) * tiles_x + x0_p + (local - row * span_p)
    tile_sorted, order = torch.sort(tile, stable=True)
    counts_per_tile = torch.bincount(tile_sorted, minlength=tiles_x * tiles_y)

    starts = torch.cumsum(counts_per_tile, 0) - counts_per_tile
    return TileLists(gaussians=gaussian.index_select(0, order), starts=starts, counts=counts_per_tile)


def _below(value: float) -> float:
    """The largest float32 below float32(`value`): ``x > _below(v)`` is ``x >= v`` for float32 x."""
    return float(np.nextafter(np.float32(value), np.float32(0)))


def rasterize(projected: ProjectedGaussians, background: tuple[float, float, float] = (0.0, 0.0, 0.0), *,
              tile_size: int = DEFAULT_TILE_SIZE, pass_size: int = DEFAULT_PASS_SIZE,
              max_elements: int = DEFAULT_MAX_ELEMENTS, band_pairs: int = BAND_PAIRS) -> RenderOutput:
    """Composite depth-sorted 2D Gaussians into colour, depth and alpha images (module docstring).

    A frame that needs more than `band_pairs` (tile, Gaussian) pairs is composited in horizontal bands of tile
    rows, each needing at most that many (or one tile row), so that the pairs' bookkeeping (about 50 bytes a
    pair) stays bounded; every pixel sees the same Gaussians in the same order either way.

    Args:
        projected: the output of `app.render.projection.project`.
        background: RGB in [0, 1] behind everything.
        tile_size: tile side in pixels.
        pass_size: K, list entries per tile handled per pass.
        max_elements: bound on tile x K x pixel values held at once (memory is about 20 bytes each).
        band_pairs: most pairs composited at once (memory only).

    Raises:
        RenderError: ``too_large`` when the whole frame needs more than `MAX_PAIRS` pairs.
    """
    bands = _bands(projected, tile_size, band_pairs)
    if len(bands) == 1 and bands[0][1] - bands[0][0] > tile_size:
        return _rasterize(projected, background, tile_size=tile_size, pass_size=pass_size,
                          max_elements=max_elements)
    rows = []
    for top, bottom in bands:
        band = _band(projected, top, bottom)
        parts = [_rasterize(_band(band, 0, band.height, left, right), background, tile_size=tile_size,
                            pass_size=pass_size, max_elements=max_elements)
                 for left, right in _columns(band, tile_size, band_pairs)]
        rows.append(RenderOutput(color=torch.cat([p.color for p in parts], dim=1),
                                 depth=torch.cat([p.depth for p in parts], dim=1),
                                 alpha=torch.cat([p.alpha for p in parts], dim=1)))
    return RenderOutput(color=torch.cat([r.color for r in rows]), depth=torch.cat([r.depth for r in rows]),
                        alpha=torch.cat([r.alpha for r in rows]))


def _bands(projected: ProjectedGaussians, tile_size: int, band_pairs: int) -> list[tuple[int, int]]:
    """Pixel row ranges [top, bottom) of whole tile rows, each needing at most `band_pairs` pairs (or one row)."""
    per_row = _pairs_per_tile_line(projected, tile_size, across="rows")
    total = sum(per_row)
    if total > MAX_PAIRS:
        raise RenderError("too_large", f"the frame needs {total:,} tile-Gaussian pairs (limit {MAX_PAIRS:,}): "
                                       "too many large Gaussians for this image size")
    return [(top * tile_size, min(bottom * tile_size, projected.height))
            for top, bottom in _groups(per_row, band_pairs)]


def _columns(projected: ProjectedGaussians, tile_size: int, band_pairs: int) -> list[tuple[int, int]]:
    """Pixel column ranges [left, right) of whole tile columns of a band, each needing at most `band_pairs`
    pairs (or one tile column): a band of one tile row can need more (every Gaussian of a scene in one row)."""
    per_column = _pairs_per_tile_line(projected, tile_size, across="columns")
    return [(left * tile_size, min(right * tile_size, projected.width))
            for left, right in _groups(per_column, band_pairs)]


def _pairs_per_tile_line(projected: ProjectedGaussians, tile_size: int,
                         across: Literal["rows", "columns"]) -> list[int]:
    """Tile-Gaussian pairs each tile row (`across="rows"`) or tile column (`"columns"`) needs: every Gaussian
    adds the tiles its box covers along a line to each line its box crosses (a difference array, summed)."""
    boxes = projected.boxes // tile_size  # (N, 4) tile indices: x0, x1, y0, y1
    crossed, covered, extent = (2, 0, projected.height) if across == "rows" else (0, 2, projected.width)
    tiles = boxes[:, covered + 1] - boxes[:, covered] + 1
    change = torch.zeros(-(-extent // tile_size) + 1, dtype=torch.int64, device=boxes.device)
    change.index_add_(0, boxes[:, crossed], tiles)
    change.index_add_(0, boxes[:, crossed + 1] + 1, -tiles)
    return torch.cumsum(change[:-1], 0).tolist()


def _groups(counts: list[int], budget: int) -> list[tuple[int, int]]:
    """Consecutive index ranges [first, end) of `counts`, each summing to at most `budget` (or of one index)."""
    groups: list[tuple[int, int]] = []
    first, total = 0, 0
    for index, count in enumerate(counts):
        if total and total + count > budget:
            groups.append((first, index))
            first, total = index, 0
        total += count
    groups.append((first, len(counts)))
    return groups


def _band(projected: ProjectedGaussians, top: int, bottom: int, left: int = 0, right: int | None = None
          ) -> ProjectedGaussians:
    """The pixel rows [top, bottom) and columns [left, right) (None: the width) as an image of their own: the
    Gaussians whose box meets them, moved by (-left, -top), boxes clipped to it (still in depth order). `top`
    and `left` are on the tile grid, so every pixel keeps its tile's Gaussians."""
    right = projected.width if right is None else right
    boxes = projected.boxes
    keep = torch.nonzero((boxes[:, 2] < bottom) & (boxes[:, 3] >= top)
                         & (boxes[:, 0] < right) & (boxes[:, 1] >= left)).squeeze(1)
    params = projected.params.index_select(0, keep)
    params[:, MEAN_X] -= left
    params[:, MEAN_Y] -= top
    band_boxes = boxes.index_select(0, keep)
    band_boxes[:, :2] = band_boxes[:, :2].clamp(left, right - 1) - left
    band_boxes[:, 2:] = band_boxes[:, 2:].clamp(top, bottom - 1) - top
    return ProjectedGaussians(params=params, boxes=band_boxes, width=right - left, height=bottom - top)


def _rasterize(projected: ProjectedGaussians, background: tuple[float, float, float], *, tile_size: int,
               pass_size: int, max_elements: int) -> RenderOutput:
    """`rasterize` of one band (or the whole frame)."""
    device = projected.params.device
    width, height, s = projected.width, projected.height, tile_size
    tiles_x, tiles_y = -(-width // s), -(-height // s)
    num_tiles, pixels = tiles_x * tiles_y, s * s
    lists = tile_lists(projected, s)

    v, u = torch.meshgrid(torch.arange(s, device=device, dtype=torch.float32) + 0.5,
                          torch.arange(s, device=device, dtype=torch.float32) + 0.5, indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    features = torch.stack([u * u, u * v, v * v, u, v, torch.ones_like(u)])  # (6, P)
    # Tiles in order of decreasing list length: the tiles with entries left at any pass are then a prefix, and
    # every per-tile array below is sliced, never gathered or scattered.
    tile_order = torch.argsort(lists.counts, descending=True, stable=True)
    counts = lists.counts.index_select(0, tile_order)
    starts = lists.starts.index_select(0, tile_order)
    origin = torch.stack([(tile_order % tiles_x) * s, (tile_order // tiles_x) * s], dim=1).float()  # (tiles, 2)

    # Transmittance carried between passes (the full product, see the module docstring); pixels of the padded
    # tile grid outside the image start at 0, i.e. finished.
    inside = ((origin[:, :1] + u) < width) & ((origin[:, 1:] + v) < height)
    carried = inside.float()
    accum = torch.zeros(num_tiles, 5, pixels, device=device)  # Σ w (r, g, b, z, 1)

    total_pairs = lists.gaussians.numel()
    params = projected.params
    alpha_floor, t_floor = _below(ALPHA_MIN), _below(T_MIN)
    # Host copies of the list lengths and of which tiles have stopped everywhere, to plan the passes.
    host_counts = counts.cpu()
    longest = int(host_counts[0]) if num_tiles else 0
    done = (carried < T_MIN).all(1).cpu()
    start = 0
    while total_pairs:
        num_active = int((host_counts > start).sum())
        if num_active == 0:
            break
        # K entries a pass: `pass_size`, or more while few tiles have entries left (a few long lists, as when
        # a whole scene lies in a few tiles), so that a pass holds up to `max_elements` values: the passes,
        # each a fixed cost, are then at most about pairs x pixels / max_elements, not longest / pass_size.
        k = max(pass_size, min(max_elements // (num_active * pixels), longest - start))
        slot = torch.arange(k, device=device)
        chunk = max(1, max_elements // (k * pixels))
        for first in range(0, num_active, chunk):
            last = min(first + chunk, num_active)
            if bool(done[first:last].all()):
                continue
            rows_t = slice(first, last)
            pair = starts[rows_t, None] + start + slot  # (C, K)
            valid = (start + slot) < counts[rows_t, None]
            g = lists.gaussians.index_select(0, pair.clamp_max(total_pairs - 1).reshape(-1))
            rows = params.index_select(0, g).view(last - first, k, -1)  # (C, K, 11)
            local = rows[..., MEAN_X:MEAN_Y + 1] - origin[rows_t, None, :]
            mx, my = local.unbind(2)
            a, b, c = rows[..., CONIC_A], rows[..., CONIC_B], rows[..., CONIC_C]
            # -½ (A (u-mx)² + 2B (u-mx)(v-my) + C (v-my)²) + ln o, expanded in u and v
            lin_x = a * mx + b * my
            lin_y = b * mx + c * my
            const = rows[..., LOG_OPACITY] - 0.5 * (mx * lin_x + my * lin_y)
            const.masked_fill_(~valid, -math.inf)  # padding slots: alpha 0
            coeffs = torch.stack([-0.5 * a, -b, -0.5 * c, lin_x, lin_y, const], dim=2)  # (C, K, 6)
            values = rows[..., RED:ONE + 1].contiguous()  # (C, K, 5); contiguous for a fast batched product
            # alpha = min(0.99, o exp(-½ dᵀ Σ⁻¹ d)), zeroed below 1/255; (C, K, P)
            alpha = torch.nn.functional.threshold_((coeffs @ features).exp_().clamp_max_(ALPHA_MAX), alpha_floor, 0.0)
            one_minus = torch.rsub(alpha, 1.0)
            after = torch.cumprod(one_minus, dim=1).mul_(carried[rows_t, None, :])  # T after each Gaussian
            carried[rows_t] = after[:, -1, :]
            # w = alpha T_before = alpha T_after / (1 - alpha), where T_after >= 1e-4 (else the pixel has stopped)
            weight = torch.nn.functional.threshold_(after, t_floor, 0.0).div_(one_minus).mul_(alpha)
            accum[rows_t] += values.transpose(1, 2) @ weight
        done = (carried < T_MIN).all(1).cpu()
        start += k

    accum = accum.index_select(0, torch.argsort(tile_order))
    image = accum.reshape(tiles_y, tiles_x, 5, s, s).permute(0, 3, 1, 4, 2).reshape(tiles_y * s, tiles_x * s, 5)
    image = image[:height, :width]
    alpha_sum = image[..., 4].clamp(0.0, 1.0)
    color = image[..., :3] + (1.0 - alpha_sum)[..., None] * torch.tensor(background, dtype=torch.float32,
                                                                         device=device)
    depth = torch.where(image[..., 4] > 0, image[..., 3] / image[..., 4].clamp_min(1e-12), 0.0)
    return RenderOutput(color=color.clamp(0.0, 1.0), depth=depth, alpha=alpha_sum)
