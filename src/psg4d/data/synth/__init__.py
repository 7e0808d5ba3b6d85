"""The synthetic 4D world: scripted RGB-D videos with 4D panoptic scene graphs.

Scenes of primitives (boxes, spheres, cylinders, capsules) on a floor between
walls are simulated (agents reach, grasp, carry, push, walk, sit, talk),
rendered by vectorised ray casting (RGB, z-depth, panoptic ids) and labelled
with relations computed from the simulated state. ``generate`` writes a 4D set
in the layout of the dataset the preset imitates (``hoi``: PSG4D-HOI, ``gta``:
PSG4D-GTA) and a 2D image set in the OpenPSG layout; ``generate_or_reuse`` builds a world once
(reused while its settings match), ``items_for_splits`` sizes it for the split counts wanted.
"""

from psg4d.data.synth.generate import (
    PRESETS,
    SPLIT_FRACTIONS,
    SynthConfig,
    SynthSummary,
    generate,
    items_for_splits,
    simulate_image,
    simulate_video,
    split_counts,
)
from psg4d.data.synth.describe import describe_category
from psg4d.data.synth.reuse import WORLD_STAMP, generate_or_reuse
from psg4d.data.synth.world import CATEGORIES, HELD_OUT_CATEGORIES, NOVEL_CATEGORIES, PREDICATES, preset_vocabulary

__all__ = [
    "CATEGORIES",
    "HELD_OUT_CATEGORIES",
    "NOVEL_CATEGORIES",
    "PREDICATES",
    "PRESETS",
    "SPLIT_FRACTIONS",
    "SynthConfig",
    "SynthSummary",
    "WORLD_STAMP",
    "describe_category",
    "generate",
    "generate_or_reuse",
    "items_for_splits",
    "preset_vocabulary",
    "simulate_image",
    "simulate_video",
    "split_counts",
]
