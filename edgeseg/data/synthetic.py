"""Procedural road scenes with exact masks (numpy + cv2 only).

A scene is a pinhole camera looking down a straight street: a road with lane markings, a
sidewalk on each side, building facades and tree rows of varied heights behind the sidewalks,
sidewalk trees and a few cars. Every region is drawn with the same polygon into the image and the
mask, so the mask is exact. Colours, geometry, textures and lighting are drawn per seed, which
makes the task learnable for a small CNN in about a minute of CPU training but not trivial
(road and sidewalk colours overlap, so geometry matters).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from edgeseg.errors import EdgesegError

SYNTHETIC_CLASSES: list[str] = [
    "sky",
    "building",
    "tree",
    "road",
    "lane_marking",
    "sidewalk",
    "car",
]
SYNTHETIC_PALETTE: list[list[int]] = [
    [70, 130, 180],
    [70, 70, 70],
    [107, 142, 35],
    [128, 64, 128],
    [255, 255, 255],
    [244, 35, 232],
    [0, 0, 142],
]
SKY, BUILDING, TREE, ROAD, LANE, SIDEWALK, CAR = range(7)

_SHIFT = 4  # cv2 sub-pixel bits: polygons keep 1/16 px precision
_ONE = 1 << _SHIFT
_Z_FAR = 400.0  # road/markings are drawn up to here (a few px from the vanishing point)
_Z_SIDE = 160.0  # facades/trees are generated up to here
# Per-class texture strength: fine grain and blotchy low-frequency variation.
_AMP_FINE = np.array([1.5, 6.0, 14.0, 7.0, 4.0, 7.0, 2.5], np.float32)
_AMP_BLOB = np.array([4.0, 10.0, 22.0, 10.0, 6.0, 9.0, 3.0], np.float32)
_AMP_FINE_LUT = np.zeros(256, np.float32)
_AMP_FINE_LUT[: len(_AMP_FINE)] = _AMP_FINE
_AMP_BLOB_LUT = np.zeros(256, np.float32)
_AMP_BLOB_LUT[: len(_AMP_BLOB)] = _AMP_BLOB

_noise_cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _noise_tiles(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed mono noise tiles at least twice the frame size: fine grain and blotchy.

    Generating fresh Gaussian noise per frame would dominate the render time; a random window
    into a fixed tile is just as good for texture and stays deterministic. The tile's shape
    depends only on the frame size, so a scene renders identically whatever was rendered before.
    """
    shape = (max(512, 2 * h), max(1024, 2 * w))
    tiles = _noise_cache.get(shape)
    if tiles is None:
        fine = np.random.default_rng(20240607).standard_normal(shape, dtype=np.float32)
        blob = cv2.GaussianBlur(fine, (0, 0), 3.0)
        blob *= 1.0 / float(blob.std())
        if len(_noise_cache) >= 4:  # bound memory when many frame sizes are used
            _noise_cache.pop(next(iter(_noise_cache)))
        tiles = _noise_cache[shape] = (fine, blob)
    return tiles


def _colour(
    rng: np.random.Generator, base: tuple[float, float, float], spread: float
) -> np.ndarray:
    return np.clip(np.asarray(base, np.float64) + rng.uniform(-spread, spread, 3), 0, 255)


class _Layout:
    """The scene's world: road, pavements, buildings, trees, cars, drawn from ``seed``."""

    def __init__(self, seed: int, size_hw: tuple[int, int], travel: float = 0.0) -> None:
        rng = np.random.default_rng(seed)
        self.h, self.w = int(size_hw[0]), int(size_hw[1])
        if self.h < 8 or self.w < 8:
            raise EdgesegError(
                f"synthetic frame size {size_hw} is too small; use at least 8x8 pixels"
            )
        h, w = self.h, self.w
        self.f = w * rng.uniform(0.55, 0.8)
        self.cam_h = rng.uniform(1.2, 1.8)
        self.y_h0 = h * rng.uniform(0.36, 0.5)
        self.x_v0 = w * rng.uniform(0.4, 0.6)
        self.drift = (w * rng.uniform(0.02, 0.06), rng.uniform(120, 300), rng.uniform(0, 2 * np.pi))
        self.speed = rng.uniform(0.3, 0.8)  # metres per frame
        self.z_bottom = self.f * self.cam_h / (h - self.y_h0)
        self.z_clip = 0.5 * self.z_bottom

        # Road, lanes, sidewalks.
        self.x_left = -rng.uniform(2.0, 8.0)
        self.x_right = rng.uniform(2.0, 8.0)
        self.sw = (rng.uniform(1.5, 4.0), rng.uniform(1.5, 4.0))
        lane_w = rng.uniform(2.8, 3.6)
        self.lane_w = lane_w
        self.lanes = []
        x = self.x_left + lane_w
        while x < self.x_right - 1.2:
            self.lanes.append(x)
            x += lane_w
        self.dash_len = rng.uniform(1.5, 4.0)
        self.dash_period = self.dash_len + rng.uniform(3.0, 9.0)
        self.dash_phase = rng.uniform(0, self.dash_period)
        self.line_w = rng.uniform(0.1, 0.2)
        self.edge_lines = rng.random() < 0.6
        yellow = rng.random() < 0.25
        self.lane_col = _colour(rng, (225, 200, 60) if yellow else (225, 225, 220), 20)
        edge_yellow = rng.random() < 0.2
        self.edge_col = _colour(rng, (225, 200, 60) if edge_yellow else (225, 225, 220), 20)
        g = rng.uniform(60, 135)
        self.road_col = np.clip(g + rng.uniform(-8, 8, 3), 0, 255)
        s = rng.uniform(95, 190)
        self.walk_col = np.clip(s + rng.uniform(-12, 12, 3) + np.array([6, 3, 0]), 0, 255)
        self.walk_line = self.walk_col * rng.uniform(0.7, 0.9)
        self.tile = rng.uniform(0.8, 2.0)

        # Sky and lighting.
        overcast = rng.random() < 0.3
        if overcast:
            top = _colour(rng, (170, 175, 185), 25)
            self.sky_top, self.sky_hor = top, np.clip(top + rng.uniform(10, 40), 0, 255)
        else:
            self.sky_top = _colour(rng, (80, 130, 205), 30)
            self.sky_hor = _colour(rng, (190, 205, 225), 20)
        self.gain = rng.uniform(0.65, 1.25) * rng.uniform(0.9, 1.1, 3)
        self.light = rng.uniform(-30.0, 25.0, (4, 8)).astype(np.float32)  # additive shading
        self._light: np.ndarray | None = None
        self.sensor = rng.uniform(1.0, 5.0)
        self.noise_off = (rng.random(), rng.random())
        self.skyline = self._skyline(rng)

        # Objects beside the road (facades, tree rows, sidewalk trees) along the whole trip.
        z_end = _Z_SIDE + travel
        self.side: list[tuple] = []
        self.walk_trees: list[tuple] = []
        for sign in (-1, 1):
            edge = self.x_left if sign < 0 else self.x_right
            x_wall = edge + sign * self.sw[0 if sign < 0 else 1]
            z = rng.uniform(-8.0, 0.0)
            while z < z_end:
                if rng.random() < 0.65:
                    length = rng.uniform(6, 28)
                    self.side.append(self._building(rng, sign, x_wall, z, z + length))
                else:
                    length = rng.uniform(5, 16)
                    self.side.append(self._tree_row(rng, sign, x_wall, z, z + length))
                z += length
                if rng.random() < 0.25:  # an alley: ground (sidewalk) between the blocks
                    gap = rng.uniform(1.0, 5.0)
                    self.side.append(("alley", sign, x_wall, z, z + gap))
                    z += gap
            z = rng.uniform(0, 15)
            spacing = rng.uniform(8, 22)
            has_trees = rng.random() < 0.6
            while has_trees and z < z_end:
                x_t = edge + sign * self.sw[0 if sign < 0 else 1] * rng.uniform(0.45, 0.75)
                self.walk_trees.append(self._walk_tree(rng, x_t, z))
                z += spacing * rng.uniform(0.7, 1.3)

        # Cars: in lanes, moving at their own speed relative to the camera.
        centres = [self.x_left + lane_w / 2]
        centres += [x + lane_w / 2 for x in self.lanes]
        centres = [c for c in centres if c < self.x_right - 1.0] or [0.0]
        self.cars: list[dict] = []
        for _ in range(int(rng.integers(0, 6))):
            lane = int(rng.integers(len(centres)))
            lane_x = centres[lane] + rng.uniform(-0.3, 0.3)
            z0 = rng.uniform(self.z_bottom * 1.4, 55.0)
            if any(abs(c["x"] - lane_x) < 1.5 and abs(c["z"] - z0) < 8 for c in self.cars):
                continue
            width = rng.uniform(1.65, 2.0)
            self.cars.append(
                {
                    "lane": lane,
                    "x": lane_x,
                    "z": z0,
                    "v": rng.uniform(0.0, 0.12),  # metres per frame relative to the camera
                    "w": width,
                    "h": rng.uniform(1.35, 1.9) if rng.random() < 0.8 else rng.uniform(2.0, 2.6),
                    "l": rng.uniform(3.8, 5.0),
                    "col": rng.choice(
                        [
                            (200, 200, 205),
                            (30, 30, 35),
                            (150, 20, 25),
                            (40, 60, 140),
                            (120, 125, 130),
                            (230, 230, 225),
                            (60, 90, 60),
                            (190, 150, 40),
                        ]
                    )
                    + rng.uniform(-15, 15, 3),
                    "glass": _colour(rng, (40, 50, 60), 15),
                }
            )

        # Cars pull away from the camera (so none vanishes while filling the view) and, within a
        # lane, a nearer car is never faster than the one ahead: gaps never close, no overlaps.
        for lane in {c["lane"] for c in self.cars}:
            in_lane = sorted((c for c in self.cars if c["lane"] == lane), key=lambda c: c["z"])
            for car, v in zip(in_lane, sorted(c["v"] for c in in_lane)):
                car["v"] = v

    def _skyline(
        self, rng: np.random.Generator
    ) -> list[tuple[float, float, float, np.ndarray, int]]:
        """Far silhouettes around the horizon: (x0, x1, height px, colour, class)."""
        out = []
        x = -10.0
        while x < self.w + 10:
            width = rng.uniform(0.02, 0.08) * self.w
            cls = BUILDING if rng.random() < 0.6 else TREE
            height = rng.uniform(0.01, 0.05) * self.h
            col = _colour(rng, (120, 120, 125) if cls == BUILDING else (70, 95, 60), 20)
            out.append((x, x + width, height, col, cls))
            x += width
        return out

    def _building(self, rng, sign, x_wall, z0, z1) -> tuple:
        height = rng.uniform(4.0, 26.0)
        palette = [
            (200, 185, 160),
            (150, 70, 55),
            (130, 130, 135),
            (215, 210, 200),
            (90, 85, 80),
            (180, 160, 120),
            (110, 120, 140),
        ]
        col = np.clip(
            np.asarray(palette[int(rng.integers(len(palette)))], float) + rng.uniform(-20, 20, 3),
            0,
            255,
        )
        floor = rng.uniform(2.8, 3.6)
        bay = rng.uniform(2.0, 4.0)
        win = {
            "floor": floor,
            "bay": bay,
            "wf": rng.uniform(0.3, 0.7),
            "hf": rng.uniform(0.35, 0.65),
            "col": _colour(rng, (45, 55, 70), 25)
            if rng.random() < 0.8
            else _colour(rng, (150, 170, 190), 25),
            "on": rng.random() < 0.85,
        }
        return ("building", sign, x_wall, z0, z1, height, col, win)

    def _tree_row(self, rng, sign, x_wall, z0, z1) -> tuple:
        height = rng.uniform(3.0, 12.0)
        # Smooth canopy outline: two sinusoids plus a little jitter, sampled every metre.
        zs = np.linspace(z0, z1, max(3, int(z1 - z0) + 1))
        a, b = rng.uniform(0.3, 1.2, 2), rng.uniform(0, 2 * np.pi, 2)
        bumps = height + 1.2 * np.sin(a[0] * zs + b[0]) + 0.6 * np.sin(2.3 * a[1] * zs + b[1])
        bumps += rng.uniform(-0.25, 0.25, len(zs))
        col = (
            _colour(rng, (55, 95, 40), 25)
            if rng.random() < 0.85
            else _colour(rng, (140, 110, 40), 25)
        )
        return ("trees", sign, x_wall, z0, z1, np.maximum(bumps, 1.5), col)

    def _walk_tree(self, rng, x, z) -> tuple:
        trunk_h = rng.uniform(1.8, 3.5)
        radius = rng.uniform(1.0, 2.6)
        col = _colour(rng, (60, 100, 45), 25)
        return ("walk_tree", x, z, trunk_h, radius, col, _colour(rng, (90, 65, 45), 15))


class _Canvas(_Layout):
    """Projection of the world to the image, and the drawing of its static parts."""

    def _proj(self, x, y, z) -> np.ndarray:
        """World (x right, y up from the ground, z forward) to fixed-point pixel coordinates.

        Each of x, y, z is a scalar, a list (one polygon; plain Python is faster for a few
        points) or an ndarray (many points at once).
        """
        if not any(isinstance(a, np.ndarray) for a in (x, y, z)):
            n = max(len(a) if isinstance(a, (list, tuple)) else 1 for a in (x, y, z))
            xs, ys, zs = (a if isinstance(a, (list, tuple)) else [a] * n for a in (x, y, z))
            f, x_v, y_h, cam_h, z_min = self.f, self.x_v, self.y_h, self.cam_h, self.z_clip * 0.5
            out = []
            for xi, yi, zi in zip(xs, ys, zs):
                inv = f / max(zi, z_min) * _ONE
                # Clamping keeps int32 fixed-point coordinates from overflowing.
                out.append(
                    (
                        min(max((x_v * _ONE + xi * inv), -1e6), 1e6),
                        min(max((y_h * _ONE + (cam_h - yi) * inv), -1e6), 1e6),
                    )
                )
            return np.array(out, np.int32)
        inv = self.f / np.maximum(np.asarray(z, np.float64), self.z_clip * 0.5)
        u = self.x_v + np.asarray(x, np.float64) * inv
        v = self.y_h + (self.cam_h - np.asarray(y, np.float64)) * inv
        pts = np.empty(np.broadcast_shapes(u.shape, v.shape) + (2,), np.float64)
        pts[..., 0] = u
        pts[..., 1] = v
        pts *= _ONE
        np.clip(pts, -1e6, 1e6, out=pts)
        return pts.astype(np.int32)

    def _poly(self, img, mask, pts, col, cls: int | None) -> None:
        pts = pts.reshape(-1, 1, 2)
        cv2.fillPoly(img, [pts], np.asarray(col, np.float64).tolist(), cv2.LINE_8, _SHIFT)
        if cls is not None:
            cv2.fillPoly(mask, [pts], cls, cv2.LINE_8, _SHIFT)

    def _ground_quad(self, xa, xb, za, zb) -> np.ndarray:
        za, zb = max(za, self.z_clip), max(zb, self.z_clip)
        return self._proj([xa, xb, xb, xa], 0.0, [za, za, zb, zb])

    def _draw_tiles(self, img, cam_z) -> None:
        """Paving joints on the sidewalks (image only)."""
        col = self.walk_line.tolist()
        for sign in (-1, 1):
            edge = self.x_left if sign < 0 else self.x_right
            outer = edge + sign * self.sw[0 if sign < 0 else 1]
            k0 = int(np.ceil((cam_z + self.z_clip) / self.tile))
            zs = np.arange(k0, k0 + int(30 / self.tile)) * self.tile - cam_z
            a = self._proj(edge, 0.0, zs)
            b = self._proj(outer, 0.0, zs)
            lines = np.stack([a, b], axis=1)
            cv2.polylines(img, list(lines), False, col, 1, cv2.LINE_8, _SHIFT)

    def _draw_markings(self, img, mask, cam_z) -> None:
        half = self.line_w / 2
        polys = []
        k0 = int(np.floor((cam_z - self.dash_phase) / self.dash_period))
        n = int((60.0 + self.z_clip) / self.dash_period) + 2
        starts = self.dash_phase + (k0 + np.arange(n)) * self.dash_period - cam_z
        starts = starts[starts + self.dash_len > self.z_clip]
        for x in self.lanes:
            for z0 in starts:
                polys.append(
                    self._ground_quad(x - half, x + half, z0, z0 + self.dash_len).reshape(-1, 1, 2)
                )
        if polys:
            cv2.fillPoly(img, polys, self.lane_col.tolist(), cv2.LINE_8, _SHIFT)
            cv2.fillPoly(mask, polys, LANE, cv2.LINE_8, _SHIFT)
        if self.edge_lines:
            for x in (self.x_left + 0.3, self.x_right - 0.3):
                quad = self._ground_quad(x - half, x + half, 0, _Z_FAR)
                self._poly(img, mask, quad, self.edge_col, LANE)

    def _draw_side(self, img, mask, obj, cam_z) -> None:
        kind, sign, x_wall = obj[0], obj[1], obj[2]
        z0, z1 = obj[3] - cam_z, obj[4] - cam_z
        z0c = max(z0, self.z_clip)
        far_x = x_wall + sign * 60.0
        if kind == "alley":
            self._poly(
                img, mask, self._ground_quad(x_wall, far_x, z0c, z1), self.walk_col * 0.85, SIDEWALK
            )
            return
        if kind == "building":
            height, col, win = obj[5], obj[6], obj[7]
            if z0 > self.z_clip:  # the face towards the camera, darker than the street-side face
                front = self._proj([x_wall, far_x, far_x, x_wall], [0, 0, height, height], z0)
                self._poly(img, mask, front, col * 0.75, BUILDING)
            side = self._proj(x_wall, [0, 0, height, height], [z0c, z1, z1, z0c])
            self._poly(img, mask, side, col, BUILDING)
            self._draw_windows(img, x_wall, obj[3], obj[4], height, win, cam_z)
            return
        bumps, col = obj[5], obj[6]  # tree row: foliage wall with a bumpy top
        zs = np.linspace(z0, z1, len(bumps))
        keep = zs >= self.z_clip
        zs, tops = np.concatenate([[z0c], zs[keep]]), np.concatenate([[bumps[0]], bumps[keep]])
        if z0 > self.z_clip:
            front = self._proj([x_wall, far_x, far_x, x_wall], [0, 0, tops[0], tops[0]], z0)
            self._poly(img, mask, front, col * 0.8, TREE)
        top = self._proj(x_wall, tops[::-1], zs[::-1])
        base = self._proj(x_wall, 0.0, [zs[0], zs[-1]])
        self._poly(img, mask, np.concatenate([base, top]), col, TREE)

    def _draw_windows(self, img, x_wall, z0, z1, height, win, cam_z) -> None:
        """Window grid on a facade (image only; windows are part of the building class).

        ``z0``/``z1`` are world coordinates so the windows stay put on the wall as the camera moves.
        """
        bay = win["bay"]
        if not win["on"]:
            return
        za = np.arange(np.ceil(z0 / bay), np.floor(z1 / bay)) * bay + (
            bay * (1 - win["wf"]) / 2 - cam_z
        )
        # Skip windows behind the near clip and those narrower than ~4 px.
        za = za[(za > self.z_clip) & (za < self.f * bay / 4)]
        floors = np.arange(1.0, height - win["floor"] * 0.5, win["floor"])
        if not len(za) or not len(floors):
            return
        zb = za + bay * win["wf"]
        inv = (self.f * _ONE) / np.stack([za, zb, zb, za], -1)  # (bays, 4)
        ya = floors
        yb = ya + win["floor"] * win["hf"]
        yq = self.cam_h - np.stack([ya, ya, yb, yb], -1)  # (floors, 4)
        pts = np.empty((len(za), len(floors), 4, 2), np.int32)
        pts[..., 0] = (self.x_v * _ONE + x_wall * inv)[:, None, :]
        pts[..., 1] = self.y_h * _ONE + yq[None] * inv[:, None, :]
        cv2.fillPoly(img, list(pts.reshape(-1, 4, 1, 2)), win["col"].tolist(), cv2.LINE_8, _SHIFT)


class _Scene(_Canvas):
    """All random parameters of one street; ``render(t)`` draws it at frame ``t``."""

    def render(self, t: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Draw frame ``t`` (camera has moved ``t * speed`` metres); returns (RGB image, mask)."""
        h, w = self.h, self.w
        period = self.drift[1]
        self.x_v = float(self.x_v0 + self.drift[0] * np.sin(2 * np.pi * t / period + self.drift[2]))
        self.y_h = float(self.y_h0 + 0.01 * h * np.sin(2 * np.pi * t / (0.7 * period)))
        cam_z = t * self.speed
        img = np.empty((h, w, 3), np.uint8)
        mask = np.empty((h, w), np.uint8)

        # Sky gradient above the horizon; distant buildings below it (covered by nearer stuff).
        yh = int(np.clip(np.ceil(self.y_h), 0, h))
        if yh:
            rows = np.linspace(0.0, 1.0, yh)[:, None]
            column = (self.sky_top * (1 - rows) + self.sky_hor * rows).astype(np.uint8)[:, None, :]
            # cv2 rather than numpy broadcasting: several times faster for 3-channel fills.
            img[:yh] = cv2.resize(column, (w, yh), interpolation=cv2.INTER_NEAREST)
        mask[:yh] = SKY
        if yh < h:
            cv2.rectangle(img, (0, yh), (w - 1, h - 1), (105, 105, 110), -1)
        mask[yh:] = BUILDING
        for x0, x1, height, col, cls in self.skyline:
            x0s, x1s = x0 + (self.x_v - self.x_v0), x1 + (self.x_v - self.x_v0)
            y0 = self.y_h - height
            pts = (
                np.array([[x0s, y0], [x1s, y0], [x1s, self.y_h + 1], [x0s, self.y_h + 1]]) * _ONE
            ).astype(np.int32)
            self._poly(img, mask, pts, col, cls)

        # Ground: sidewalks, road, markings.
        xl, xr = self.x_left, self.x_right
        self._poly(
            img,
            mask,
            self._ground_quad(xl - self.sw[0], xr + self.sw[1], 0, _Z_FAR),
            self.walk_col,
            SIDEWALK,
        )
        self._draw_tiles(img, cam_z)
        self._poly(img, mask, self._ground_quad(xl, xr, 0, _Z_FAR), self.road_col, ROAD)
        self._draw_markings(img, mask, cam_z)

        # Facades and tree rows beyond the sidewalks, far to near (painter's algorithm).
        visible = [o for o in self.side if o[4] - cam_z > self.z_clip and o[3] - cam_z < _Z_SIDE]
        for obj in sorted(visible, key=lambda o: -o[3]):
            self._draw_side(img, mask, obj, cam_z)

        # Sidewalk trees and cars are nearer the road than the facades: draw them last, far first.
        items: list[tuple[float, str, object]] = []
        for tree in self.walk_trees:
            z = tree[2] - cam_z
            if self.z_clip < z < _Z_SIDE:
                items.append((z, "tree", tree))
        for car in self.cars:
            z = car["z"] + car["v"] * t
            if z > self.z_clip and z < 90:
                items.append((z, "car", car))
        for z, kind, obj in sorted(items, key=lambda it: -it[0]):
            if kind == "tree":
                self._draw_walk_tree(img, mask, obj, z)
            else:
                self._draw_car(img, mask, obj, z)

        return self._finish(img, mask, t), mask

    def _draw_walk_tree(self, img, mask, tree, z) -> None:
        _, x, _, trunk_h, radius, col, bark = tree
        half = 0.15
        trunk = self._proj([x - half, x + half, x + half, x - half], [0, 0, trunk_h, trunk_h], z)
        self._poly(img, mask, trunk, bark, TREE)
        centre = self._proj(x, trunk_h + radius * 0.6, z)[0]
        rx = max(int(self.f * radius / z * _ONE), _ONE)
        ry = max(int(rx * 0.85), _ONE)
        c = (int(centre[0]), int(centre[1]))
        cv2.ellipse(img, c, (rx, ry), 0, 0, 360, col.tolist(), -1, cv2.LINE_8, _SHIFT)
        cv2.ellipse(mask, c, (rx, ry), 0, 0, 360, TREE, -1, cv2.LINE_8, _SHIFT)
        # Lit side of the canopy (image only): a smaller, lighter blob.
        c2 = (c[0] - rx // 4, c[1] - ry // 4)
        cv2.ellipse(
            img,
            c2,
            (rx // 2, ry // 2),
            0,
            0,
            360,
            np.clip(col * 1.25, 0, 255).tolist(),
            -1,
            cv2.LINE_8,
            _SHIFT,
        )

    def _draw_car(self, img, mask, car, z) -> None:
        x, w, h, length, col = car["x"], car["w"], car["h"], car["l"], car["col"]
        body_top = 0.3 + 0.45 * (h - 0.3)
        dark = (25, 25, 28)
        # Side face (visible when the car is off the camera axis).
        if abs(x) > w / 2 + 0.2:
            xs = x - np.sign(x) * w / 2
            zb = z + length
            body = self._proj(xs, [0.25, 0.25, body_top, body_top], [z, zb, zb, z])
            self._poly(img, mask, body, col * 0.8, CAR)
            cabin = self._proj(
                xs,
                [body_top, body_top, h, h],
                [z + 0.2 * length, zb - 0.1 * length, zb - 0.3 * length, z + 0.35 * length],
            )
            self._poly(img, mask, cabin, car["glass"] * 0.9, CAR)
            for zw in (z + 0.18 * length, zb - 0.18 * length):
                wheel = self._proj(
                    xs, [0, 0, 0.6, 0.6], [zw - 0.33, zw + 0.33, zw + 0.33, zw - 0.33]
                )
                self._poly(img, mask, wheel, dark, CAR)
        # Rear face.
        hw, cw = w / 2, 0.42 * w
        self._poly(
            img,
            mask,
            self._proj([x - hw, x + hw, x + hw, x - hw], [0.22, 0.22, body_top, body_top], z),
            col,
            CAR,
        )
        self._poly(
            img,
            mask,
            self._proj([x - hw, x + hw, x + hw, x - hw], [0.22, 0.22, 0.32, 0.32], z),
            dark,
            CAR,
        )
        self._poly(
            img,
            mask,
            self._proj([x - cw, x + cw, x + 0.9 * cw, x - 0.9 * cw], [body_top, body_top, h, h], z),
            col * 0.9,
            CAR,
        )
        self._poly(
            img,
            None,
            self._proj(
                [x - 0.85 * cw, x + 0.85 * cw, x + 0.78 * cw, x - 0.78 * cw],
                [body_top + 0.05, body_top + 0.05, h - 0.08, h - 0.08],
                z,
            ),
            car["glass"],
            None,
        )
        for sx in (-1, 1):
            xw = x + sx * (hw - 0.3)
            wheel = self._proj([xw - 0.14, xw + 0.14, xw + 0.14, xw - 0.14], [0, 0, 0.3, 0.3], z)
            self._poly(img, mask, wheel, dark, CAR)
            xl = x + sx * (hw - 0.2)
            lamp = self._proj(
                [xl - 0.14, xl + 0.14, xl + 0.14, xl - 0.14],
                [body_top - 0.25, body_top - 0.25, body_top - 0.08, body_top - 0.08],
                z,
            )
            self._poly(img, None, lamp, (190, 25, 20), None)

    def _finish(self, img: np.ndarray, mask: np.ndarray, t: float) -> np.ndarray:
        """Textures, low-frequency lighting, sensor noise and colour gain."""
        h, w = self.h, self.w
        fine, blob = _noise_tiles(h, w)
        oy = int(self.noise_off[0] * (fine.shape[0] - h))
        ox = int(self.noise_off[1] * (fine.shape[1] - w))
        # All additive terms are mono and summed at HxW; only the last add touches 3 channels.
        # cv2 throughout: numpy broadcasting over a trailing axis of 3 is many times slower.
        tex = cv2.LUT(mask, _AMP_FINE_LUT)
        tex *= fine[oy : oy + h, ox : ox + w]
        blotch = cv2.LUT(mask, _AMP_BLOB_LUT)
        blotch *= blob[oy : oy + h, ox : ox + w]
        tex += blotch
        # Sensor noise changes every frame of a clip (a different window into the tile).
        sy = (oy + 37 * int(t) + 1) % (fine.shape[0] - h)
        sx = (ox + 91 * int(t) + 1) % (fine.shape[1] - w)
        cv2.scaleAdd(fine[sy : sy + h, sx : sx + w], float(self.sensor), tex, dst=tex)
        if self._light is None:
            self._light = cv2.resize(self.light, (w, h), interpolation=cv2.INTER_LINEAR)
        tex += self._light
        out = cv2.add(img, cv2.cvtColor(tex, cv2.COLOR_GRAY2RGB), dtype=cv2.CV_8U)  # saturates
        gain = self.gain * (1.0 + 0.05 * np.sin(t / 40.0))
        return cv2.multiply(out, (*gain.tolist(), 0.0))


def render_scene(seed: int, size_hw: tuple[int, int] = (256, 512)) -> tuple[np.ndarray, np.ndarray]:
    """Render one random street scene: (RGB uint8 HxWx3 image, uint8 HxW mask of class indices).

    The same ``seed`` always gives identical arrays; mask values are in
    ``0..len(SYNTHETIC_CLASSES)-1``.
    """
    return _Scene(int(seed), size_hw).render(0.0)


def render_clip(
    num_frames: int, size_hw: tuple[int, int] = (256, 512), seed: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``num_frames`` consecutive (RGB image, mask) frames of one street, driving forward.

    Lane markings and facades scroll past, cars move at their own speed, the view sways gently.
    """
    scene = _Scene(int(seed), size_hw, travel=num_frames * 0.8 + 10)
    for t in range(int(num_frames)):
        yield scene.render(float(t))


def write_clip(
    path: str | os.PathLike,
    num_frames: int,
    size_hw: tuple[int, int] = (256, 512),
    fps: float = 25,
    seed: int = 0,
) -> Path:
    """Write a synthetic clip as an mp4 (``mp4v``); the file appears only once it is complete."""
    path = Path(path)
    if num_frames < 1:
        raise EdgesegError(f"cannot write {path}: num_frames must be at least 1, got {num_frames}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=path.suffix or ".mp4", dir=path.parent
    )
    os.close(fd)
    h, w = int(size_hw[0]), int(size_hw[1])
    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    try:
        if not writer.isOpened():
            raise EdgesegError(
                f"cannot write video {path}: OpenCV has no mp4v encoder for it; use a .mp4 path"
            )
        for img, _ in render_clip(num_frames, (h, w), seed):
            writer.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        writer.release()
        os.replace(tmp, path)
    except BaseException:
        writer.release()
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
