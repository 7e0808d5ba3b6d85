"""The synthetic world's vocabularies: object categories, stuff, agents and predicates.

A category is a *recipe* (one or more primitive parts with sizes, a colour and a
texture) so that every category is recognisable from its look at 64x64 pixels:
shape x size x colour x texture. Parts are placed relative to the object's
bottom centre; boxes turn with the object's yaw, round parts are vertical.

Units are metres; the world has ``z`` up and the floor at ``z = 0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SHAPES = ("box", "sphere", "cylinder", "capsule")
TEXTURES = ("solid", "stripes", "checker")

# Groups say where a category may be placed and how the script may use it.
#   small:     table-top, graspable by a hand (hoi) -- too small to see in the gta view
#   carryable: big enough to see in a room view, a person can pick it up or push it
#   furniture: supports (tables), seats (chair, sofa, stool), platforms (rug, step)
GROUPS = ("small", "carryable", "furniture", "agent", "stuff")


@dataclass(frozen=True, kw_only=True)
class Part:
    """One primitive of a category. ``dims``: box (sx, sy, sz) full sizes; sphere (r,);
    cylinder/capsule (r, h) with h the full height. ``offset``: the part's centre
    relative to the object's bottom centre (x, y, z) in the object's frame."""

    shape: str
    dims: tuple[float, ...]
    offset: tuple[float, float, float]
    shade: float = 1.0  # multiplies the object's colour (a chair's back a little darker, ...)


@dataclass(frozen=True, kw_only=True)
class Category:
    name: str
    parts: tuple[Part, ...]
    color: tuple[float, float, float]
    texture: str = "solid"
    color2: tuple[float, float, float] = (0.95, 0.95, 0.95)
    group: str = "small"
    is_thing: bool = True
    seat_height: float | None = None  # top of the seat, for sittable furniture

    @property
    def height(self) -> float:
        return max(_part_top(p) for p in self.parts)

    @property
    def footprint(self) -> tuple[float, float]:
        """Half extents (x, y) of the object's footprint at yaw 0."""
        hx = max(abs(p.offset[0]) + _part_half_xy(p)[0] for p in self.parts)
        hy = max(abs(p.offset[1]) + _part_half_xy(p)[1] for p in self.parts)
        return hx, hy


def _part_top(p: Part) -> float:
    if p.shape == "box":
        return p.offset[2] + p.dims[2] / 2
    if p.shape == "sphere":
        return p.offset[2] + p.dims[0]
    return p.offset[2] + p.dims[1] / 2


def _part_half_xy(p: Part) -> tuple[float, float]:
    if p.shape == "box":
        return p.dims[0] / 2, p.dims[1] / 2
    return p.dims[0], p.dims[0]


def _single(shape: str, dims: tuple[float, ...]) -> tuple[Part, ...]:
    """A one-part category resting on its bottom."""
    if shape == "box":
        z = dims[2] / 2
    elif shape == "sphere":
        z = dims[0]
    else:
        z = dims[1] / 2
    return (Part(shape=shape, dims=dims, offset=(0.0, 0.0, z)),)


# Colours (linear-ish RGB in [0, 1]).
RED = (0.80, 0.12, 0.10)
ORANGE = (0.95, 0.50, 0.08)
YELLOW = (0.95, 0.85, 0.15)
GREEN = (0.15, 0.65, 0.20)
LIME = (0.55, 0.85, 0.20)
TEAL = (0.10, 0.60, 0.60)
BLUE = (0.12, 0.25, 0.85)
NAVY = (0.08, 0.10, 0.40)
PURPLE = (0.50, 0.15, 0.70)
PINK = (0.95, 0.55, 0.70)
BROWN = (0.50, 0.30, 0.12)
TAN = (0.78, 0.62, 0.40)
WHITE = (0.92, 0.92, 0.90)
GRAY = (0.50, 0.50, 0.52)
DARK = (0.15, 0.15, 0.17)
BLACK = (0.05, 0.05, 0.06)
SKIN_TONE = (0.85, 0.62, 0.50)


def _cat(name, shape, dims, color, texture="solid", color2=WHITE, group="small") -> Category:
    """One table row: a one-part category (positional, to keep the table compact)."""
    return Category(name=name, parts=_single(shape, dims), color=color, texture=texture, color2=color2, group=group)


# Explicit table of object categories (name -> recipe). Each row differs from every
# other row of its group in at least one of shape, size class, colour or texture.
THING_CATEGORIES: tuple[Category, ...] = (
    # small, table-top (hoi); cylinders
    _cat("mug", "cylinder", (0.045, 0.09), WHITE),
    _cat("can", "cylinder", (0.033, 0.12), RED, "stripes", WHITE),
    _cat("bottle", "cylinder", (0.032, 0.25), GREEN),
    _cat("thermos", "cylinder", (0.040, 0.25), GRAY, "stripes", BLACK),
    _cat("jar", "cylinder", (0.060, 0.12), ORANGE, "checker", WHITE),
    _cat("paint can", "cylinder", (0.075, 0.10), YELLOW, "stripes", BLUE),
    # small; boxes
    _cat("book", "box", (0.16, 0.22, 0.04), BLUE),
    _cat("phone", "box", (0.07, 0.14, 0.015), BLACK),
    _cat("laptop", "box", (0.30, 0.22, 0.03), GRAY, "checker", DARK),
    _cat("stapler", "box", (0.05, 0.16, 0.05), RED),
    _cat("toy car", "box", (0.13, 0.07, 0.06), YELLOW, "checker", BLACK),
    _cat("cereal box", "box", (0.07, 0.19, 0.26), ORANGE, "stripes", WHITE),
    _cat("tissue box", "box", (0.22, 0.12, 0.10), TEAL, "checker", WHITE),
    # small; spheres and capsules
    _cat("apple", "sphere", (0.040,), RED),
    _cat("lime", "sphere", (0.033,), LIME),
    _cat("ball", "sphere", (0.060,), ORANGE, "stripes", BLACK),
    _cat("globe", "sphere", (0.090,), BLUE, "checker", GREEN),
    _cat("spray bottle", "capsule", (0.035, 0.20), PURPLE),
    _cat("bowling pin", "capsule", (0.045, 0.26), WHITE, "stripes", RED),
    # carryable (gta: seen in a room; a person picks them up or pushes them)
    _cat("cardboard box", "box", (0.40, 0.35, 0.30), TAN, group="carryable"),
    _cat("parcel", "box", (0.45, 0.30, 0.22), BROWN, "stripes", TAN, group="carryable"),
    _cat("crate", "box", (0.55, 0.50, 0.40), BROWN, "checker", TAN, group="carryable"),
    _cat("suitcase", "box", (0.45, 0.22, 0.60), PURPLE, "stripes", DARK, group="carryable"),
    _cat("pillow", "box", (0.50, 0.35, 0.14), PINK, group="carryable"),
    _cat("bucket", "cylinder", (0.16, 0.32), BLUE, "stripes", WHITE, group="carryable"),
    _cat("trash bin", "cylinder", (0.20, 0.55), DARK, "checker", GRAY, group="carryable"),
    _cat("beach ball", "sphere", (0.22,), RED, "stripes", WHITE, group="carryable"),
    _cat("basketball", "sphere", (0.15,), ORANGE, "checker", BLACK, group="carryable"),
    _cat("bowling ball", "sphere", (0.14,), BLACK, group="carryable"),
    _cat("lava lamp", "capsule", (0.10, 0.55), PINK, "stripes", PURPLE, group="carryable"),
    # furniture (tables and seats are two boxes: top + body, seat + back)
    Category(
        name="table",
        parts=(
            Part(shape="box", dims=(1.20, 0.75, 0.08), offset=(0.0, 0.0, 0.71)),
            Part(shape="box", dims=(1.0, 0.55, 0.67), offset=(0.0, 0.0, 0.335), shade=0.7),
        ),
        color=TAN, texture="stripes", color2=BROWN, group="furniture",
    ),
    Category(
        name="chair",
        parts=(
            Part(shape="box", dims=(0.48, 0.48, 0.45), offset=(0.0, 0.0, 0.225)),
            Part(shape="box", dims=(0.48, 0.08, 0.50), offset=(0.0, 0.20, 0.70), shade=0.8),
        ),
        color=RED, group="furniture", seat_height=0.45,
    ),
    Category(
        name="sofa",
        parts=(
            Part(shape="box", dims=(1.40, 0.70, 0.42), offset=(0.0, 0.0, 0.21)),
            Part(shape="box", dims=(1.40, 0.18, 0.45), offset=(0.0, 0.26, 0.645), shade=0.8),
        ),
        color=GREEN, texture="checker", color2=DARK, group="furniture", seat_height=0.42,
    ),
    Category(name="stool", parts=_single("cylinder", (0.20, 0.50)), color=NAVY, texture="stripes", color2=GRAY,
             group="furniture", seat_height=0.50),
    Category(name="rug", parts=_single("box", (1.40, 1.00, 0.02)), color=RED, texture="checker", color2=YELLOW,
             group="furniture"),
    Category(name="step", parts=_single("box", (0.90, 0.70, 0.16)), color=GRAY, texture="stripes", color2=WHITE,
             group="furniture"),
    # agents (drawn from their own primitives; the recipe is only their look)
    Category(name="hand", parts=(), color=SKIN_TONE, group="agent"),
    Category(name="person", parts=(), color=SKIN_TONE, group="agent"),
)  # fmt: skip

STUFF_CATEGORIES: tuple[Category, ...] = (
    Category(name="floor", parts=(), color=(0.55, 0.55, 0.50), texture="checker", color2=(0.40, 0.40, 0.38),
             group="stuff", is_thing=False),
    Category(name="wall", parts=(), color=(0.80, 0.78, 0.72), group="stuff", is_thing=False),
)  # fmt: skip

CATEGORIES: dict[str, Category] = {c.name: c for c in THING_CATEGORIES + STUFF_CATEGORIES}

# Seen in the 2D image set and in the 4D *test* split, never in 4D train/val:
# the out-of-vocabulary test of the 2D-to-4D transfer.
HELD_OUT_CATEGORIES: dict[str, tuple[str, ...]] = {
    "hoi": ("thermos", "lime", "toy car", "bowling pin"),
    "gta": ("lava lamp", "bowling ball", "parcel"),
}

# Novel categories: never in 4D train/val nor in the 2D images, only in the 4D test split (the
# zero-shot test, apart from the held-out ones that the 2D images show). None by default: a
# dataset holds some out only when asked (``SynthConfig.novel``; ``psg4d synth --novel default``
# takes these). Every word of their descriptions (:mod:`psg4d.data.synth.describe`) occurs in the
# description of a category 4D training keeps.
NOVEL_CATEGORIES: dict[str, tuple[str, ...]] = {
    "hoi": ("apple", "phone", "jar"),
    "gta": ("beach ball", "cardboard box"),
}

PREDICATES: tuple[str, ...] = (
    "on",
    "next to",
    "in front of",
    "behind",
    "standing on",
    "sitting on",
    "holding",
    "reaching toward",
    "picking up",
    "putting down",
    "carrying",
    "pushing",
    "pulling",
    "walking toward",
    "talking to",
)

# Predicates that can be seen in one still frame (the 2D image set keeps only these).
STATIC_PREDICATES: frozenset[str] = frozenset(
    {"on", "next to", "in front of", "behind", "standing on", "sitting on", "holding", "talking to"}
)

# What each predicate becomes when a clip is played backwards, read off the rules that label
# the world (psg4d.data.synth.relations). Support, position and holding look the same either
# way; carrying is still carrying; the vertical and the pushing motions swap. None: the world
# has no word for the reversed motion (a hand drawing back, walking backwards), so the
# relation does not hold in the reversed clip. Not exact: a hand drawing back after putting
# something down is unlabelled, and played backwards it is a reach the reversed graph lacks.
TIME_REVERSED_PREDICATES: dict[str, str | None] = {
    "on": "on",
    "next to": "next to",
    "in front of": "in front of",
    "behind": "behind",
    "standing on": "standing on",
    "sitting on": "sitting on",
    "holding": "holding",
    "reaching toward": None,
    "picking up": "putting down",
    "putting down": "picking up",
    "carrying": "carrying",
    "pushing": "pulling",
    "pulling": "pushing",
    "walking toward": None,
    "talking to": "talking to",
}

PRESET_PREDICATES: dict[str, tuple[str, ...]] = {
    "hoi": (
        "on", "next to", "in front of", "behind", "holding", "reaching toward",
        "picking up", "putting down", "carrying", "pushing", "pulling",
    ),
    "gta": PREDICATES,
}  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Vocabulary:
    """A preset's category lists (the 2D set's is wider than 4D train's)."""

    all_categories: tuple[str, ...]  # every category a preset can show (4D test)
    train_categories: tuple[str, ...]  # 4D train/val: neither held out nor novel
    held_out: tuple[str, ...]  # seen in the 2D images and 4D test only
    predicates: tuple[str, ...]
    thing_classes: tuple[str, ...] = field(default=())
    stuff_classes: tuple[str, ...] = field(default=())
    novel: tuple[str, ...] = field(default=())  # seen in 4D test only

    @property
    def image_thing_classes(self) -> tuple[str, ...]:
        """The 2D image set's thing classes: the novel categories are not among them."""
        return tuple(c for c in self.thing_classes if c not in self.novel)


PRESET_GROUPS: dict[str, tuple[str, ...]] = {
    "hoi": ("small",),
    "gta": ("carryable",),
}
PRESET_FURNITURE: dict[str, tuple[str, ...]] = {
    "hoi": ("table",),
    "gta": ("table", "chair", "sofa", "stool", "rug", "step"),
}
PRESET_AGENT: dict[str, str] = {"hoi": "hand", "gta": "person"}


def preset_vocabulary(preset: str, novel: tuple[str, ...] = ()) -> Vocabulary:
    """A preset's vocabularies with ``novel`` (see :func:`check_novel`) held out of 4D training and 2D."""
    objects = tuple(c.name for c in THING_CATEGORIES if c.group in PRESET_GROUPS[preset])
    things = objects + PRESET_FURNITURE[preset] + (PRESET_AGENT[preset],)
    stuff = tuple(c.name for c in STUFF_CATEGORIES)
    held = HELD_OUT_CATEGORIES[preset]
    novel = tuple(novel)
    return Vocabulary(
        all_categories=things + stuff,
        train_categories=tuple(c for c in things + stuff if c not in held and c not in novel),
        held_out=held,
        predicates=PRESET_PREDICATES[preset],
        thing_classes=things,
        stuff_classes=stuff,
        novel=novel,
    )


def graspable(preset: str, held_out_ok: bool, novel: tuple[str, ...] = ()) -> list[Category]:
    """The movable object categories a preset's videos draw from (never the ``novel`` ones)."""
    held = set(HELD_OUT_CATEGORIES[preset])
    return [
        c for c in THING_CATEGORIES
        if c.group in PRESET_GROUPS[preset] and (held_out_ok or c.name not in held) and c.name not in novel
    ]  # fmt: skip


def check_novel(preset: str, names: tuple[str, ...] | list[str], *, min_train: int) -> str | None:
    """What is wrong with ``names`` as a preset's novel categories (None: nothing): each must be one
    of the preset's movable object categories (not furniture, an agent or stuff) and not held out,
    and at least ``min_train`` movable categories must stay for 4D training."""
    movable = [c.name for c in THING_CATEGORIES if c.group in PRESET_GROUPS[preset]]
    held = HELD_OUT_CATEGORIES[preset]
    for n in names:
        if n in held:
            return f"novel category {n!r} is held out in {preset} (seen in the 2D images); held out: {', '.join(held)}"
        if n not in movable:
            group = CATEGORIES[n].group if n in CATEGORIES else None
            what = {None: "is unknown", "furniture": "is furniture", "agent": "is an agent", "stuff": "is stuff"}.get(
                group, f"is not a {preset} category"
            )
            choices = ", ".join(c for c in movable if c not in held)
            return f"novel category {n!r} {what}; choose among the {preset} preset's objects: {choices}"
    if len(set(names)) != len(names):
        return f"novel categories repeat a name: {', '.join(names)}"
    left = [c for c in movable if c not in held and c not in names]
    if len(left) < min_train:
        return f"novel categories leave {len(left)} {preset} categories for 4D training, fewer than {min_train}"
    return None
