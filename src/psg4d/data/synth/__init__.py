"""The synthetic 4D world: scripted RGB-D videos with 4D panoptic scene graphs.

Scenes of primitives (boxes, spheres, cylinders, capsules) on a floor between
walls are simulated (agents reach, grasp, carry, push, walk, sit, talk),
rendered by vectorised ray casting (RGB, z-depth, panoptic ids) and labelled
with relations computed from the simulated state. ``generate`` writes a 4D set
in the layout of the dataset the preset imitates (``hoi``: PSG4D-HOI, ``gta``:
PSG4D-GTA) and a 2D image set in the OpenPSG layout.
"""

from psg4d.data.synth.generate import (
    PRESETS,
    SynthConfig,
    SynthSummary,
    generate,
    simulate_image,
    simulate_video,
    split_counts,
)
from psg4d.data.synth.describe import describe_category
from psg4d.data.synth.world import CATEGORIES, HELD_OUT_CATEGORIES, NOVEL_CATEGORIES, PREDICATES, preset_vocabulary

__all__ = [
    "CATEGORIES",
    "HELD_OUT_CATEGORIES",
    "NOVEL_CATEGORIES",
    "PREDICATES",
    "PRESETS",
    "SynthConfig",
    "SynthSummary",
    "describe_category",
    "generate",
    "preset_vocabulary",
    "simulate_image",
    "simulate_video",
    "split_counts",
]
