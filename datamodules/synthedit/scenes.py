"""Random scenes, the seven edit categories, their instructions and the captions.

Every function draws from the numpy ``Generator`` it is given, so a sample is a pure function
of its seed. Objects in a scene have distinct colours, so "the red circle" names exactly one
object. Which colour-shape combinations may appear is a split's :class:`ComboRule`: train /
val / test never use :data:`HELDOUT_COMBOS`; the held-out split prefers edits that create one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from datamodules.synthedit.world import (
    BACKGROUND_COLORS,
    BACKGROUND_KINDS,
    COLORS,
    DIRECTIONS,
    SHAPES,
    SIZES,
    STYLES,
    travel_bounds,
)

LOCAL_CATEGORIES: tuple[str, ...] = ("recolor", "replace", "remove", "add")
CATEGORIES: tuple[str, ...] = (*LOCAL_CATEGORIES, "background", "style", "hybrid")

HELDOUT_COMBOS: frozenset[tuple[str, str]] = frozenset(
    {
        ("red", "star"),
        ("red", "square"),
        ("orange", "cross"),
        ("yellow", "circle"),
        ("green", "ring"),
        ("cyan", "square"),
        ("blue", "triangle"),
        ("blue", "ring"),
        ("purple", "star"),
        ("pink", "circle"),
    }
)
"""Colour-shape combinations (10 of 48, about 20 %) that only the ``heldout`` split shows.

Every colour and every shape is in at least one held-out and several seen combinations, so the
held-out split tests composition of known words, not new words.
"""

BACKGROUND_LAYER = "background"
MAX_OBJECTS = 3

RECOLOR_TEMPLATES = (
    "Make the {color} {shape} {new}.",
    "Change the color of the {color} {shape} to {new}.",
    "Recolor the {color} {shape} {new}.",
    "Turn the {color} {shape} {new}.",
)
REPLACE_TEMPLATES = (
    "Replace the {color} {shape} with a {color} {new}.",
    "Turn the {color} {shape} into a {new}.",
    "Swap the {color} {shape} for a {color} {new}.",
    "Change the {color} {shape} into a {new} of the same color.",
)
REMOVE_TEMPLATES = (
    "Remove the {color} {shape}.",
    "Delete the {color} {shape}.",
    "Erase the {color} {shape} from the video.",
    "Get rid of the {color} {shape}.",
)
ADD_TEMPLATES = (
    "Add a {size} {color} {shape} {where}.",
    "Put a {size} {color} {shape} {where}.",
    "Insert a {size} {color} {shape} {where}.",
)
BACKGROUND_TEMPLATES = (
    "Change the background to {background}.",
    "Replace the background with {background}.",
    "Make the background {background}.",
)
STYLE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "grayscale": (
        "Convert the video to grayscale.",
        "Make the video black and white.",
        "Remove all color from the video.",
    ),
    "invert": (
        "Invert the colors.",
        "Make the video look like a photographic negative.",
        "Invert every color in the video.",
    ),
    "sepia": (
        "Give the video a sepia tone.",
        "Make it look like an old sepia photograph.",
        "Apply a sepia filter.",
    ),
    "posterize": (
        "Posterize the video.",
        "Reduce the video to a few flat color levels.",
        "Apply a posterize effect.",
    ),
}
HYBRID_TEMPLATES = ("{first}, and {second}.", "{first}, then {second}.", "{first}. Also, {second}.")
STYLE_CAPTIONS = {
    "grayscale": ", in black and white",
    "invert": ", with inverted colors",
    "sepia": ", in sepia tones",
    "posterize": ", posterized",
}
# Where an added object goes: a fixed spot (centre, as frame fractions) ...
ADD_POSITIONS: dict[str, tuple[float, float]] = {
    "in the top-left corner": (0.2, 0.2),
    "in the top-right corner": (0.8, 0.2),
    "in the bottom-left corner": (0.2, 0.8),
    "in the bottom-right corner": (0.8, 0.8),
    "in the center": (0.5, 0.5),
}
# ... or a direction it moves in for the whole clip, without reaching the far edge.
ADD_MOTIONS: dict[str, tuple[int, int]] = {
    "moving to the right": (1, 0),
    "moving to the left": (-1, 0),
    "moving up": (0, -1),
    "moving down": (0, 1),
}
# Compass headings, counter-clockwise from "right" in 45 degree steps (image y points down).
_HEADINGS = (
    "right",
    "up and to the right",
    "up",
    "up and to the left",
    "left",
    "down and to the left",
    "down",
    "down and to the right",
)
# Below this much travel over the clip (fraction of the frame) an object "stands still".
_STILL = 0.05


def is_heldout(color: str, shape: str) -> bool:
    """Whether ``color`` ``shape`` is one of :data:`HELDOUT_COMBOS`."""
    return (color, shape) in HELDOUT_COMBOS


def scene_combos(scene: dict) -> set[tuple[str, str]]:
    """The ``(color, shape)`` combinations of a scene's objects."""
    return {(obj["color"], obj["shape"]) for obj in scene["objects"]}


def heldout_combos_in(*scenes: dict) -> set[tuple[str, str]]:
    """The held-out combinations that occur in any of ``scenes`` (scene dicts)."""
    return set().union(*(scene_combos(scene) for scene in scenes)) & HELDOUT_COMBOS


@dataclass(frozen=True)
class ComboRule:
    """Which colour-shape combinations a split may use, and which it prefers for edits.

    ``heldout=False`` (train / val / test): held-out combinations are forbidden everywhere.
    ``heldout=True``: anything goes, but edits choose a result that is held out when they can.
    """

    heldout: bool

    def allowed(self, color: str, shape: str) -> bool:
        return self.heldout or not is_heldout(color, shape)

    def choose(self, rng: np.random.Generator, options: list, combo: Callable[[Any], tuple]):
        """One of ``options`` at random, among those whose ``combo(option)`` is held out if the
        rule prefers held-out combinations and any option offers one."""
        if self.heldout:
            preferred = [option for option in options if is_heldout(*combo(option))]
            options = preferred or options
        return options[int(rng.integers(len(options)))]


def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


# ---------------------------------------------------------------------------------------------
# scenes


def sample_object(rng: np.random.Generator, uid: int, color: str, shape: str, frames: int) -> dict:
    """A ``color`` ``shape`` of random size, start, straight-line velocity, spin and pulse.

    Speeds are drawn as travel per clip, so short and long clips move about as much.
    """
    steps = max(frames - 1, 1)
    travel = rng.uniform(0.3, 1.0) if rng.random() >= 0.15 else 0.0
    heading = rng.uniform(0.0, 2.0 * np.pi)
    obj = {
        "uid": uid,
        "shape": shape,
        "color": color,
        "size": _pick(rng, tuple(SIZES)),
        "position": [0.5, 0.5],
        "velocity": [travel * np.cos(heading) / steps, -travel * np.sin(heading) / steps],
        "angle": float(rng.uniform(0.0, 2.0 * np.pi)),
        "spin": float(rng.uniform(-1.5, 1.5) / steps) if rng.random() < 0.4 else 0.0,
        "pulse": 0.15 if rng.random() < 0.25 else 0.0,
        "pulse_period": float(max(frames, 2) / rng.choice([1.0, 2.0])),
        "pulse_phase": float(rng.uniform(0.0, 2.0 * np.pi)),
    }
    # Bounds of a square frame: exact there, conservative for others (which bounce anyway).
    (x_low, x_high), (y_low, y_high) = travel_bounds(obj, (1, 1))
    obj["position"] = [float(rng.uniform(x_low, x_high)), float(rng.uniform(y_low, y_high))]
    obj["velocity"] = [float(value) for value in obj["velocity"]]
    return obj


def sample_background(rng: np.random.Generator) -> dict:
    """A random solid, gradient, stripes or checker background in named colours."""
    kind = _pick(rng, BACKGROUND_KINDS)
    names = list(BACKGROUND_COLORS)
    first, second = (int(i) for i in rng.choice(len(names), size=2, replace=False))
    background: dict = {"kind": kind, "colors": [names[first]]}
    if kind != "solid":
        background["colors"].append(names[second])
    if kind in ("gradient", "stripes"):
        background["direction"] = _pick(rng, DIRECTIONS)
    if kind in ("stripes", "checker"):
        background["period"] = float(_pick(rng, (0.25, 0.34, 0.5)))
    return background


def sample_scene(
    rng: np.random.Generator, rule: ComboRule, frames: int, count: int, heldout_object: bool
) -> dict:
    """A background and ``count`` objects of distinct colours and ``rule``-allowed combinations.

    ``heldout_object``: make one of the objects (at a random depth) a held-out combination.
    """
    objects = []
    forced = int(rng.integers(count)) if heldout_object else -1
    for uid in range(count):
        used = {obj["color"] for obj in objects}
        combos = [
            (color, shape)
            for color in COLORS
            for shape in SHAPES
            if color not in used
            and rule.allowed(color, shape)
            and (uid != forced or is_heldout(color, shape))
        ]
        color, shape = _pick(rng, combos)
        objects.append(sample_object(rng, uid, color, shape, frames))
    return {"background": sample_background(rng), "objects": objects, "style": None}


# ---------------------------------------------------------------------------------------------
# language


def background_phrase(background: dict) -> str:
    """A noun phrase for a background: "plain white", "a vertical gradient from navy to
    beige", "diagonal black and gray stripes", "a white and brown checkerboard"."""
    colors = background["colors"]
    if background["kind"] == "solid":
        return f"plain {colors[0]}"
    if background["kind"] == "gradient":
        return f"a {background['direction']} gradient from {colors[0]} to {colors[1]}"
    if background["kind"] == "stripes":
        return f"{background['direction']} {colors[0]} and {colors[1]} stripes"
    return f"a {colors[0]} and {colors[1]} checkerboard"


def motion_phrase(obj: dict, frames: int) -> str:
    """How an object moves over the clip, e.g. "moving up and to the left while spinning"."""
    steps = max(frames - 1, 1)
    vx, vy = obj["velocity"]
    extras = " and ".join(
        word for word, on in (("spinning", obj["spin"]), ("pulsing", obj["pulse"])) if on
    )
    if np.hypot(vx, vy) * steps < _STILL:
        return extras
    heading = np.arctan2(-vy, vx) % (2.0 * np.pi)
    moving = "moving " + _HEADINGS[int(np.round(heading / (np.pi / 4.0))) % 8]
    return f"{moving} while {extras}" if extras else moving


def object_phrase(obj: dict, frames: int) -> str:
    words = f"a {obj['size']} {obj['color']} {obj['shape']}"
    motion = motion_phrase(obj, frames)
    return f"{words} {motion}" if motion else words


def caption(scene: dict, frames: int) -> str:
    """One sentence describing a scene, objects front to back, then the background and style."""
    objects = [object_phrase(obj, frames) for obj in reversed(scene["objects"])]
    background = background_phrase(scene["background"])
    if not objects:
        text = f"An empty background of {background}"
    else:
        listed = (
            objects[0] if len(objects) == 1 else ", ".join(objects[:-1]) + " and " + objects[-1]
        )
        text = f"{listed[0].upper()}{listed[1:]} on a background of {background}"
    return text + STYLE_CAPTIONS.get(scene.get("style") or "", "") + "."


# ---------------------------------------------------------------------------------------------
# edits: each returns None when the scene offers nothing to apply it to


@dataclass
class Edit:
    """An applied edit.

    ``scene``: the edited scene. ``instruction``: one sentence. ``layers``: the object uids
    (and :data:`BACKGROUND_LAYER`) whose pixels may change; ``global_change``: every pixel may
    change (a style). ``subjects``: the combinations the edit is about (created, removed, or
    for background / style edits every object's), used for the held-out rule. ``records``:
    JSON-friendly descriptions, one per elementary edit.
    """

    scene: dict
    instruction: str
    layers: set = field(default_factory=set)
    global_change: bool = False
    subjects: set = field(default_factory=set)
    records: list = field(default_factory=list)


@dataclass
class EditContext:
    """What the edit samplers share: the stream, the split's rule, the clip length, and the
    object uids an earlier part of a hybrid edit already touched (``locked``)."""

    rng: np.random.Generator
    rule: ComboRule
    frames: int
    locked: set = field(default_factory=set)


def _editable(scene: dict, context: EditContext) -> list[dict]:
    return [obj for obj in scene["objects"] if obj["uid"] not in context.locked]


def _with_object(scene: dict, uid: int, **changes: Any) -> dict:
    edited = copy.deepcopy(scene)
    for obj in edited["objects"]:
        if obj["uid"] == uid:
            obj.update(changes)
    return edited


def recolor(scene: dict, context: EditContext) -> Edit | None:
    """Give one object a colour no object in the scene has (same shape, size and motion)."""
    used = {obj["color"] for obj in scene["objects"]}
    options = [
        (obj, color)
        for obj in _editable(scene, context)
        for color in COLORS
        if color not in used and context.rule.allowed(color, obj["shape"])
    ]
    if not options:
        return None
    obj, color = context.rule.choose(context.rng, options, lambda o: (o[1], o[0]["shape"]))
    text = _pick(context.rng, RECOLOR_TEMPLATES).format(
        color=obj["color"], shape=obj["shape"], new=color
    )
    record = {"category": "recolor", "uid": obj["uid"], "shape": obj["shape"]}
    record.update({"from": obj["color"], "to": color})
    return Edit(
        scene=_with_object(scene, obj["uid"], color=color),
        instruction=text,
        layers={obj["uid"]},
        subjects={(color, obj["shape"])},
        records=[record],
    )


def replace_shape(scene: dict, context: EditContext) -> Edit | None:
    """Swap one object's shape (same colour, size and motion)."""
    options = [
        (obj, shape)
        for obj in _editable(scene, context)
        for shape in SHAPES
        if shape != obj["shape"] and context.rule.allowed(obj["color"], shape)
    ]
    if not options:
        return None
    obj, shape = context.rule.choose(context.rng, options, lambda o: (o[0]["color"], o[1]))
    text = _pick(context.rng, REPLACE_TEMPLATES).format(
        color=obj["color"], shape=obj["shape"], new=shape
    )
    record = {"category": "replace", "uid": obj["uid"], "color": obj["color"]}
    record.update({"from": obj["shape"], "to": shape})
    return Edit(
        scene=_with_object(scene, obj["uid"], shape=shape),
        instruction=text,
        layers={obj["uid"]},
        subjects={(obj["color"], shape)},
        records=[record],
    )


def remove(scene: dict, context: EditContext) -> Edit | None:
    """Remove one object."""
    options = _editable(scene, context)
    if not options:
        return None
    obj = context.rule.choose(context.rng, options, lambda o: (o["color"], o["shape"]))
    text = _pick(context.rng, REMOVE_TEMPLATES).format(color=obj["color"], shape=obj["shape"])
    edited = copy.deepcopy(scene)
    edited["objects"] = [other for other in edited["objects"] if other["uid"] != obj["uid"]]
    record = {"category": "remove", "uid": obj["uid"], "color": obj["color"]}
    record["shape"] = obj["shape"]
    return Edit(
        scene=edited,
        instruction=text,
        layers={obj["uid"]},
        subjects={(obj["color"], obj["shape"])},
        records=[record],
    )


def _place(obj: dict, where: str, context: EditContext) -> None:
    """Put ``obj`` at the spot, or give it the straight motion, that ``where`` describes."""
    rng = context.rng
    (x_low, x_high), (y_low, y_high) = travel_bounds(obj, (1, 1))
    obj["spin"], obj["pulse"] = 0.0, 0.0
    if where in ADD_POSITIONS:
        x, y = ADD_POSITIONS[where]
        obj["position"] = [min(max(x, x_low), x_high), min(max(y, y_low), y_high)]
        obj["velocity"] = [0.0, 0.0]
        return
    dx, dy = ADD_MOTIONS[where]
    steps = max(context.frames - 1, 1)
    start = float(rng.uniform(0.0, 0.2))  # of the free span, measured from the trailing edge
    share = float(rng.uniform(0.6, 0.95))  # of the remaining span travelled during the clip
    across = float(rng.uniform(0.0, 1.0))
    low, high = (x_low, x_high) if dx else (y_low, y_high)
    along = low + (high - low) * (start if dx + dy > 0 else 1.0 - start)
    speed = (dx + dy) * (high - low) * (1.0 - start) * share / steps
    if dx:
        obj["position"] = [along, y_low + (y_high - y_low) * across]
        obj["velocity"] = [speed, 0.0]
    else:
        obj["position"] = [x_low + (x_high - x_low) * across, along]
        obj["velocity"] = [0.0, speed]


def add(scene: dict, context: EditContext) -> Edit | None:
    """Add a new object in front of the others, at a described spot or with a described motion."""
    used = {obj["color"] for obj in scene["objects"]}
    combos = [
        (color, shape)
        for color in COLORS
        for shape in SHAPES
        if color not in used and context.rule.allowed(color, shape)
    ]
    if not combos:
        return None
    color, shape = context.rule.choose(context.rng, combos, lambda combo: combo)
    # A fresh uid, also unlike any object an earlier part of a hybrid removed.
    taken = [obj["uid"] for obj in scene["objects"]]
    taken += [layer for layer in context.locked if isinstance(layer, int)]
    uid = 1 + max(taken, default=-1)
    obj = sample_object(context.rng, uid, color, shape, context.frames)
    where = _pick(context.rng, (*ADD_POSITIONS, *ADD_MOTIONS))
    _place(obj, where, context)
    text = _pick(context.rng, ADD_TEMPLATES).format(
        size=obj["size"], color=color, shape=shape, where=where
    )
    edited = copy.deepcopy(scene)
    edited["objects"].append(obj)
    record = {"category": "add", "uid": uid, "color": color, "shape": shape}
    record.update({"size": obj["size"], "where": where})
    return Edit(
        scene=edited,
        instruction=text,
        layers={uid},
        subjects={(color, shape)},
        records=[record],
    )


def change_background(scene: dict, context: EditContext) -> Edit:
    """Replace the background by a different one, described in words."""
    old = background_phrase(scene["background"])
    new = sample_background(context.rng)
    while background_phrase(new) == old:
        new = sample_background(context.rng)
    text = _pick(context.rng, BACKGROUND_TEMPLATES).format(background=background_phrase(new))
    edited = copy.deepcopy(scene)
    edited["background"] = new
    return Edit(
        scene=edited,
        instruction=text,
        layers={BACKGROUND_LAYER},
        subjects=scene_combos(scene),
        records=[{"category": "background", "to": new}],
    )


def restyle(scene: dict, context: EditContext) -> Edit:
    """A global look over the whole video (the scene's content is unchanged)."""
    style = _pick(context.rng, STYLES)
    edited = copy.deepcopy(scene)
    edited["style"] = style
    return Edit(
        scene=edited,
        instruction=_pick(context.rng, STYLE_TEMPLATES[style]),
        global_change=True,
        subjects=scene_combos(scene),
        records=[{"category": "style", "style": style}],
    )


_ELEMENTARY: dict[str, Callable[[dict, EditContext], Edit | None]] = {
    "recolor": recolor,
    "replace": replace_shape,
    "remove": remove,
    "add": add,
    "background": change_background,
}


def _lower_first(text: str) -> str:
    return text[0].lower() + text[1:]


def hybrid(scene: dict, context: EditContext) -> Edit | None:
    """Two edits of different categories (local or background), on different objects."""
    first_name, second_name = (
        list(_ELEMENTARY)[int(i)] for i in context.rng.choice(len(_ELEMENTARY), 2, replace=False)
    )
    first = _ELEMENTARY[first_name](scene, context)
    if first is None:
        return None
    context.locked |= first.layers
    second = _ELEMENTARY[second_name](first.scene, context)
    if second is None:
        return None
    text = _pick(context.rng, HYBRID_TEMPLATES).format(
        first=first.instruction.rstrip("."), second=_lower_first(second.instruction.rstrip("."))
    )
    return Edit(
        scene=second.scene,
        instruction=text,
        layers=first.layers | second.layers,
        subjects=first.subjects | second.subjects,
        records=first.records + second.records,
    )


def sample_edit(category: str, scene: dict, context: EditContext) -> Edit | None:
    """An edit of ``category`` (one of :data:`CATEGORIES`) on ``scene``, or None if impossible."""
    if category == "style":
        return restyle(scene, context)
    if category == "hybrid":
        return hybrid(scene, context)
    return _ELEMENTARY[category](scene, context)
