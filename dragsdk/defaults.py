"""Which model is loaded when none is named (kept free of heavy imports: the CLI reads it at start-up).

An :class:`~dragsdk.Editor`, ``dragsdk edit`` / ``mask`` / ``bench`` / ``ui`` and ``dragsdk backends --bench`` load
:func:`default_model` when no model is given: ``$DRAGSDK_MODEL`` if it is set, else real SD 1.5 weights
(:data:`DEFAULT_MODEL`, from the Hugging Face cache or downloaded; absent, a
:class:`~dragsdk.errors.ModelNotFoundError` says how to provide a model). The built-in random-weight models
(:data:`RANDOM_MODELS`) are never a default: they are used only when named, and every output made with one says so
(``EditReport.random_weights``, a CLI warning, ``summary.json``'s ``random_weights`` of a benchmark run).
"""

from __future__ import annotations

import os

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
"""Hub id of the Stable Diffusion 1.5 weights (the maintained copy of ``runwayml/stable-diffusion-v1-5``)."""
MODEL_ENV = "DRAGSDK_MODEL"
"""Environment variable naming the model used when none is given."""
RANDOM_MODELS = ("tiny", "tiny-sd2", "tiny-sdxl", "sd15-random", "sd21-random", "sdxl-random")
"""Built-in random-weight models: the SD 1.5 / SD 2.1 / SDXL structures at tiny widths (tests, plumbing demos) and
at full size (speed and memory measurements, where weights do not change the cost)."""


def default_model() -> str:
    """The model loaded when none is named: ``$DRAGSDK_MODEL`` if set (and not blank), else :data:`DEFAULT_MODEL`."""
    return os.environ.get(MODEL_ENV, "").strip() or DEFAULT_MODEL
