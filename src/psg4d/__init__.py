"""psg4d: 4D Panoptic Scene Graph generation.

Package layout mirrors the method: ``data`` (schema, readers, synthetic world),
``model`` (4D-LLM parts), ``train`` (stages, loop), ``eval`` (metrics),
``infer`` (predictor), ``viz`` (reports) and ``cli``.
"""

from psg4d.errors import Psg4dError, DataError

__version__ = "0.1.0"
__all__ = ["Psg4dError", "DataError", "__version__"]
