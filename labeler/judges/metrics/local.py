"""Region-by-region and over-time comparisons of the two sides (and of each with the reference).

Generated videos are never pixel-identical: each side has its own sub-pixel shift, grain and
encoding, and the artifact that decides a segment is often confined to part of the frame or to a
few frames. These measures therefore work on cells of a ``GRID`` x ``GRID`` grid and per frame
step, at half resolution (grain averages out), and compare each side with the *other* side, or
with the reference *after* a global sub-pixel registration, so the faint differences both sides
share do not count:

- :func:`cell_steps` - how much each cell changes from one frame to the next (motion energy);
- :func:`roughness` - how irregular that change is over time (second temporal difference): a
  boiling region, a jump back or a drifting warp raise it, steady motion does not;
- :func:`held_cells` - cells that stand still while the same cell of the other side moves;
- :func:`reversal` - how far the picture's change turns back on itself from one frame step to the
  next (a jump back in time, or fresh noise) instead of carrying on (motion);
- :func:`registered_error` - per frame and cell, the squared error against the reference left
  after the best global sub-pixel shift of the side onto the reference.

All functions take half-resolution luma ([K, H, W] float32) and are symmetric in the sense the
judge needs: measuring (A, B) gives the results of (B, A) in swapped order.
"""

from __future__ import annotations

import numpy as np

GRID = 4  # cells per side of the comparison grid: a 1/9 .. 1/4 artifact fills at least one cell


def cell_means(x: np.ndarray, grid: int = GRID) -> np.ndarray:
    """[..., H, W] -> [..., grid * grid]: the mean of every cell (edges cropped to fit); zeros
    (nothing to compare) when the picture has fewer pixels a side than the grid has cells."""
    h, w = x.shape[-2:]
    ch, cw = h // grid, w // grid
    if ch == 0 or cw == 0:
        return np.zeros((*x.shape[:-2], grid * grid), dtype=np.float32)
    x = x[..., : ch * grid, : cw * grid]
    shaped = x.reshape(*x.shape[:-2], grid, ch, grid, cw)
    return shaped.mean(axis=(-3, -1)).reshape(*x.shape[:-2], grid * grid)


def coarse(h: np.ndarray) -> np.ndarray:
    """4x4 means of half-resolution luma (1/8 resolution): grain and coding noise average out,
    motion of anything larger than a few pixels stays."""
    k, hh, ww = h.shape
    hh, ww = hh // 4 * 4, ww // 4 * 4
    return h[:, :hh, :ww].reshape(k, hh // 4, 4, ww // 4, 4).mean(axis=(2, 4))


def halve(c: np.ndarray) -> np.ndarray:
    """2x2 means of [K, H, W] (odd edges cropped): one octave coarser. At 1/16 and 1/32 of the
    frame, blotchy noise (a boiling region) averages out while the motion of anything the size of
    an object stays."""
    k, hh, ww = c.shape
    if hh < 2 or ww < 2:
        return c
    hh, ww = hh // 2 * 2, ww // 2 * 2
    return c[:, :hh, :ww].reshape(k, hh // 2, 2, ww // 2, 2).mean(axis=(2, 4))


def cell_steps(c: np.ndarray) -> np.ndarray:
    """[K-1, GRID*GRID]: mean absolute change of every cell of coarse luma (see ``coarse``)
    between consecutive frames."""
    return cell_means(np.abs(np.diff(c, axis=0)))


def roughness(h: np.ndarray) -> np.ndarray:
    """[K-2, GRID*GRID]: mean |x[t+1] - 2 x[t] + x[t-1]| per cell: zero for still or steadily
    changing content, high where the change jumps around (fresh noise, a frame out of order)."""
    return cell_means(np.abs(h[2:] - 2.0 * h[1:-1] + h[:-2]))


def held_cells(
    steps_self: np.ndarray, steps_other: np.ndarray, *, floor: float, ratio: float = 0.3
) -> np.ndarray:
    """[K-1, cells] bool: this side's cell barely changes (below ``ratio`` of the other side's
    change at that step) while the other side's cell clearly moves (above ``floor`` grey levels,
    well over what grain and re-encoding alone change)."""
    return (steps_other > floor) & (steps_self < ratio * steps_other)


def reversal(c: np.ndarray) -> np.ndarray:
    """[K-2]: the correlation of each frame step's change with the next one's, over coarse luma
    ``c`` with each step's mean change (a brightness shift) removed. Motion carries on from one
    step to the next (positive), fresh noise turns back half-way (about -0.5), and a jump back in
    time undoes the steps before it (strongly negative)."""
    d = np.diff(c, axis=0).reshape(len(c) - 1, -1)
    d = d - d.mean(axis=1, keepdims=True)
    num = (d[:-1] * d[1:]).sum(axis=1)
    den = np.sqrt((d[:-1] ** 2).sum(axis=1) * (d[1:] ** 2).sum(axis=1))
    return np.where(den > 1e-6, num / np.maximum(den, 1e-6), 0.0)


def _shift_fit(x: np.ndarray, ref: np.ndarray, gy: np.ndarray, gx: np.ndarray) -> np.ndarray:
    """``x`` minus its first-order fit of ``ref`` shifted by the least-squares global (dy, dx):
    what remains once a sub-pixel misregistration is explained away (Lucas-Kanade, one step)."""
    d = x - ref
    a11, a12, a22 = float((gy * gy).sum()), float((gy * gx).sum()), float((gx * gx).sum())
    b1, b2 = float((gy * d).sum()), float((gx * d).sum())
    det = a11 * a22 - a12 * a12
    if det <= 1e-9 * max(a11 * a22, 1.0):
        return d
    dy, dx = (a22 * b1 - a12 * b2) / det, (a11 * b2 - a12 * b1) / det
    # Only sub-pixel to one-pixel shifts are misregistration; anything larger is content.
    dy, dx = float(np.clip(dy, -1.5, 1.5)), float(np.clip(dx, -1.5, 1.5))
    return d - np.float32(dy) * gy - np.float32(dx) * gx


def registered_error(ref: np.ndarray, *sides: np.ndarray) -> list[np.ndarray]:
    """Per side, [K, cells] mean squared error against ``ref`` after a global sub-pixel
    registration (one shift per segment, fitted at half resolution)."""
    gy = np.zeros_like(ref)
    gx = np.zeros_like(ref)
    gy[:, 1:-1] = 0.5 * (ref[:, 2:] - ref[:, :-2])
    gx[:, :, 1:-1] = 0.5 * (ref[:, :, 2:] - ref[:, :, :-2])
    out = []
    for x in sides:
        r = _shift_fit(x, ref, gy, gx)
        out.append(cell_means(r * r))
    return out
