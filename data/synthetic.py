"""Built-in synthetic dashcam frames with exact labels: the default data set, so nothing is downloaded.

A `Scene` (camera, road, facades, props, moving agents, look) is sampled first and rasterised second,
so the clip renderer (data/synthetic_clip.py) can move the ego car and the agents and rasterise again.

Geometry, one convention everywhere. A pinhole camera looks along a straight, flat road with its optical
axis parallel to the road, `mount` metres above it. World coordinates: x right, y_up above the road,
z forward (metres); the camera sits at x = 0, z = scene.ego_z. A pixel (row r, col c) covers
[c, c+1) x [r, r+1) and its centre is (c + 0.5, r + 0.5). A point projects to
    u = cx + f * x / Z,     v = cy + f * (mount - y_up) / Z,      Z = z - ego_z,
so the horizon is the row v = cy and a road pixel at row v has z-depth Z = f * mount / (v - cy)
(KITTI's convention: depth is Z along the optical axis, not the range). Horizon jitter is a jitter of the
principal point (cx, cy) rather than a pitched camera, which keeps that formula exact; for the few
degrees involved the pictures are the same.

Every surface is either a constant-Z face (object fronts, tree and pole billboards, building end walls) or
a vertical plane x = const parallel to the road (facades, vehicle sides: Z = f * x / (u - cx) per
column), so per-pixel depth is exact. Surfaces are composited with a z-buffer, far to near, which gives
exact occlusion; labels come from the same masks, so segmentation, depth and boxes agree with the image
to the pixel (the image alone is then blurred, noised and re-lit).
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from typing import Iterator

import cv2
import numpy as np

from data import schema

# Scenes are rendered in the default classes; a config with other classes maps them through the synthetic
# label tables (data/label_maps.py) when the data set is built.
_SEG = {name: i for i, name in enumerate(schema.SEGMENTATION_CLASSES)}
ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, POLE = (
    _SEG[n] for n in ("road", "sidewalk", "building", "vegetation", "sky", "pole"))
_DET = {name: i for i, name in enumerate(schema.DETECTION_CLASSES)}
AGENT_CLASS = {"car": "vehicle", "van": "vehicle", "truck": "vehicle",
               "pedestrian": "pedestrian", "cyclist": "cyclist"}

MAX_DEPTH = 120.0  # farther pixels get depth 0 ("no measurement"), like a LiDAR's range
NEAR = 1.0  # nothing nearer than this is drawn (it would project far outside the frame)
SKYLINE_Z = 300.0  # distant hills/blocks just above the horizon: labelled, depth 0 (beyond MAX_DEPTH)
STATIC_AHEAD = 150.0  # facades and props are generated this far ahead of the camera
MIN_VISIBLE_PIXELS = 12  # an object with fewer visible pixels gets no box (its pixels stay labelled)
MIN_VISIBLE_FRACTION = 0.25  # ... nor one hidden by more than 75 % (it goes to ignore_boxes instead)
SPLITS = {"train": 0, "validation": 1, "test": 2}  # disjoint seed streams
_SHIFT = 4  # cv2 sub-pixel bits: polygons are placed to 1/16 px


# ----------------------------------------------------------------------------------------- scene model
@dataclass
class Camera:
    height: int
    width: int
    focal: float  # pixels
    cx: float
    cy: float  # the horizon row
    mount: float  # metres above the road

    def project(self, x, y_up, z):
        """Camera-relative point(s) (x, y_up, Z) -> continuous pixel coordinates (u, v)."""
        z = np.asarray(z, np.float64)
        u = self.cx + self.focal * np.asarray(x) / z
        return u, self.cy + self.focal * (self.mount - np.asarray(y_up)) / z

    def ground_depth(self) -> np.ndarray:
        """z-depth of the road plane at each row's pixel centre; inf at and above the horizon."""
        dv = np.arange(self.height) + 0.5 - self.cy
        return np.where(dv > 0, self.focal * self.mount / np.where(dv > 0, dv, 1.0), np.inf)


@dataclass
class Road:
    left: float  # x of the road's left and right edges (the camera is at x = 0)
    right: float
    lanes: list  # [(centre x, direction)]: +1 drives with the ego car, -1 oncoming
    lane_width: float
    sidewalk: tuple  # widths (left, right)
    verge: tuple  # class of the ground beyond each sidewalk: VEGETATION (grass) or SIDEWALK (paved)
    markings: list  # [(x, half width, dashed, rgb)] painted lines (class road)
    dash: tuple  # (dash length, period, phase) in metres along the road (world z)
    colours: tuple  # rgb of the five ground bands, left to right: verge, sidewalk, road, sidewalk, verge
    curb: tuple  # rgb of the curb stones at both road edges
    parking: float | None = None  # x of the centre of a parking strip along the right kerb, if any


@dataclass
class Facade:
    """A vertical plane x = const between world z0 and z1: a building front, a hedge or a tree line."""
    kind: str  # "building" | "hedge" | "treeline"
    x: float
    z0: float
    z1: float
    height: float
    colour: tuple
    windows: tuple | None = None  # (ground floor, floor height, spacing, window w, window h)
    seed: int = 0  # fixes window colours and the tree line's outline across clip frames


@dataclass
class Prop:
    """Street furniture and trees: flat faces at their own z."""
    kind: str  # "tree" | "light" | "sign" | "traffic" | "pole"
    x: float
    z: float
    height: float
    size: float  # crown radius, sign size, ... (metres)
    colour: tuple
    colour2: tuple = (0, 0, 0)
    shape: np.ndarray | None = None  # tree crowns: (k, 3) circle offsets and radii in metres
    side: int = 1  # which side of the road (the light's arm reaches over the road)


@dataclass
class Agent:
    """A detectable object; (x, z) is the centre of the face nearest the camera, in world metres."""
    uid: int
    kind: str  # "car" | "van" | "truck" | "pedestrian" | "cyclist"
    x: float
    z: float
    width: float
    height: float
    length: float
    facing: str  # "back" (seen from behind), "front", "left" or "right" (side view, heading that way)
    vx: float = 0.0
    vz: float = 0.0
    colours: tuple = ()
    variant: int = 0

    @property
    def detection_class(self) -> int:
        return _DET[AGENT_CLASS[self.kind]]

    def footprint(self) -> tuple:
        """Ground rectangle (x0, x1, z0, z1) used to keep agents from overlapping."""
        if self.kind in ("car", "van", "truck"):
            return self.x - self.width / 2, self.x + self.width / 2, self.z, self.z + self.length
        if self.kind == "cyclist" and self.facing in ("left", "right"):
            return self.x - 0.9, self.x + 0.9, self.z - 0.2, self.z + 0.2
        if self.kind == "cyclist":
            return self.x - 0.35, self.x + 0.35, self.z, self.z + 1.8
        return self.x - 0.3, self.x + 0.3, self.z - 0.3, self.z + 0.3


@dataclass
class Look:
    """Appearance only (never labels): sky, light, shadows, haze, lens and sensor."""
    sky_top: tuple
    sky_horizon: tuple
    clouds: np.ndarray  # (k, 5): centre u, centre v (fractions of width / horizon row), axes, alpha
    skyline: np.ndarray  # heights (m) at SKYLINE_Z across the view
    skyline_class: int
    skyline_colour: tuple
    gain: np.ndarray  # per-channel gain: brightness x colour temperature
    haze: float  # visibility in metres
    sun: tuple  # shadow offset (dx, dz) per metre of object height
    shadow: float  # shadow darkness 0..1
    blur: tuple  # ("none" | "defocus" | "motion", amount in px, angle in degrees)
    noise: float  # sensor noise sigma (grey levels)
    jpeg: int  # 0 or a JPEG quality to re-encode with
    vignette: float


@dataclass
class Side:
    """Generation state of one side of the street, so a clip can keep extending it ahead of the car."""
    sign: int  # -1 left, +1 right
    style: str  # "urban" | "rural"
    edge: float  # road edge x
    outer: float  # outer edge of the sidewalk
    facade_x: float  # buildings' (or tree line's) base lateral position
    trees: bool
    palette: int
    facade_cursor: float
    tree_cursor: float
    pole_cursor: float


@dataclass
class Scene:
    camera: Camera
    road: Road
    look: Look
    sides: dict = field(default_factory=dict)
    facades: list = field(default_factory=list)
    props: list = field(default_factory=list)
    agents: list = field(default_factory=list)
    ego_z: float = 0.0
    next_uid: int = 1


# ------------------------------------------------------------------------------------------ palettes
_CAR_COLOURS = np.array([(235, 235, 232), (190, 192, 196), (120, 122, 128), (35, 35, 38), (28, 48, 110),
                         (150, 22, 28), (200, 190, 160), (40, 80, 52), (20, 80, 140), (230, 200, 40),
                         (90, 60, 40), (210, 90, 30)], np.float64)
_CAR_P = (14, 12, 10, 12, 6, 6, 4, 3, 5, 2, 2, 2)
_BUILDING_COLOURS = np.array([(196, 180, 150), (165, 88, 66), (215, 210, 198), (140, 140, 145),
                              (120, 100, 85), (185, 170, 120), (105, 112, 128), (175, 150, 140),
                              (90, 90, 95), (225, 215, 180)], np.float64)
_CLOTHES = np.array([(30, 30, 35), (60, 60, 70), (25, 40, 90), (130, 20, 30), (200, 200, 200),
                     (90, 110, 60), (160, 120, 80), (200, 150, 40), (70, 40, 90), (40, 90, 140),
                     (230, 100, 120), (120, 120, 120)], np.float64)
_SKIN = np.array([(235, 200, 170), (200, 150, 110), (150, 100, 70), (95, 65, 45)], np.float64)
_HAIR = np.array([(30, 25, 20), (80, 55, 30), (170, 140, 80), (120, 120, 120)], np.float64)
_GLASS = (38, 46, 58)
_TYRE = (28, 28, 30)


def _rgb(colour, scale=1.0) -> tuple:
    return tuple(min(255, max(0, int(c * scale))) for c in colour)  # plain Python: called per primitive


def _pick(rng, probabilities) -> int:
    """rng.choice(len(p), p=p) without its per-call overhead (called for every object)."""
    r = rng.random() * sum(probabilities)
    for i, p in enumerate(probabilities):
        r -= p
        if r < 0:
            return i
    return len(probabilities) - 1


def _jitter(rng, colour, amount=12.0) -> tuple:
    r = rng.random(3)
    return tuple(min(255, max(0, int(c + amount * (2 * e - 1)))) for c, e in zip(colour, r))


@functools.lru_cache(maxsize=1)
def _tile() -> np.ndarray:
    """A periodic 256x256 noise texture (two octaves, values about -1..1), the same in every process."""
    rng = np.random.default_rng(20240607)
    freq = np.fft.fftfreq(256)
    radius = np.sqrt(freq[:, None] ** 2 + freq[None, :] ** 2)
    tile = np.zeros((256, 256))
    for scale, weight in ((0.06, 1.0), (0.25, 0.5)):
        spectrum = np.fft.fft2(rng.standard_normal((256, 256))) * np.exp(-(radius / scale) ** 2)
        layer = np.real(np.fft.ifft2(spectrum))
        tile += weight * layer / layer.std()
    return (tile / np.abs(tile).max()).astype(np.float32)


# ----------------------------------------------------------------------------------------- sampling
# Focal length as a fraction of the frame width (a 78-90 degree horizontal field of view; KITTI's is
# 0.58, 81 degrees). pipeline/deploy/camera.py records it as the camera a trained model's depth assumes.
FOCAL_RANGE = (0.50, 0.62)


def focal_lengths(height: int, width: int) -> tuple[float, float]:
    """(fx, fy) in pixels of a rendered frame, the mean of the drawn focal (square pixels)."""
    focal = width * sum(FOCAL_RANGE) / 2
    return focal, focal


def _sample_camera(rng, height: int, width: int) -> Camera:
    return Camera(height, width, focal=width * rng.uniform(*FOCAL_RANGE),
                  cx=width * (0.5 + rng.uniform(-0.02, 0.02)), cy=height * rng.uniform(0.40, 0.45),
                  mount=rng.uniform(1.40, 1.65))


# (oncoming lanes, same-direction lanes) and how often each street layout appears
_LAYOUTS = ((1, 1), (2, 2), (1, 2), (0, 2), (0, 3), (0, 1))
_LAYOUT_P = (0.34, 0.2, 0.14, 0.14, 0.08, 0.10)


def _sample_road(rng) -> Road:
    n_on, n_same = _LAYOUTS[_pick(rng, _LAYOUT_P)]
    lane_width = rng.uniform(3.0, 3.7)
    ego = int(rng.integers(n_same))
    left = -(n_on + ego + 0.5) * lane_width + rng.uniform(-0.35, 0.35)
    n = n_on + n_same
    lanes_right = left + n * lane_width
    parking = rng.uniform() < 0.35  # a strip for parked cars beyond the last lane
    right = lanes_right + (rng.uniform(2.1, 2.5) if parking else 0.0)
    lanes = [(left + (i + 0.5) * lane_width, -1 if i < n_on else 1) for i in range(n)]
    white = _rgb(rng.uniform(200, 240) * np.array([1.0, 1.0, 0.97]))
    yellow = _rgb((225, 180, 40))
    half = rng.uniform(0.06, 0.09)
    markings = []
    if rng.uniform() < 0.85:
        inset = rng.uniform(0.2, 0.4)
        right_line = lanes_right - (0 if parking else inset)  # with parking it separates the strip
        markings += [(left + inset, half, False, white), (right_line, half, False, white)]
    for i in range(1, n):
        x = left + i * lane_width
        if i == n_on:  # between the two directions
            colour = yellow if rng.uniform() < 0.3 else white
            style = _pick(rng, (0.55, 0.25, 0.2))
            if style == 2:
                markings += [(x - 0.15, half, False, colour), (x + 0.15, half, False, colour)]
            else:
                markings.append((x, half, style == 0, colour))
        else:
            markings.append((x, half, True, white))
    length = rng.uniform(2.5, 4.5)
    period = length * rng.uniform(2.2, 4.0)
    asphalt = rng.uniform(62, 118)
    road_rgb = _rgb(asphalt * np.array([1.0, 1.0, rng.uniform(1.0, 1.08)]))
    paving = [(165, 165, 160), (185, 150, 140), (190, 180, 160), (140, 140, 145)][rng.integers(4)]
    side_rgb = _jitter(rng, paving, 15)
    verge = tuple(VEGETATION if rng.uniform() < 0.45 else SIDEWALK for _ in range(2))
    grass = lambda: _jitter(rng, (78, 118, 48), 14)  # noqa: E731
    plaza = lambda: _jitter(rng, paving, 20)  # noqa: E731
    verge_rgb = [grass() if v == VEGETATION else plaza() for v in verge]
    return Road(left=left, right=right, lanes=lanes, lane_width=lane_width,
                sidewalk=(rng.uniform(1.5, 4.0), rng.uniform(1.5, 4.0)), verge=verge, markings=markings,
                dash=(length, period, rng.uniform(0, period)),
                colours=(verge_rgb[0], side_rgb, road_rgb, side_rgb, verge_rgb[1]),
                curb=_rgb(np.asarray(side_rgb) * 1.12 + 10),
                parking=(lanes_right + right) / 2 if parking else None)


def _sample_look(rng, camera: Camera) -> Look:
    weather = _pick(rng, (0.6, 0.28, 0.12))  # clear, overcast, dusk
    if weather == 0:
        top, horizon = _jitter(rng, (70, 125, 205), 15), _jitter(rng, (180, 205, 228), 10)
        n_clouds, shadow, brightness = rng.integers(0, 7), rng.uniform(0.3, 0.6), rng.uniform(0.85, 1.2)
    elif weather == 1:
        top, horizon = _jitter(rng, (150, 155, 165), 12), _jitter(rng, (200, 202, 208), 8)
        n_clouds, shadow, brightness = rng.integers(3, 9), rng.uniform(0.1, 0.25), rng.uniform(0.7, 1.0)
    else:
        top, horizon = _jitter(rng, (65, 80, 140), 12), _jitter(rng, (238, 168, 120), 12)
        n_clouds, shadow, brightness = rng.integers(0, 5), rng.uniform(0.2, 0.45), rng.uniform(0.6, 0.9)
    clouds = np.column_stack([rng.uniform(-0.1, 1.1, n_clouds), rng.uniform(0.05, 0.8, n_clouds),
                              rng.uniform(0.06, 0.25, n_clouds), rng.uniform(0.04, 0.12, n_clouds),
                              rng.uniform(0.4, 0.9, n_clouds)])
    temperature = rng.uniform(-1, 1) + (0.8 if weather == 2 else 0.0)
    gain = brightness * np.array([1 + 0.07 * temperature, 1.0, 1 - 0.07 * temperature])
    skyline_class = VEGETATION if rng.uniform() < 0.6 else BUILDING
    n = 24
    heights = np.abs(rng.normal(0, 1, n)).cumsum()
    heights = 4 + 18 * rng.uniform(0.2, 1.0) * (heights - heights.min()) / (np.ptp(heights) + 1e-6)
    if rng.uniform() < 0.3:
        heights = heights * 0.0  # an open horizon
    blur_kind = ("none", "defocus", "motion")[_pick(rng, (0.4, 0.3, 0.3))]
    sun = rng.uniform(0, 2 * np.pi)
    blur_amount = rng.uniform(0.5, 1.3) if blur_kind == "defocus" else rng.uniform(2, 5)
    return Look(sky_top=top, sky_horizon=horizon, clouds=clouds,
                skyline=heights, skyline_class=skyline_class,
                skyline_colour=_rgb(np.asarray(horizon) * 0.55 + np.array((60, 70, 60)) * 0.45),
                gain=gain.astype(np.float32), haze=rng.uniform(150, 700),
                sun=(np.cos(sun) * 0.6, abs(np.sin(sun)) * 0.6 + 0.2),
                shadow=shadow, blur=(blur_kind, blur_amount, rng.uniform(-20, 20)),
                noise=rng.uniform(1.0, 6.0), jpeg=int(rng.integers(35, 90)) if rng.uniform() < 0.3 else 0,
                vignette=rng.uniform(0.0, 0.3))


def _sample_sides(rng, scene: Scene) -> None:
    road = scene.road
    for sign, width in ((-1, road.sidewalk[0]), (1, road.sidewalk[1])):
        edge = road.left if sign < 0 else road.right
        outer = edge + sign * width
        urban = rng.uniform() < 0.7
        start = scene.ego_z - 5.0
        scene.sides[sign] = Side(sign=sign, style="urban" if urban else "rural", edge=edge, outer=outer,
                                 facade_x=outer + sign * (rng.uniform(0, 4) if urban else rng.uniform(4, 25)),
                                 trees=rng.uniform() < (0.5 if urban else 0.85),
                                 palette=int(rng.integers(len(_BUILDING_COLOURS))),
                                 facade_cursor=start - rng.uniform(0, 20),
                                 tree_cursor=start - rng.uniform(0, 12),
                                 pole_cursor=start - rng.uniform(0, 30))


def _next_facade(rng, scene: Scene, side: Side) -> None:
    z = side.facade_cursor
    if side.style == "urban":
        if rng.uniform() < 0.22:  # a gap between buildings: sky and trees show through
            side.facade_cursor += rng.uniform(4, 16)
            return
        length = rng.uniform(8, 35)
        colour = _BUILDING_COLOURS[side.palette] if rng.uniform() < 0.3 else \
            _BUILDING_COLOURS[rng.integers(len(_BUILDING_COLOURS))]
        windows = (rng.uniform(3.2, 4.5), rng.uniform(2.8, 3.6), rng.uniform(2.2, 3.6),
                   rng.uniform(0.9, 1.5), rng.uniform(1.2, 1.8)) if rng.uniform() < 0.9 else None
        x = side.facade_x + side.sign * rng.uniform(0, 1.5)
        scene.facades.append(Facade("building", x, z, z + length,
                                    rng.uniform(5, 26), _jitter(rng, colour, 14), windows,
                                    int(rng.integers(1 << 30))))
        side.facade_cursor += length
        return
    length = rng.uniform(20, 80)
    scene.facades.append(Facade("treeline", side.facade_x + side.sign * rng.uniform(0, 6), z, z + length,
                                rng.uniform(5, 14), _jitter(rng, (52, 84, 40), 12), None,
                                int(rng.integers(1 << 30))))
    if rng.uniform() < 0.5:
        hedge_x = side.outer + side.sign * rng.uniform(0.3, 1.5)
        scene.facades.append(Facade("hedge", hedge_x, z + rng.uniform(0, 5), z + length - rng.uniform(0, 10),
                                    rng.uniform(0.7, 1.6), _jitter(rng, (60, 100, 45), 12), None,
                                    int(rng.integers(1 << 30))))
    side.facade_cursor += length


def _crown_shape(rng, radius: float) -> np.ndarray:
    k = int(rng.integers(3, 7))
    angles = rng.uniform(0, 2 * np.pi, k)
    dist = rng.uniform(0, 0.55, k) * radius
    return np.column_stack([np.cos(angles) * dist, np.sin(angles) * dist * 0.8,
                            rng.uniform(0.45, 0.75, k) * radius])


def _next_tree(rng, scene: Scene, side: Side) -> None:
    side.tree_cursor += rng.uniform(6, 18) if side.style == "urban" else rng.uniform(4, 14)
    if not side.trees:
        return
    width = abs(side.outer - side.edge)
    if width > 2.2 and rng.uniform() < 0.6:
        x = side.edge + side.sign * rng.uniform(0.7, 1.1)  # street tree in the sidewalk
    else:
        x = side.outer + side.sign * rng.uniform(0.8, 3.0)
    radius = rng.uniform(1.3, 3.0)
    room = abs(side.facade_x) - abs(x) - 0.1  # keep the flat crown in front of the facade
    if room < 0.8:
        return
    radius = min(radius, room)
    scene.props.append(Prop("tree", x, side.tree_cursor, height=rng.uniform(1.8, 3.5), size=radius,
                            colour=_jitter(rng, (55, 95, 40), 15), colour2=_jitter(rng, (85, 65, 45), 12),
                            shape=_crown_shape(rng, radius), side=side.sign))


def _next_pole(rng, scene: Scene, side: Side) -> None:
    side.pole_cursor += rng.uniform(14, 45) if side.style == "urban" else rng.uniform(30, 70)
    x = side.edge + side.sign * rng.uniform(0.3, 0.6)
    kind = ("light", "sign", "traffic", "pole")[_pick(rng, (0.45, 0.3, 0.1, 0.15))]
    height = rng.uniform(*{"light": (6, 9), "sign": (2.2, 3.2), "traffic": (3.5, 5), "pole": (4, 8)}[kind])
    colour = _jitter(rng, (120, 122, 125), 25)
    sign_colour = [(200, 30, 30), (30, 70, 170), (235, 190, 30), (240, 240, 240)][rng.integers(4)]
    scene.props.append(Prop(kind, x, side.pole_cursor, height=height,
                            size=rng.uniform(0.6, 0.9) if kind == "sign" else rng.uniform(1.0, 2.2),
                            colour=colour, colour2=sign_colour, side=side.sign))


def extend_static(rng, scene: Scene, z_until: float) -> None:
    """Generates facades, trees and poles on both sides up to world z `z_until` (clips call it each frame)."""
    for side in scene.sides.values():
        while side.facade_cursor < z_until:
            _next_facade(rng, scene, side)
        while side.tree_cursor < z_until:
            _next_tree(rng, scene, side)
        while side.pole_cursor < z_until:
            _next_pole(rng, scene, side)


def _overlaps(a: tuple, b: tuple, margin: float) -> bool:
    return a[0] < b[1] + margin and b[0] < a[1] + margin and a[2] < b[3] + margin and b[2] < a[3] + margin


def _distance(rng, z_min: float, z_max: float) -> float:
    return z_min + (z_max - z_min) * rng.uniform() ** 1.4  # more near objects than far ones


def _make_vehicle(rng, scene: Scene, uid: int, z: float) -> Agent:
    road = scene.road
    kind = ("car", "van", "truck")[_pick(rng, (0.7, 0.18, 0.12))]
    if kind == "car":
        dims = rng.uniform(1.7, 1.9), rng.uniform(1.4, 1.6), rng.uniform(3.9, 4.8)
    elif kind == "van":
        dims = rng.uniform(1.9, 2.1), rng.uniform(1.9, 2.6), rng.uniform(4.8, 6.0)
    else:
        dims = rng.uniform(2.4, 2.55), rng.uniform(3.0, 3.9), rng.uniform(7, 12)
    body = _CAR_COLOURS[_pick(rng, _CAR_P)]
    if kind == "truck" and rng.uniform() < 0.5:
        body = np.array(((225, 225, 225), (200, 60, 40), (40, 80, 160), (230, 180, 40))[rng.integers(4)])
    colours = (_jitter(rng, body, 10), _jitter(rng, (200, 200, 205), 30))
    if road.parking is not None and rng.uniform() < 0.4:  # parked at the kerb
        x = road.parking + rng.uniform(-0.2, 0.2)
        return Agent(uid, kind, x, z, *dims, facing="back", colours=colours,
                     variant=int(rng.integers(1 << 20)))
    lane_x, direction = road.lanes[rng.integers(len(road.lanes))]
    speed = rng.uniform(7, 16)
    return Agent(uid, kind, lane_x + rng.uniform(-0.3, 0.3), z, *dims,
                 facing="back" if direction > 0 else "front",
                 vz=direction * speed, colours=colours, variant=int(rng.integers(1 << 20)))


def _make_pedestrian(rng, scene: Scene, uid: int, z: float) -> Agent:
    road = scene.road
    child = rng.uniform() < 0.1
    height = rng.uniform(1.05, 1.35) if child else float(np.clip(rng.normal(1.72, 0.08), 1.5, 1.95))
    colours = tuple(_jitter(rng, palette[rng.integers(len(palette))], 12)
                    for palette in (_CLOTHES, _CLOTHES, _SKIN, _HAIR))
    variant = int(rng.integers(1 << 20))
    if rng.uniform() < 0.12:  # crossing the road
        facing = "left" if rng.uniform() < 0.5 else "right"
        speed = rng.uniform(1.0, 1.6)
        x = rng.uniform(road.left, road.right)
        return Agent(uid, "pedestrian", x, z, 0.45 * height / 1.75, height, 0.3, facing,
                     vx=speed if facing == "right" else -speed, colours=colours, variant=variant)
    sign = -1 if rng.uniform() < 0.5 else 1
    edge, width = (road.left, road.sidewalk[0]) if sign < 0 else (road.right, road.sidewalk[1])
    x = edge + sign * rng.uniform(0.4, max(0.5, width - 0.3))
    facing = ("back", "front", "left", "right")[_pick(rng, (0.35, 0.35, 0.15, 0.15))]
    vz = 0.0
    if facing in ("back", "front") and rng.uniform() < 0.75:
        vz = rng.uniform(0.9, 1.6) * (1 if facing == "back" else -1)
    return Agent(uid, "pedestrian", x, z, 0.45 * height / 1.75, height, 0.3, facing, vz=vz, colours=colours,
                 variant=variant)


def _make_cyclist(rng, scene: Scene, uid: int, z: float) -> Agent:
    road = scene.road
    colours = (_jitter(rng, _CLOTHES[rng.integers(len(_CLOTHES))], 12),
               _jitter(rng, _CLOTHES[rng.integers(len(_CLOTHES))], 12),
               _jitter(rng, _SKIN[rng.integers(len(_SKIN))], 10),
               _jitter(rng, ((30, 30, 30), (180, 30, 30), (30, 90, 170), (200, 200, 200))[rng.integers(4)]))
    height = rng.uniform(1.65, 1.9)
    variant = int(rng.integers(1 << 20))
    r = rng.uniform()
    if r < 0.3:  # crossing: seen from the side
        facing = "left" if rng.uniform() < 0.5 else "right"
        speed = rng.uniform(2.5, 5.0)
        x = rng.uniform(road.left + 0.5, road.right - 0.5)
        return Agent(uid, "cyclist", x, z, 1.8, height, 0.4, facing,
                     vx=speed if facing == "right" else -speed, colours=colours, variant=variant)
    oncoming = any(d < 0 for _, d in road.lanes)
    if oncoming and r < 0.5:
        x, facing, vz = road.left + rng.uniform(0.5, 1.1), "front", -rng.uniform(3, 7)
    elif r > 0.88:
        x = road.right + rng.uniform(0.5, max(0.6, road.sidewalk[1] - 0.5))  # on the bike path
        facing, vz = "back", rng.uniform(3, 6)
    else:
        x, facing, vz = road.right - rng.uniform(0.5, 1.1), "back", rng.uniform(3, 7)
    if abs(x) < 1.8:  # not in the ego car's path (a clip would drive through it): use the bike path
        x = road.right + rng.uniform(0.5, max(0.6, road.sidewalk[1] - 0.5))
    return Agent(uid, "cyclist", x, z, 0.6, height, 1.8, facing, vz=vz, colours=colours, variant=variant)


_MAKERS = {"vehicle": _make_vehicle, "pedestrian": _make_pedestrian, "cyclist": _make_cyclist}
CLASS_MIX = {"vehicle": 0.6, "pedestrian": 0.25, "cyclist": 0.15}


def spawn_agent(rng, scene: Scene, z_min: float, z_max: float, category: str | None = None) -> Agent | None:
    """Places one agent at camera distance z_min..z_max clear of the others; None if no room was found."""
    if category is None:
        category = list(CLASS_MIX)[_pick(rng, list(CLASS_MIX.values()))]
    for _ in range(8):
        z = scene.ego_z + _distance(rng, z_min, z_max)
        agent = _MAKERS[category](rng, scene, scene.next_uid, z)
        if agent.kind in ("car", "van", "truck") and abs(agent.x) < 1.5 and agent.z - scene.ego_z < 7:
            continue  # nothing sits on the ego car's bonnet
        box = agent.footprint()
        margin = 1.5 if agent.kind in ("car", "van", "truck") else 0.4
        if any(_overlaps(box, other.footprint(), margin) for other in scene.agents):
            continue
        if any(_overlaps(box, (p.x - 0.5, p.x + 0.5, p.z - 0.5, p.z + 0.5), 0.2) for p in scene.props
               if box[2] - 2 < p.z < box[3] + 2):
            continue
        scene.agents.append(agent)
        scene.next_uid += 1
        return agent
    return None


def sample_scene(rng, height: int, width: int, agents: tuple[int, int] = (2, 10)) -> Scene:
    """A random street scene: camera, road, look, static world ahead and `agents` (min, max) objects."""
    camera = _sample_camera(rng, height, width)
    scene = Scene(camera=camera, road=_sample_road(rng), look=_sample_look(rng, camera))
    _sample_sides(rng, scene)
    extend_static(rng, scene, scene.ego_z + STATIC_AHEAD)
    for _ in range(int(rng.integers(agents[0], agents[1] + 1))):
        spawn_agent(rng, scene, 5.0, 60.0)
    return scene


# --------------------------------------------------------------------------------------- rasterising
class _Sketch:
    """Primitives in image coordinates, drawn together on one local canvas.

    Each primitive belongs to a surface: ("z", Z) a constant-depth face or ("x", X) a plane x = X, whose
    depth per column is f * X / (u - cx); each surface has its class. Later primitives paint over earlier
    ones, so one sketch holds one item, or many far-to-near items that do not need a z-test between them."""

    def __init__(self):
        self.ops = []  # (kind, geometry, colour, surface id, thickness)
        self.surfaces = []  # (kind, value, class)

    def const(self, z: float, cls: int = 0) -> int:
        self.surfaces.append(("z", float(z), cls, None))
        return len(self.surfaces)

    def plane(self, x: float, z_range: tuple, cls: int = 0) -> int:
        """A plane x = const spanning z_range: edge pixels (whose centres may fall just outside the
        polygon) get the depth of the nearest point of the surface, never a depth beyond it."""
        self.surfaces.append(("x", float(x), cls, z_range))
        return len(self.surfaces)

    def poly(self, uv, colour, sid):
        self.ops.append((0, np.asarray(uv, np.float64).reshape(-1, 2), colour, sid, 0))

    def polys(self, uvs, colour, sid):
        """Many polygons of one colour (windows): (n, k, 2)."""
        if len(uvs):
            self.ops.append((1, np.asarray(uvs, np.float64), colour, sid, 0))

    def ellipse(self, centre, axes, colour, sid, thickness=-1):
        self.ops.append((2, (float(centre[0]), float(centre[1]), abs(float(axes[0])), abs(float(axes[1]))),
                         colour, sid, thickness))

    def line(self, p0, p1, width_px, colour, sid):
        self.ops.append((3, (float(p0[0]), float(p0[1]), float(p1[0]), float(p1[1])), colour, sid,
                         max(1, int(round(width_px)))))

    def render(self, camera: Camera):
        """-> (x0, y0, colour uint8 [h,w,3], surface uint8 [h,w], depth float32 [h,w]), None if off-frame."""
        if not self.ops:
            return None
        arrays = [op[1].reshape(-1, 2) for op in self.ops if op[0] < 2]
        points = np.concatenate(arrays) if arrays else np.zeros((0, 2))
        lo_x, lo_y = points.min(0) if len(points) else (np.inf, np.inf)
        hi_x, hi_y = points.max(0) if len(points) else (-np.inf, -np.inf)
        for kind, g, _, _, thickness in self.ops:
            if kind == 2:
                pad = max(thickness, 0) / 2 + 1
                lo_x, hi_x = min(lo_x, g[0] - g[2] - pad), max(hi_x, g[0] + g[2] + pad)
                lo_y, hi_y = min(lo_y, g[1] - g[3] - pad), max(hi_y, g[1] + g[3] + pad)
            elif kind == 3:
                pad = thickness / 2 + 1
                lo_x, hi_x = min(lo_x, g[0] - pad, g[2] - pad), max(hi_x, g[0] + pad, g[2] + pad)
                lo_y, hi_y = min(lo_y, g[1] - pad, g[3] - pad), max(hi_y, g[1] + pad, g[3] + pad)
        if not np.isfinite([lo_x, lo_y, hi_x, hi_y]).all():
            return None
        x0, y0 = max(0, int(np.floor(lo_x))), max(0, int(np.floor(lo_y)))
        x1, y1 = min(camera.width, int(np.ceil(hi_x)) + 1), min(camera.height, int(np.ceil(hi_y)) + 1)
        if x1 <= x0 or y1 <= y0:
            return None
        colour = np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
        surface = np.zeros((y1 - y0, x1 - x0), np.uint8)
        one = 1 << _SHIFT
        ox, oy = x0 + 0.5, y0 + 0.5  # cv2 puts integer coordinates at pixel centres
        # One conversion to fixed point for every polygon vertex (far fewer NumPy calls than per primitive).
        fixed = np.round((points - (ox, oy)) * one).astype(np.int32)
        at = 0
        for kind, g, rgb, sid, thickness in self.ops:
            if kind == 0:
                pts = [fixed[at:at + len(g)]]
                at += len(g)
                cv2.fillPoly(colour, pts, rgb, cv2.LINE_8, _SHIFT)
                cv2.fillPoly(surface, pts, sid, cv2.LINE_8, _SHIFT)
            elif kind == 1:
                n = g.shape[0] * g.shape[1]
                pts = list(fixed[at:at + n].reshape(g.shape[0], g.shape[1], 2))
                at += n
                cv2.fillPoly(colour, pts, rgb, cv2.LINE_8, _SHIFT)
                cv2.fillPoly(surface, pts, sid, cv2.LINE_8, _SHIFT)
            elif kind == 2:
                centre = (int(round((g[0] - ox) * one)), int(round((g[1] - oy) * one)))
                axes = (int(round(g[2] * one)), int(round(g[3] * one)))
                cv2.ellipse(colour, centre, axes, 0, 0, 360, rgb, thickness, cv2.LINE_8, _SHIFT)
                cv2.ellipse(surface, centre, axes, 0, 0, 360, sid, thickness, cv2.LINE_8, _SHIFT)
            else:
                p0 = (int(round((g[0] - ox) * one)), int(round((g[1] - oy) * one)))
                p1 = (int(round((g[2] - ox) * one)), int(round((g[3] - oy) * one)))
                cv2.line(colour, p0, p1, rgb, thickness, cv2.LINE_8, _SHIFT)
                cv2.line(surface, p0, p1, sid, thickness, cv2.LINE_8, _SHIFT)
        table = np.full((len(self.surfaces) + 1, x1 - x0), np.inf, np.float32)
        du = x0 + np.arange(x1 - x0) + 0.5 - camera.cx
        for i, (kind, value, _, z_range) in enumerate(self.surfaces, 1):
            if kind == "z":
                table[i] = value
            else:
                with np.errstate(divide="ignore", invalid="ignore"):
                    z = camera.focal * value / du
                table[i] = np.clip(np.where(z > 0, z, z_range[1]), *z_range)
        index = surface * np.int32(x1 - x0) + np.arange(x1 - x0, dtype=np.int32)[None, :]
        depth = np.take(table.ravel(), index)
        return x0, y0, colour, surface, depth

    def classes(self) -> np.ndarray:
        """Surface id -> segmentation class (for sketches that mix classes)."""
        return np.array([0] + [surface[2] for surface in self.surfaces], np.uint8)


class _Frame:
    """The frame buffers: image (uint8, before lens/sensor effects), z-buffer, classes, instances."""

    def __init__(self, camera: Camera):
        shape = (camera.height, camera.width)
        self.image = np.zeros(shape + (3,), np.uint8)
        self.z = np.full(shape, np.inf, np.float32)
        self.seg = np.zeros(shape, np.uint8)
        self.inst = np.zeros(shape, np.int32)

    def composite(self, canvas, cls, uid: int = 0, texture=0.0) -> int:
        """z-tests a rendered canvas into the frame; returns how many pixels the item covers on its own.

        cls and texture are a number, or an array indexed by surface id (sketches holding many items).
        cv2.copyTo writes through the NumPy views of the frame and is ~20x faster than boolean indexing."""
        x0, y0, colour, surface, depth = canvas
        h, w = depth.shape
        region = (slice(y0, y0 + h), slice(x0, x0 + w))
        visible = (depth < self.z[region]).view(np.uint8)
        if np.any(texture):  # a little leafy texture, fixed to the canvas (good enough at these sizes)
            index = (((np.arange(h) + 3 * y0 + uid * 37) & 255) * 256)[:, None] + \
                ((np.arange(w) + 7 * x0 + uid * 91) & 255)[None, :]
            amount = texture if np.isscalar(texture) else texture[surface]
            factor = 1 + amount * np.take(_tile(), index)
            colour = np.clip(colour * _three(factor), 0, 255).astype(np.uint8)
        cv2.copyTo(colour, visible, self.image[region])
        cv2.copyTo(depth, visible, self.z[region])
        labels = np.full((h, w), cls, np.uint8) if np.isscalar(cls) else np.take(cls, surface)
        cv2.copyTo(labels, visible, self.seg[region])
        if uid:
            cv2.copyTo(np.full((h, w), uid, np.int32), visible, self.inst[region])
        return int(np.count_nonzero(surface))


def _ground(frame: _Frame, scene: Scene) -> int:
    """Sky gradient above the horizon; road, sidewalks, verges, markings and texture below.

    Returns the first ground row. Ground classes come from each pixel centre's lateral position x, so the
    road/sidewalk boundaries are exact; markings are anti-aliased by their coverage of the pixel footprint."""
    cam, road, look = scene.camera, scene.road, scene.look
    zg = cam.ground_depth()
    r0 = int(np.argmax(np.isfinite(zg))) if np.isfinite(zg).any() else cam.height
    # sky
    t = np.clip((cam.cy - (np.arange(r0) + 0.5)) / max(cam.cy, 1.0), 0, 1) ** 0.6
    top, horizon = np.asarray(look.sky_top, np.float32), np.asarray(look.sky_horizon, np.float32)
    column = (horizon + (top - horizon) * t[:, None].astype(np.float32))[:, None, :]
    sky = cv2.resize(column, (cam.width, r0), interpolation=cv2.INTER_NEAREST).reshape(r0, cam.width, 3)
    frame.seg[:r0] = SKY
    if r0 > 1 and len(look.clouds):
        small = (max(2, r0 // 4), max(2, cam.width // 4))
        mask = np.zeros(small, np.uint8)
        for u, v, ax, ay, alpha in look.clouds:
            centre = (int(u * small[1] * 16), int(v * cam.cy / 4 * 16))
            axes = (int(ax * small[1] * 16), int(ay * small[1] * 16))
            cv2.ellipse(mask, centre, axes, 0, 0, 360, int(alpha * 255), -1, cv2.LINE_AA, 4)
        mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, small[1] / 40))
        alpha = cv2.resize(mask, (cam.width, r0), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
        cloud = np.asarray(look.sky_horizon, np.float32) * 0.3 + 0.7 * 235
        sky -= cv2.subtract(sky, _scalar(cloud)) * _three(alpha)
    frame.image[:r0] = np.clip(sky + 0.5, 0, 255)
    if r0 >= cam.height:
        return r0
    # ground
    z = zg[r0:, None].astype(np.float32)
    du = (np.arange(cam.width, dtype=np.float32) + 0.5 - cam.cx)[None, :]
    x = du * z / cam.focal
    edges = (road.left - road.sidewalk[0], road.left, road.right, road.right + road.sidewalk[1])
    band = sum((x >= e).astype(np.uint8) for e in edges)
    classes = np.array([road.verge[0], SIDEWALK, ROAD, SIDEWALK, road.verge[1]], np.uint8)
    frame.seg[r0:] = np.take(classes, band)
    frame.z[r0:] = np.broadcast_to(z, x.shape)
    zw = z + np.float32(scene.ego_z)  # world z: the texture and the dashes stay put as the car moves
    tile = _tile().ravel()
    fine = np.take(tile, ((zw * 5).astype(np.int32) & 255) * 256 + ((x * 5).astype(np.int32) & 255))
    coarse = np.take(tile, ((zw * 0.7).astype(np.int32) & 255) * 256
                     + ((x * 0.7 + 97).astype(np.int32) & 255))
    shade = 1 + (0.10 * fine + 0.08 * coarse) / (1 + z / 30)
    # pixel footprint on the road: the z range each row spans (for dashes and paving joints)
    rows = np.arange(r0, cam.height, dtype=np.float64)
    z_near = cam.focal * cam.mount / (rows + 1 - cam.cy)
    z_far = np.where(rows > cam.cy, cam.focal * cam.mount / np.maximum(rows - cam.cy, 1e-6), 1e4)
    z_far = np.minimum(z_far, 1e4)

    def covered(length, period, phase):  # share of [z_near, z_far] (world) on dashes of a periodic pattern
        def cumulative(zz):
            t = zz + scene.ego_z - phase
            k = np.floor(t / period)
            return k * length + np.minimum(t - k * period, length)
        return ((cumulative(z_far) - cumulative(z_near)) / (z_far - z_near)).astype(np.float32)

    on_walk = (band == 1) | (band == 3)
    shade *= 1 - 0.25 * covered(0.06, _slab_length(road), 0.0)[:, None] * on_walk  # paving joints
    shadow = _shadows(scene, r0)
    if shadow is not None:
        shade *= 1 - shadow
    # per channel (NumPy broadcasting over a trailing axis of 3 is ~10x slower than same-shape arithmetic)
    rgb = np.asarray(road.colours, np.float32)
    colour = cv2.merge([np.take(rgb[:, c], band) * shade for c in range(3)])
    _paint_lines(colour, z[:, 0], covered(*road.dash), road, cam)
    frame.image[r0:] = np.clip(colour + 0.5, 0, 255)
    return r0


def _paint_lines(colour: np.ndarray, z: np.ndarray, dashes: np.ndarray, road: Road, cam: Camera) -> None:
    """Blends the markings and curbs into the ground colour, weighted by the share of each pixel they cover.

    All lines at once, each only in a narrow window of columns around it in each row (speed)."""
    rows, width = colour.shape[:2]
    lines = list(road.markings) + [(road.left - 0.1, 0.1, False, road.curb),
                                   (road.right + 0.1, 0.1, False, road.curb)]
    mx = np.array([line[0] for line in lines])[None, :, None]  # [1, L, 1]
    half = np.array([line[1] for line in lines])[None, :, None]
    dashed = np.array([line[2] for line in lines])[None, :, None]
    rgb = np.array([line[3] for line in lines], np.float32)
    metres = (z / cam.focal)[:, None, None]  # pixel width on the road, per row
    k = int(np.ceil(2 * half.max() / metres.min() + 4))
    centre = cam.cx + cam.focal * mx / z[:, None, None]
    cols = np.floor(centre - k / 2).astype(np.int64) + np.arange(k)[None, None, :]  # [rows, L, k]
    x = (cols + 0.5 - cam.cx) * metres
    overlap = np.minimum(x + metres / 2, mx + half) - np.maximum(x - metres / 2, mx - half)
    cover = np.clip(overlap, 0, None) / metres
    cover = cover * np.where(dashed, dashes[:, None, None], 1.0)
    hit = (cover > 0) & (cols >= 0) & (cols < width)
    rr, ll, _ = np.nonzero(hit)
    cc, cover = cols[hit], cover[hit].astype(np.float32)[:, None]
    colour[rr, cc] += cover * (rgb[ll] - colour[rr, cc])  # lines never overlap, so one pass is exact


def _slab_length(road: Road) -> float:
    """Paving slab length, derived from the sidewalk colour so a clip keeps it without storing more state."""
    return 0.6 + (sum(road.colours[1]) % 7) * 0.1


_CIRCLE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 10, endpoint=False)),
                    np.sin(np.linspace(0, 2 * np.pi, 10, endpoint=False))], 1)


def _shadows(scene: Scene, r0: int) -> np.ndarray | None:
    """How much each ground pixel (rows r0..) is darkened by the shadows of agents and trees, or None.

    An agent's shadow is the hull of its footprint and the footprint moved along the sun direction
    (a hexagon); a tree's is a disc under its crown, moved the same way. All projected in one go."""
    cam, look = scene.camera, scene.look
    sun_x, sun_z = look.sun  # sun_z > 0: shadows fall away from the camera
    polys = []
    feet = np.array([a.footprint() + (a.height,) for a in scene.agents]).reshape(-1, 5)
    feet[:, 2:4] -= scene.ego_z
    feet = feet[(feet[:, 3] > NEAR) & (feet[:, 2] < 80)]
    if len(feet):
        x0, x1, z0, z1, h = feet.T
        sx, sz = sun_x * h * 0.5, sun_z * h * 0.5
        if sun_x >= 0:
            xs = np.stack([x0, x1, x1 + sx, x1 + sx, x0 + sx, x0], 1)
            zs = np.stack([z0, z0, z0 + sz, z1 + sz, z1 + sz, z1], 1)
        else:
            xs = np.stack([x0, x1, x1, x1 + sx, x0 + sx, x0 + sx], 1)
            zs = np.stack([z0, z0, z1, z1 + sz, z1 + sz, z0 + sz], 1)
        polys.append((xs, zs))
    trees = np.array([(p.x, p.z - scene.ego_z, p.height + p.size, p.size) for p in scene.props
                      if p.kind == "tree"]).reshape(-1, 4)
    trees = trees[(trees[:, 1] > NEAR) & (trees[:, 1] < 80)]
    if len(trees):
        x, z, reach, radius = (c[:, None] for c in trees.T)
        polys.append((x + sun_x * reach + _CIRCLE[:, 0] * radius * 0.9,
                      z + sun_z * reach + _CIRCLE[:, 1] * radius * 0.9))
    if not polys:
        return None
    mask = np.zeros((cam.height, cam.width), np.uint8)
    for xs, zs in polys:
        u, v = cam.project(xs, 0.0, np.maximum(zs, NEAR))
        fixed = np.round((np.stack([u, v], -1) - 0.5) * 16).astype(np.int32)
        cv2.fillPoly(mask, list(fixed), 255, cv2.LINE_8, 4)
    return cv2.blur(mask[r0:], (3, 3)).astype(np.float32) * (look.shadow / 255)


def _facade(scene: Scene, f: Facade) -> _Sketch | None:
    cam = scene.camera
    z0, z1 = max(f.z0 - scene.ego_z, NEAR), min(f.z1 - scene.ego_z, 400.0)
    if z1 <= z0:
        return None
    sk = _Sketch()
    sid = sk.plane(f.x, (z0, z1))
    if f.kind != "building":  # hedges and tree lines: a wavy top, fixed to the world
        n = int(np.clip((z1 - z0) / 1.5, 2, 80))
        zs = np.linspace(z0, z1, n)
        zw = zs + scene.ego_z
        phase = (f.seed % 1000) / 1000 * 2 * np.pi
        wobble = 0.2 if f.kind == "treeline" else 0.06
        top = f.height * (1 + wobble * np.sin(zw / 7.0 + phase) + wobble / 2 * np.sin(zw / 2.3 + 2 * phase))
        u, v = cam.project(f.x, np.concatenate([top, np.zeros(n)]), np.concatenate([zs, zs[::-1]]))
        sk.poly(np.stack([u, v], 1), f.colour, sid)
        return sk

    fl, cx, cy, mount = cam.focal, cam.cx, cam.cy, cam.mount

    def quad(y0, y1, za, zb):  # a rectangle on the facade plane, in plain Python (4 points)
        ua, ub = cx + fl * f.x / za, cx + fl * f.x / zb
        return np.array([(ua, cy + fl * (mount - y0) / za), (ub, cy + fl * (mount - y0) / zb),
                         (ub, cy + fl * (mount - y1) / zb), (ua, cy + fl * (mount - y1) / za)])

    sk.poly(quad(0, f.height, z0, z1), f.colour, sid)
    sk.poly(quad(f.height - 0.45, f.height, z0, z1), _rgb(f.colour, 0.8), sid)  # cornice
    if f.windows is not None:
        ground, floor, spacing, win_w, win_h = f.windows
        sk.poly(quad(0, ground - 0.3, z0, z1), _rgb(f.colour, 0.72), sid)  # shop fronts
        glass = (_GLASS, _rgb(_GLASS, 1.35), _rgb(scene.look.sky_horizon, 0.8), (150, 140, 110))
        floors = ground + np.arange(int(max(0, (f.height - ground - 0.6 - win_h) // floor) + 1)) * floor
        floors = floors[floors + win_h <= f.height - 0.5]
        columns = np.arange(int(max(0.0, (f.z1 - f.z0 - 1.0 - win_w) // spacing) + 1))
        cz = f.z0 + 0.6 + columns * spacing - scene.ego_z  # window columns are fixed to the world
        keep = (cz >= z0) & (cz + win_w <= z1) & (cz < 110)
        columns, cz = columns[keep], cz[keep]
        rows = [(floors, win_h, columns, cz)]
        if ground > 1.6:
            rows.append((np.array([0.5]), ground - 1.3, columns[::2], cz[::2]))  # shop windows
        for ys, tall, cols, za in rows:
            if not len(ys) or not len(za):
                continue
            zb = za + win_w
            pts = np.empty((len(ys), len(za), 4, 2))
            pts[:, :, 0, 0] = pts[:, :, 3, 0] = cx + fl * f.x / za
            pts[:, :, 1, 0] = pts[:, :, 2, 0] = cx + fl * f.x / zb
            low, high = fl * (mount - ys)[:, None], fl * (mount - ys - tall)[:, None]
            pts[:, :, 0, 1], pts[:, :, 1, 1] = cy + low / za, cy + low / zb
            pts[:, :, 2, 1], pts[:, :, 3, 1] = cy + high / zb, cy + high / za
            group = (np.arange(len(ys))[:, None] * 7 + cols[None, :] * 13 + f.seed) % 9
            # mostly dark glass; some panes lighter, reflecting the sky, or with curtains
            for pick, rgb in ((group < 6, glass[0]), (group == 6, glass[1]), (group == 7, glass[2]),
                              (group == 8, glass[3])):
                sk.polys(pts[pick], rgb, sid)
    if f.z0 - scene.ego_z >= NEAR:  # the end wall facing the camera, seen across a gap
        z = f.z0 - scene.ego_z
        end = sk.const(z)
        x_out = f.x + (8 if f.x > 0 else -8)
        u0, u1 = cx + fl * f.x / z, cx + fl * x_out / z
        v0, v1 = cy + fl * mount / z, cy + fl * (mount - f.height) / z
        sk.poly(np.array([(u0, v0), (u1, v0), (u1, v1), (u0, v1)]), _rgb(f.colour, 0.78), end)
    return sk


def _billboard(cam: Camera, x: float, z: float):
    """Maps metres on a constant-z face (dx right of x, y up from the road) to pixels."""
    ppm = cam.focal / z
    u0, v0 = cam.cx + x * ppm, cam.cy + cam.mount * ppm

    def to_px(points):  # plain Python: these lists are short and NumPy's per-call cost would dominate
        return np.array([(u0 + dx * ppm, v0 - y * ppm) for dx, y in points])
    return to_px, ppm


def _rect(x0, x1, y0, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _vehicle(sk: _Sketch, cam: Camera, a: Agent, z: float) -> None:
    w, h, length = a.width, a.height, a.length
    body, accent = a.colours[0], a.colours[1]
    front = a.facing == "front"
    xl, xr = a.x - w / 2, a.x + w / 2
    # the side wall facing the camera (a plane x = const), drawn first so the near face covers its edge
    xs = xl if xl > 0.15 else (xr if xr < -0.15 else None)
    z_start = max(z, NEAR)
    if xs is not None and z + length > NEAR:
        sid = sk.plane(xs, (z_start, z + length))

        def side_poly(points):  # (fraction of length from the near face, y_up)
            p = np.asarray(points, np.float64)
            zz = np.clip(z + p[:, 0] * length, z_start, None)
            u, v = cam.project(xs, p[:, 1], zz)
            return np.stack([u, v], 1)

        if a.kind == "car":
            belt = 0.6 * h
            sk.poly(side_poly([(0, 0.3), (0, belt), (0.2, belt + 0.06), (0.3, h), (0.74, h),
                               (0.86, belt + 0.05), (1, belt - 0.04), (1, 0.3)]), _rgb(body, 0.72), sid)
            sk.poly(side_poly([(0.26, belt + 0.07), (0.33, h - 0.06), (0.72, h - 0.06), (0.8, belt + 0.07)]),
                    _GLASS, sid)
            wheels, radius = (0.8 / length, 1 - 0.8 / length), 0.32
        elif a.kind == "van":
            cab = 0.78 if not front else 0.22
            pts = [(0, 0.3), (0, h), (0.78, h), (0.92, 0.62 * h), (1, 0.55 * h), (1, 0.3)] if not front else \
                [(1, 0.3), (1, h), (0.22, h), (0.08, 0.62 * h), (0, 0.55 * h), (0, 0.3)]
            sk.poly(side_poly(pts), _rgb(body, 0.72), sid)
            wa, wb = (cab, 0.92) if not front else (0.08, cab)
            sk.poly(side_poly([(wa, 0.6 * h), (wa, 0.85 * h), (wb, 0.66 * h), (wb, 0.6 * h)]), _GLASS, sid)
            wheels, radius = (0.9 / length, 1 - 0.9 / length), 0.36
        else:
            cab = 2.4 / length
            box = (0.0, 1 - cab - 0.03) if not front else (cab + 0.03, 1.0)
            cab_span = (1 - cab, 1.0) if not front else (0.0, cab)
            sk.poly(side_poly(_rect(*box, 0.95, h)), _rgb(accent if accent else body, 0.75), sid)
            sk.poly(side_poly(_rect(*box, 0.5, 0.95)), (45, 45, 48), sid)
            sk.poly(side_poly(_rect(*cab_span, 0.5, 0.8 * h)), _rgb(body, 0.7), sid)
            sk.poly(side_poly(_rect(cab_span[0] + 0.02, cab_span[1] - 0.02, 0.55 * h, 0.75 * h)), _GLASS, sid)
            wheels, radius = (1.2 / length, 2.2 / length, 1 - 1.4 / length), 0.5
        for frac in wheels:
            zc = z + frac * length
            if zc - radius < z_start:
                continue
            (uc,), (vc,) = (np.atleast_1d(t) for t in cam.project(xs, radius, zc))
            ax = abs(cam.focal * xs * radius / zc ** 2)
            sk.ellipse((uc, vc), (ax, cam.focal * radius / zc), _TYRE, sid)
            sk.ellipse((uc, vc), (ax * 0.5, cam.focal * radius * 0.5 / zc), (110, 110, 115), sid)
    if z < NEAR:
        return
    # the face nearest the camera (rear, or front for oncoming traffic) at constant depth
    sid = sk.const(z)
    px, _ = _billboard(cam, a.x, z)
    hw = w / 2
    lights = (235, 232, 215) if front else ((235, 40, 35) if a.variant % 5 == 0 else (175, 25, 25))
    for x0 in (-hw + 0.03, hw - 0.3):  # tyres under the body
        sk.poly(px(_rect(x0, x0 + 0.27, 0, 0.36)), _TYRE, sid)
    sk.poly(px(_rect(-hw + 0.3, hw - 0.3, 0.12, 0.32)), (30, 30, 32), sid)  # underbody in shadow
    if a.kind == "car":
        belt = 0.6 * h
        sk.poly(px(_rect(-hw, hw, 0.28, belt)), body, sid)
        sk.poly(px([(-hw * 0.96, belt), (hw * 0.96, belt), (hw * 0.76, h), (-hw * 0.76, h)]), body, sid)
        sk.poly(px([(-hw * 0.86, belt + 0.05), (hw * 0.86, belt + 0.05), (hw * 0.7, h - 0.07),
                    (-hw * 0.7, h - 0.07)]), _GLASS, sid)
        sk.poly(px(_rect(-hw, hw, 0.24, 0.42)), _rgb(body, 0.55) if a.variant % 2 else (40, 40, 42), sid)
        for x0 in (-hw + 0.05, hw - 0.32):
            sk.poly(px(_rect(x0, x0 + 0.27, belt - 0.2, belt - 0.05)), lights, sid)
        if front:
            sk.poly(px(_rect(-hw * 0.45, hw * 0.45, 0.45, belt - 0.1)), (35, 35, 38), sid)
        sk.poly(px(_rect(-0.26, 0.26, 0.3, 0.42)), (225, 225, 215), sid)
    elif a.kind == "van":
        sk.poly(px([(-hw, 0.3), (hw, 0.3), (hw, h - 0.12), (hw - 0.12, h), (-hw + 0.12, h), (-hw, h - 0.12)]),
                body, sid)
        if front:
            sk.poly(px(_rect(-hw * 0.88, hw * 0.88, 0.58 * h, 0.9 * h)), _GLASS, sid)
            for x0 in (-hw + 0.05, hw - 0.35):
                sk.poly(px(_rect(x0, x0 + 0.3, 0.3 * h, 0.4 * h)), lights, sid)
        else:
            for x0, x1 in ((-hw * 0.88, -0.04), (0.04, hw * 0.88)):
                sk.poly(px(_rect(x0, x1, 0.62 * h, 0.86 * h)), _GLASS, sid)
            sk.poly(px(_rect(-0.015, 0.015, 0.3, h - 0.1)), _rgb(body, 0.5), sid)
            for x0 in (-hw + 0.03, hw - 0.15):
                sk.poly(px(_rect(x0, x0 + 0.12, 0.32 * h, 0.55 * h)), lights, sid)
        sk.poly(px(_rect(-hw, hw, 0.24, 0.4)), (40, 40, 42), sid)
    else:
        if front:
            sk.poly(px(_rect(-hw, hw, 0.78 * h, h)), _rgb(accent, 0.95), sid)  # the box above the cab
            sk.poly(px(_rect(-hw * 0.96, hw * 0.96, 0.5, 0.8 * h)), body, sid)
            sk.poly(px(_rect(-hw * 0.85, hw * 0.85, 0.52 * h, 0.74 * h)), _GLASS, sid)
            sk.poly(px(_rect(-hw * 0.5, hw * 0.5, 0.7, 0.42 * h)), (40, 40, 42), sid)
            for x0 in (-hw * 0.9, hw * 0.9 - 0.3):
                sk.poly(px(_rect(x0, x0 + 0.3, 0.75, 0.95)), lights, sid)
        else:
            sk.poly(px(_rect(-hw, hw, 0.95, h)), accent, sid)
            sk.poly(px(_rect(-0.02, 0.02, 1.0, h - 0.05)), _rgb(accent, 0.6), sid)
            sk.poly(px(_rect(-hw, hw, 0.45, 0.62)), (50, 50, 52), sid)
            for x0 in (-hw + 0.05, hw - 0.3):
                sk.poly(px(_rect(x0, x0 + 0.25, 0.62, 0.8)), lights, sid)
        for x0 in (-hw, hw - 0.5):
            sk.poly(px(_rect(x0, x0 + 0.5, 0, 0.55)), _TYRE, sid)


def _walking_phase(a: Agent) -> float:
    return (a.x + a.z) / 0.7 + (a.variant % 100) / 100 * 2 * np.pi


def _pedestrian(sk: _Sketch, cam: Camera, a: Agent, z: float) -> None:
    sid = sk.const(z)
    px, ppm = _billboard(cam, a.x, z)
    h = a.height
    top, bottom, skin, hair = a.colours
    side_view = a.facing in ("left", "right")
    s = 1.0 if a.facing == "right" else -1.0
    moving = abs(a.vx) + abs(a.vz) > 0.1
    swing = 0.15 * h * np.sin(_walking_phase(a)) if moving else 0.02 * h
    hip, shoulder, head_r = 0.52 * h, 0.81 * h, 0.065 * h
    leg = 0.075 * h
    if side_view:
        feet = ((0.0, s * swing), (0.0, -s * swing))
        torso_half, arm_hands = 0.075 * h, (-s * swing * 0.8, s * swing * 0.8)
    else:
        feet = ((-0.045 * h, -0.06 * h), (0.045 * h, 0.06 * h))
        torso_half, arm_hands = 0.125 * h, None
    for i, (hx, fx) in enumerate(feet):
        shade = 0.7 if (side_view and i == 0) else 1.0
        sk.poly(px([(hx - leg / 2, hip), (hx + leg / 2, hip), (fx + leg / 2, 0.04 * h),
                    (fx - leg / 2, 0.04 * h)]), _rgb(bottom, shade), sid)
        toe = 0.02 * h * s * side_view  # shoes stick out forward in a side view
        shoe = _rect(fx - leg / 2 + min(toe, 0), fx + leg / 2 + max(toe, 0), 0, 0.045 * h)
        sk.poly(px(shoe), (30, 28, 28), sid)
    sk.poly(px([(-torso_half, shoulder), (torso_half, shoulder), (torso_half * 0.85, hip - 0.03 * h),
                (-torso_half * 0.85, hip - 0.03 * h)]), top, sid)
    arm = 0.045 * h
    if side_view:
        for hand in arm_hands:
            sk.line(px([(0, shoulder - 0.02 * h)])[0], px([(hand, 0.47 * h)])[0], arm * ppm,
                    _rgb(top, 0.85), sid)
    else:
        for sx in (-1, 1):
            sk.line(px([(sx * (torso_half + arm / 2), shoulder - 0.02 * h)])[0],
                    px([(sx * (torso_half + arm), 0.47 * h)])[0], arm * ppm, _rgb(top, 0.85), sid)
    sk.poly(px(_rect(-0.025 * h, 0.025 * h, shoulder - 0.01 * h, shoulder + 0.04 * h)), skin, sid)  # neck
    head = px([(0.01 * h * s * side_view, h - head_r)])[0]
    sk.ellipse(head, (head_r * 0.85 * ppm, head_r * ppm), skin if a.facing != "back" else hair, sid)
    if a.facing != "back":  # hair on top
        sk.ellipse(head - np.array([0, head_r * 0.55 * ppm]), (head_r * 0.85 * ppm, head_r * 0.5 * ppm),
                   hair, sid)


def _cyclist(sk: _Sketch, cam: Camera, a: Agent, z: float) -> None:
    sid = sk.const(z)
    px, ppm = _billboard(cam, a.x, z)
    top, bottom, skin, frame_rgb = a.colours
    scale = a.height / 1.75

    def p(x, y):
        return px([(x * scale, y * scale)])[0]

    tyre = max(1.0, 0.05 * scale * ppm)
    crank = _walking_phase(a)
    if a.facing in ("left", "right"):
        s = 1.0 if a.facing == "right" else -1.0
        rear, front = p(-0.52 * s, 0.34), p(0.52 * s, 0.34)
        for hub in (rear, front):
            r = 0.34 * scale * ppm
            sk.ellipse(hub, (r, r), _TYRE, sid, thickness=int(round(tyre)))
        seat, bb, head_tube, bar = p(-0.18 * s, 0.9), p(0.0, 0.3), p(0.38 * s, 0.84), p(0.36 * s, 1.02)
        for a0, a1 in ((rear, seat), (seat, bb), (bb, rear), (seat, head_tube), (bb, head_tube),
                       (head_tube, front), (head_tube, bar)):
            sk.line(a0, a1, 0.04 * scale * ppm, frame_rgb, sid)
        hip, shoulder = (-0.15 * s, 0.98), (0.12 * s, 1.46)
        for i, phase in enumerate((crank, crank + np.pi)):
            foot = (0.17 * s * np.cos(phase), 0.3 + 0.17 * np.sin(phase))
            knee = (0.18 * s + 0.05 * s * np.cos(phase), 0.68 + 0.1 * np.sin(phase))
            shade = 0.7 if i == 0 else 1.0
            sk.line(p(*hip), p(*knee), 0.12 * scale * ppm, _rgb(bottom, shade), sid)
            sk.line(p(*knee), p(*foot), 0.1 * scale * ppm, _rgb(bottom, shade), sid)
        sk.line(p(*hip), p(*shoulder), 0.24 * scale * ppm, top, sid)
        sk.line(p(*shoulder), bar, 0.07 * scale * ppm, _rgb(top, 0.85), sid)
        head = p(0.2 * s, 1.62)
    else:  # from behind or in front: a narrow wheel under the rider
        sk.ellipse(p(0, 0.34), (max(0.5, 0.03 * scale * ppm), 0.34 * scale * ppm), _TYRE, sid)
        sk.line(p(-0.3, 1.0), p(0.3, 1.0), 0.035 * scale * ppm, (40, 40, 40), sid)
        for sx, phase in ((-1, crank), (1, crank + np.pi)):
            foot = (sx * 0.16, 0.3 + 0.15 * np.sin(phase))
            knee = p(sx * 0.13, 0.6 + 0.08 * np.sin(phase))
            sk.line(p(sx * 0.1, 0.98), knee, 0.13 * scale * ppm, bottom, sid)
            sk.line(knee, p(*foot), 0.1 * scale * ppm, bottom, sid)
            sk.line(p(sx * 0.19, 1.44), p(sx * 0.3, 1.02), 0.07 * scale * ppm, _rgb(top, 0.85), sid)
        sk.poly(px([(-0.2 * scale, 1.47 * scale), (0.2 * scale, 1.47 * scale), (0.15 * scale, 0.95 * scale),
                    (-0.15 * scale, 0.95 * scale)]), top, sid)
        if a.facing == "back":
            sk.poly(px(_rect(-0.04 * scale, 0.04 * scale, 0.62 * scale, 0.7 * scale)), (200, 30, 30), sid)
        head = p(0, 1.62)
    r = 0.11 * scale * ppm
    sk.ellipse(head, (r * 0.9, r), skin, sid)
    sk.ellipse(head - np.array([0, 0.4 * r]), (r, 0.65 * r), frame_rgb, sid)  # helmet


def _in_view(cam: Camera, prop: Prop, z: float) -> bool:
    """Cheap test before drawing: is any of the prop (with its crown or arm) inside the frame?"""
    if not NEAR <= z < 400:
        return False
    reach = prop.size * 1.6 + 0.3
    return (cam.cx + cam.focal * (prop.x + reach) / z > 0
            and cam.cx + cam.focal * (prop.x - reach) / z < cam.width)


def _prop(sk: _Sketch, cam: Camera, prop: Prop, z: float) -> None:
    px, ppm = _billboard(cam, prop.x, z)
    far = ppm < 1.5  # a few pixels tall: details would not show
    if prop.kind == "tree":
        sid = sk.const(z, VEGETATION)
        trunk = 0.12 + 0.04 * prop.size
        sk.poly(px(_rect(-trunk, trunk, 0, prop.height + prop.size * 0.5)), prop.colour2, sid)
        centre_y = prop.height + prop.size * 0.8
        if far:
            sk.ellipse(px([(0, centre_y)])[0], (prop.size * ppm, prop.size * ppm * 0.9), prop.colour, sid)
            return
        for i, (dx, dy, r) in enumerate(prop.shape):
            shade = (0.8, 1.0, 0.9, 1.1, 0.85, 1.05)[i % 6]
            sk.ellipse(px([(dx, centre_y + dy)])[0], (r * ppm, r * ppm * 0.9), _rgb(prop.colour, shade), sid)
        return
    sid = sk.const(z, POLE)
    width = 0.09 if prop.kind == "sign" else 0.13
    sk.poly(px(_rect(-width, width, 0, prop.height)), prop.colour, sid)
    if far:
        return
    if prop.kind == "light":
        reach = -prop.side * prop.size
        sk.line(px([(0, prop.height - 0.1)])[0], px([(reach, prop.height + 0.15)])[0], 0.08 * ppm,
                prop.colour, sid)
        sk.ellipse(px([(reach, prop.height + 0.08)])[0], (0.3 * ppm, 0.1 * ppm), (225, 222, 200), sid)
    elif prop.kind == "sign":
        r = prop.size / 2
        centre = px([(0, prop.height + r * 0.8)])[0]
        if prop.colour2 == (200, 30, 30):
            sk.ellipse(centre, (r * ppm, r * ppm), prop.colour2, sid)
            sk.ellipse(centre, (r * 0.7 * ppm, r * 0.7 * ppm), (235, 235, 235), sid)
        elif prop.colour2 == (235, 190, 30):
            y0 = prop.height
            sk.poly(px([(-r, y0), (r, y0), (0, y0 + 1.7 * r)]), (200, 30, 30), sid)
            sk.poly(px([(-0.7 * r, y0 + 0.18 * r), (0.7 * r, y0 + 0.18 * r), (0, y0 + 1.4 * r)]),
                    (240, 240, 230), sid)
        else:
            sk.poly(px(_rect(-r, r, prop.height, prop.height + 1.4 * r)), prop.colour2, sid)
    elif prop.kind == "traffic":
        y0 = prop.height - 1.0
        sk.poly(px(_rect(-0.18, 0.18, y0, prop.height)), (35, 35, 35), sid)
        lit = int(prop.size * 10) % 3
        for i, rgb in enumerate(((220, 40, 30), (230, 180, 30), (40, 200, 80))):
            sk.ellipse(px([(0, prop.height - 0.17 - 0.32 * i)])[0], (0.1 * ppm, 0.1 * ppm),
                       rgb if i == lit else _rgb(rgb, 0.3), sid)


def _skyline(scene: Scene) -> _Sketch | None:
    look, cam = scene.look, scene.camera
    if not look.skyline.any():
        return None
    sk = _Sketch()
    sid = sk.const(SKYLINE_Z)
    n = len(look.skyline)
    reach = (cam.width / cam.focal) * SKYLINE_Z  # lateral metres spanning the view at SKYLINE_Z
    xs = np.linspace(-reach, reach, n)
    if scene.look.skyline_class == BUILDING:  # blocky: steps instead of a smooth outline
        xs = np.repeat(xs, 2)[1:]
        heights = np.repeat(look.skyline, 2)[:-1]
    else:
        heights = look.skyline
    u, v = cam.project(np.concatenate([xs, xs[[-1, 0]]]), np.concatenate([heights, [0, 0]]), SKYLINE_Z)
    sk.poly(np.stack([u, v], 1), look.skyline_colour, sid)
    return sk


def _lens_and_sensor(frame: _Frame, scene: Scene, rng) -> np.ndarray:
    """Appearance only: haze, light, vignette, blur, noise, JPEG. Labels are not touched."""
    look, cam = scene.look, scene.camera
    image = frame.image.astype(np.float32)
    finite = np.isfinite(frame.z)
    haze = np.where(finite, 1 - np.exp(-np.where(finite, frame.z, 0) / look.haze), 0).astype(np.float32)
    image -= cv2.subtract(image, _scalar(look.sky_horizon)) * _three(haze)
    ry, rx = _falloff(cam.height, cam.width)
    image *= _three((1 - look.vignette * ry) * (1 - look.vignette * rx))
    image = cv2.multiply(image, _scalar(look.gain))
    kind, amount, angle = look.blur
    if kind == "defocus":
        image = cv2.GaussianBlur(image, (0, 0), amount)
    elif kind == "motion":
        size = int(round(amount)) | 1
        kernel = np.zeros((size, size), np.float32)
        kernel[size // 2] = 1.0 / size
        rotate = cv2.getRotationMatrix2D((size / 2 - 0.5, size / 2 - 0.5), angle, 1.0)
        kernel = cv2.warpAffine(kernel, rotate, (size, size))
        image = cv2.filter2D(image, -1, kernel / max(kernel.sum(), 1e-6))
    # Gaussian noise from random bytes through a quantile table: 4x faster than drawing normals.
    noise = np.take(_normal_table(), np.frombuffer(rng.bytes(image.size), np.uint8)).reshape(image.shape)
    image = cv2.scaleAdd(noise, look.noise, image)
    out = cv2.convertScaleAbs(cv2.max(image, 0.0))  # saturating, rounding float -> uint8
    if look.jpeg:
        ok, data = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, look.jpeg])
        out = cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1].copy()
    return out


def _three(channel: np.ndarray) -> np.ndarray:
    """[H,W] -> [H,W,3] copies, so per-pixel factors multiply colour images at full speed."""
    return cv2.merge([channel, channel, channel])


def _scalar(rgb) -> tuple:
    """An RGB triple as the 4-tuple cv2 arithmetic takes as a per-channel constant."""
    return (float(rgb[0]), float(rgb[1]), float(rgb[2]), 0.0)


@functools.lru_cache(maxsize=1)
def _normal_table() -> np.ndarray:
    """256 standard-normal quantiles: byte b -> the normal value at probability (b + 0.5) / 256."""
    from statistics import NormalDist
    return np.array([NormalDist().inv_cdf((b + 0.5) / 256) for b in range(256)], np.float32)


@functools.lru_cache(maxsize=8)
def _falloff(height: int, width: int) -> tuple:
    """Squared distance from the centre along each axis (separable vignette)."""
    ry = (((np.arange(height) + 0.5) / height - 0.5) ** 2 * 2).astype(np.float32)[:, None]
    rx = (((np.arange(width) + 0.5) / width - 0.5) ** 2 * 2).astype(np.float32)
    return ry, rx


def rasterise(scene: Scene, rng, return_instances: bool = False):
    """Scene -> schema example (and, with return_instances, an extras dict for checks and clips).

    extras: "instances" int32 [H,W] (agent uid per pixel, 0 = none), "box_uids" int32 [N] (the uid of each
    box), "objects" (per drawn agent: uid, kind, class, distance of its nearest face, length, velocity,
    visible and unoccluded pixel counts, kept, box), "camera" (focal, cx, cy, mount)."""
    cam = scene.camera
    frame = _Frame(cam)
    _ground(frame, scene)
    skyline = _skyline(scene)
    if skyline is not None:
        canvas = skyline.render(cam)
        if canvas is not None:
            frame.composite(canvas, scene.look.skyline_class)
    for f in sorted(scene.facades, key=lambda f: -abs(f.x)):
        sk = _facade(scene, f)
        canvas = sk.render(cam) if sk is not None else None
        if canvas is not None:
            frame.composite(canvas, BUILDING if f.kind == "building" else VEGETATION,
                            texture=0.0 if f.kind == "building" else 0.35)
    # Trees and poles share one sketch, painted far to near (flat faces at distinct z), then z-tested once.
    props = sorted((p for p in scene.props if _in_view(cam, p, p.z - scene.ego_z)), key=lambda p: -p.z)
    for chunk in range(0, len(props), 250):  # surface ids are uint8
        sk = _Sketch()
        for p in props[chunk:chunk + 250]:
            _prop(sk, cam, p, p.z - scene.ego_z)
        canvas = sk.render(cam)
        if canvas is not None:
            classes = sk.classes()
            leafy = np.where(classes == VEGETATION, 0.3, 0.0).astype(np.float32)
            frame.composite(canvas, classes, texture=leafy)
    drawn = {}
    agents = [a for a in scene.agents if a.z - scene.ego_z + a.length > NEAR]
    for a in sorted(agents, key=lambda a: -a.z):  # far to near; the z-buffer decides the rest
        z = a.z - scene.ego_z
        sk = _Sketch()
        if a.kind in ("car", "van", "truck"):
            _vehicle(sk, cam, a, z)
        elif z >= NEAR:
            (_pedestrian if a.kind == "pedestrian" else _cyclist)(sk, cam, a, z)
        canvas = sk.render(cam)
        if canvas is not None:
            total = frame.composite(canvas, _SEG[AGENT_CLASS[a.kind]], a.uid)
            drawn[a.uid] = (a, canvas[:2] + canvas[3].shape, total)
    depth = np.where(frame.z <= MAX_DEPTH, frame.z, 0).astype(np.float32)
    boxes, classes, uids, ignore, objects = [], [], [], [], []
    for uid, (agent, (x0, y0, h, w), total) in drawn.items():
        mine = frame.inst[y0:y0 + h, x0:x0 + w] == uid
        visible = int(np.count_nonzero(mine))
        kept = visible >= MIN_VISIBLE_PIXELS and visible >= MIN_VISIBLE_FRACTION * total
        box = None
        if visible:
            rows, cols = np.flatnonzero(mine.any(1)), np.flatnonzero(mine.any(0))
            box = [x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1]
            (boxes if kept else ignore).append(box)
            if kept:
                classes.append(agent.detection_class)
                uids.append(uid)
        objects.append({"uid": uid, "kind": agent.kind, "class": AGENT_CLASS[agent.kind],
                        "distance": float(agent.z - scene.ego_z), "length": float(agent.length),
                        "velocity": (float(agent.vx), float(agent.vz)),
                        "visible": visible, "total": total, "kept": kept, "box": box})
    example = schema.validate({
        "image": _lens_and_sensor(frame, scene, rng),
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "classes": np.asarray(classes, np.int32),
        "segmentation": frame.seg, "depth": depth,
        "has_detection": True, "has_segmentation": True, "has_depth": True,
    }, "synthetic")
    # Objects too hidden or small for a box: a detector should not be punished for finding them.
    example["ignore_boxes"] = np.asarray(ignore, np.float32).reshape(-1, 4)
    if not return_instances:
        return example
    extras = {"instances": frame.inst, "box_uids": np.asarray(uids, np.int32), "objects": objects,
              "camera": {"focal": cam.focal, "cx": cam.cx, "cy": cam.cy, "mount": cam.mount}}
    return example, extras


# ------------------------------------------------------------------------------------------ public API
def render_frame(seed, height: int, width: int, return_instances: bool = False):
    """One random frame as a schema example (see data/schema.py); the same seed gives the same bytes.

    `seed` is an int or a np.random.SeedSequence. With return_instances=True returns (example, extras);
    see `rasterise` for the extras."""
    if height < 16 or width < 16:
        raise ValueError("synthetic frames need at least 16x16 pixels. "
                         f"Received: height={height}, width={width}")
    rng = np.random.default_rng(seed)
    with single_threaded_cv2():
        scene = sample_scene(rng, height, width)
        return rasterise(scene, rng, return_instances)


@contextlib.contextmanager
def single_threaded_cv2():
    """OpenCV's thread pool costs more than it saves on these small images (measured: ~25 % slower)."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def frame_loaders(split: str, count: int, height: int, width: int, seed: int) -> list[tuple[str, functools.partial]]:
    """(key, loader) for `count` frames, keys "synthetic-<split>-000123"; a loader renders its frame when
    called. Loaders are picklable, so worker processes can render them (data/parallel.py).

    Frame i of a split comes from SeedSequence([seed, split id, i]), so splits never share a scene and
    any frame can be re-rendered alone, in any process and in any order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}. Received: split={split!r}")
    return [(f"synthetic-{split}-{index:06d}",
             functools.partial(render_frame, np.random.SeedSequence([seed, SPLITS[split], index]), height, width))
            for index in range(count)]


def generate(split: str, count: int, height: int, width: int, seed: int) -> Iterator[tuple[str, dict]]:
    """Yields (key, example) for `count` frames (frame_loaders' frames, rendered here in order)."""
    for key, load in frame_loaders(split, count, height, width, seed):
        yield key, load()
