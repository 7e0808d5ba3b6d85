"""Object descriptions: a short appearance phrase per object, beside its category name.

A dataset may give an object ``attributes["description"]`` (the synthetic world describes
every object from its category's recipe: "small red cylinder with white stripes", see
:mod:`psg4d.data.synth.describe`); a dataset with nothing else is described by the category
name itself.
"""

from __future__ import annotations

from psg4d.data.schema import ObjectTrack

DESCRIPTION_KEY = "description"


def object_description(obj: ObjectTrack) -> str:
    """``obj.attributes["description"]`` when it is a non-empty string, else the category name."""
    d = obj.attributes.get(DESCRIPTION_KEY) if obj.attributes else None
    return d if isinstance(d, str) and d.strip() else obj.category


def description_words() -> list[str]:
    """Every word a synthetic description can hold (sorted, whitespace-split), for tokenizer
    vocabularies; descriptions of other datasets are category names, which a tokenizer
    already holds through the object vocabulary."""
    from psg4d.data.synth.describe import attribute_words

    return attribute_words()
