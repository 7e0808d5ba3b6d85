"""Short appearance descriptions of the synthetic world's categories, from the category table.

A description is ``[size] [colour] <shape> [with <colour2> stripes|checks]`` built from the
recipe in :data:`psg4d.data.synth.world.THING_CATEGORIES` (shape and dims of its parts, colour,
texture, second colour) with a small shared vocabulary, so that a model can learn the
attributes compositionally and recognise a category it never saw from a description made of
words it did see: ``mug`` -> "small white cylinder", ``bowling pin`` -> "tall white capsule
with red stripes". A description never names a category (no word of any category name occurs
in it: ``lime`` is "light green", a box is a "block").

Size words compare the object's bounding box (metres) with fixed thresholds, the same for
every preset:

* ``tall``: at least 20 cm high and at least 1.2 times its footprint's longer side;
* ``long``: a box whose longer footprint side is at least 2.5 times the shorter one;
* ``wide``: a cylinder lower than 0.8 times its diameter;
* ``flat``: a box whose height is below 0.45 times its footprint's shorter side
  (with ``small``/``large`` in front when those apply);
* otherwise ``small`` (longest side under 15 cm), ``large`` (35 cm or more) or nothing.
"""

from __future__ import annotations

from psg4d.data.synth import world
from psg4d.data.synth.world import CATEGORIES, Category

SIZE_WORDS: tuple[str, ...] = ("small", "large", "tall", "long", "wide", "flat")
# colour of the table (world.py constant) -> its words; "lime" is "light green", "navy" "dark blue"
COLOUR_NAMES: dict[tuple[float, float, float], str] = {
    world.RED: "red",
    world.ORANGE: "orange",
    world.YELLOW: "yellow",
    world.GREEN: "green",
    world.LIME: "light green",
    world.TEAL: "teal",
    world.BLUE: "blue",
    world.NAVY: "dark blue",
    world.PURPLE: "purple",
    world.PINK: "pink",
    world.BROWN: "brown",
    world.TAN: "tan",
    world.WHITE: "white",
    world.GRAY: "grey",
    world.DARK: "dark grey",
    world.BLACK: "black",
    world.SKIN_TONE: "skin-coloured",
}
COLOUR_WORDS: tuple[str, ...] = tuple(COLOUR_NAMES.values())
# one-part categories: the primitive's shape; a "box" primitive is a "block" ("box" names categories)
SHAPE_NAMES: dict[str, str] = {"box": "block", "sphere": "sphere", "cylinder": "cylinder", "capsule": "capsule"}
# several-part furniture: what the parts look like together
COMPOUND_SHAPES: dict[str, str] = {"table": "pedestal", "chair": "seat", "sofa": "seat"}
SHAPE_WORDS: tuple[str, ...] = (*SHAPE_NAMES.values(), "pedestal", "seat")
TEXTURE_WORDS: dict[str, str] = {"solid": "", "stripes": "stripes", "checker": "checks"}
# agents and stuff are drawn from their own primitives (their colours vary per scene)
FIXED_DESCRIPTIONS: dict[str, str] = {
    "hand": "skin-coloured palm on a sleeved forearm",
    "person": "clothed figure with a skin-coloured head",
    "floor": "ground with checks",
    "wall": "plain upright surface",
}

TALL_MIN_HEIGHT = 0.20
TALL_RATIO = 1.2
LONG_RATIO = 2.5
WIDE_RATIO = 0.8
FLAT_RATIO = 0.45
SMALL_BELOW = 0.15
LARGE_FROM = 0.35


def _extent(c: Category) -> tuple[float, float, float]:
    """Bounding box (x, y, z) of a category's parts at yaw 0, in metres."""
    hx, hy = c.footprint
    return 2 * hx, 2 * hy, c.height


def size_word(c: Category) -> str:
    """The size words of a category's description ("" when none applies); see the module doc."""
    sx, sy, sz = _extent(c)
    lo, hi = min(sx, sy), max(sx, sy)
    shape = c.parts[0].shape if len(c.parts) == 1 else "compound"
    if sz >= TALL_MIN_HEIGHT and sz >= TALL_RATIO * hi:
        return "tall"
    if shape == "box" and hi >= LONG_RATIO * lo and sz >= FLAT_RATIO * lo:
        return "long"
    if shape == "cylinder" and sz < WIDE_RATIO * hi:
        return "wide"
    longest = max(sx, sy, sz)
    absolute = "small" if longest < SMALL_BELOW else "large" if longest >= LARGE_FROM else ""
    if shape == "box" and sz < FLAT_RATIO * lo:
        return f"{absolute} flat".strip()
    return absolute


def describe_category(name: str) -> str:
    """The appearance description of a category of the world table (KeyError for an unknown name,
    or a colour or shape the attribute vocabulary has no word for)."""
    if name in FIXED_DESCRIPTIONS:
        return FIXED_DESCRIPTIONS[name]
    c = CATEGORIES[name]
    shape = COMPOUND_SHAPES[name] if len(c.parts) != 1 else SHAPE_NAMES[c.parts[0].shape]
    words = [size_word(c), COLOUR_NAMES[c.color], shape]
    texture = TEXTURE_WORDS[c.texture]
    if texture:
        words += ["with", COLOUR_NAMES[c.color2], texture]
    return " ".join(w for w in words if w)


def category_descriptions(names=None) -> dict[str, str]:
    """``{category: description}`` for ``names`` (default: every category of the world)."""
    return {n: describe_category(n) for n in (CATEGORIES if names is None else names)}


def attribute_words() -> list[str]:
    """Every word a synthetic description can hold (sorted, whitespace-split), for tokenizers."""
    phrases = [*SIZE_WORDS, *COLOUR_WORDS, *SHAPE_WORDS, *(t for t in TEXTURE_WORDS.values() if t), "with"]
    phrases += list(FIXED_DESCRIPTIONS.values())
    return sorted({w for p in phrases for w in p.split()})


# ----------------------------------------------------------------- attributes
#: the fields a description is made of, in the order it writes them
ATTRIBUTE_FIELDS: tuple[str, ...] = ("size", "colour", "shape", "pattern", "pattern colour")
_SIZE_PHRASES: tuple[str, ...] = ("", "small", "large", "tall", "long", "wide", "flat", "small flat", "large flat")


def attribute_values() -> dict[str, list[str]]:
    """Every value of each field ("" where a description may leave it out), for attribute heads."""
    return {"size": list(_SIZE_PHRASES), "colour": list(COLOUR_WORDS), "shape": list(SHAPE_WORDS),
            "pattern": ["", *(t for t in TEXTURE_WORDS.values() if t)], "pattern colour": ["", *COLOUR_WORDS]}


def _longest(words: list[str], options) -> str | None:
    """The longest option (of one or two words) ``words`` starts with."""
    for n in (2, 1):
        head = " ".join(words[:n])
        if len(words) >= n and head in options:
            return head
    return None


def description_fields(text: str) -> dict[str, str] | None:
    """The fields of a description :func:`describe_category` writes (None for one it cannot write,
    e.g. a hand's): ``"tall white capsule with red stripes"`` -> size ``tall``, colour ``white``,
    shape ``capsule``, pattern ``stripes``, pattern colour ``red``."""
    words = str(text).lower().split()
    values = attribute_values()
    size = _longest(words, [v for v in values["size"] if v]) or ""
    rest = words[len(size.split()):]
    colour = _longest(rest, values["colour"])
    if colour is None:
        return None
    rest = rest[len(colour.split()):]
    if not rest or rest[0] not in values["shape"]:
        return None
    shape, rest = rest[0], rest[1:]
    pattern = pattern_colour = ""
    if rest:
        if rest[0] != "with":
            return None
        pattern_colour = _longest(rest[1:], values["colour"]) or ""
        tail = rest[1 + len(pattern_colour.split()):]
        if not pattern_colour or len(tail) != 1 or tail[0] not in values["pattern"][1:]:
            return None
        pattern = tail[0]
    return {"size": size, "colour": colour, "shape": shape, "pattern": pattern, "pattern colour": pattern_colour}


def compose_description(fields: dict[str, str]) -> str:
    """The description of ``fields`` (:func:`description_fields`' inverse); a pattern is written
    only with both its colour and its kind."""
    words = [fields.get("size", ""), fields["colour"], fields["shape"]]
    if fields.get("pattern") and fields.get("pattern colour"):
        words += ["with", fields["pattern colour"], fields["pattern"]]
    return " ".join(w for w in words if w)
