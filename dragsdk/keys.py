"""What the inversion depends on: the declared :class:`InversionKey` of the inversion cache.

Every field of :class:`~dragsdk.plan.EditPlan`, :class:`~dragsdk.spec.EditSpec` and
:class:`~dragsdk.spec.SamplerSettings` declares, next to its definition, whether the inversion depends on it
(:func:`inverts` or :func:`no_inversion`; ``tests/test_keys.py`` fails on a field without a declaration). A field
the inversion depends on must reach :func:`inversion_key`, the one function that builds the key, used by the edit
and by the dry run. A mode's own spec fields reach the engine only through the plan, so they need no declaration.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

    from .plan import EditPlan
    from .spec import EditSpec


@dataclass(frozen=True)
class Inversion:
    """The declaration of one field: ``depends`` says whether the inversion depends on it, ``how`` through what
    (the :class:`InversionKey` entry that carries it)."""

    depends: bool
    how: str = ""


def inverts(how: str) -> Inversion:
    """Declare a field the inversion depends on; ``how`` names the :class:`InversionKey` entry that carries it."""
    return Inversion(True, how)


def no_inversion() -> Inversion:
    """Declare a field the inversion does not depend on (sampling, decoding or reporting only)."""
    return Inversion(False)


def declarations(cls: type) -> dict[str, Inversion | None]:
    """Each field of a dataclass (metadata ``inversion``) or pydantic model (an :class:`Inversion` in its
    ``Annotated`` metadata) and its declaration, None where it has none."""
    if dataclasses.is_dataclass(cls):
        return {f.name: f.metadata.get("inversion") for f in dataclasses.fields(cls)}
    return {
        name: next((m for m in info.metadata if isinstance(m, Inversion)), None)
        for name, info in cls.model_fields.items()
    }  # type: ignore[attr-defined]


def plan_field(decl: Inversion, **kwargs: Any) -> Any:
    """``dataclasses.field(**kwargs)`` carrying ``decl`` as its ``inversion`` metadata (for :class:`EditPlan`)."""
    return dataclasses.field(metadata={"inversion": decl}, **kwargs)


@dataclass(frozen=True)
class InversionKey:
    """Everything the inversion (latents, K/V bank, guidance features) of an edit depends on; two edits with equal
    keys share it. Built only by :func:`inversion_key`.

    Attributes:
        image: the base image's content hash and size.
        prompt: the base prompt (inversion and guidance features).
        references: ``(content hash, prompt)`` of each extra inverted image (``plan.references``).
        steps: DDIM steps (``sampler.steps``).
        working_size: ``(W, H)`` working pixels (``sampler.resolution`` and the image size).
        kv_steps: sampling steps whose K/V the inversion records (``plan.kv`` window: ``sampler.kv_start``).
        feature_steps: sampling steps whose guidance features it provides (``plan.guided_steps`` when the plan
            has gradients: energies and their scales; less step 0 under ``step0_guidance="init"``).
        model: the model's name.
        weights: the weights' identity (:meth:`dragsdk.editor.Editor.weights_key`: adapters, dtype, device).
        sampling, kv_layers, start_step, guidance_features, schedule, vae_latent, reference_prompt: the plan
            entries of those names (``schedule``: ``plan.schedule_key``).
        cycle_seed: ``sampler.seed`` when the inversion is stochastic (Cycle-SDE), else None.
        vae_seed: ``sampler.seed`` when ``z_0`` is a VAE posterior sample, else None.
        rng: the plan's random streams (``fidelity.rng``: ``dragsdk`` or ``official``).
        arithmetic: ``fidelity.ddim_arithmetic`` and ``fidelity.attention_math`` (``float64/backend`` unless a
            mode's profile says otherwise): the inversion's rounding depends on them.
        image_prompt: ``(adapter name, scale)`` of an image prompt the inversion uses, else None.
    """

    image: str
    prompt: str
    references: tuple[tuple[str, str], ...]
    steps: int
    working_size: tuple[int, int]
    kv_steps: tuple[int, ...]
    feature_steps: tuple[int, ...]
    model: str
    weights: str
    sampling: str
    kv_layers: str
    start_step: int
    guidance_features: str
    schedule: str
    vae_latent: str
    reference_prompt: str
    cycle_seed: int | None
    vae_seed: int | None
    image_prompt: tuple[str, float] | None
    rng: str = "dragsdk"
    arithmetic: str = "float64/backend"


def image_key(img: Image.Image) -> str:
    """A content key of an image: SHA-1 of its pixels and its size."""
    return hashlib.sha1(img.tobytes()).hexdigest() + f"{img.size}"


def recorded_steps(plan: EditPlan) -> tuple[set[int], set[int]]:
    """The sampling steps whose K/V and whose guidance features the inversion provides."""
    kv_steps = set(plan.kv.steps()) if plan.kv else set()
    feature_steps = plan.energy_steps()
    if plan.fidelity.step0_guidance == "init":  # the first step's reference is the pasted start latent itself
        feature_steps.discard(plan.start_step)
    return kv_steps, feature_steps


def inversion_key(
    img: Image.Image,
    spec: EditSpec,
    plan: EditPlan,
    working_size: tuple[int, int],
    model: str,
    weights: str,
    adapter: Any = None,
) -> InversionKey:
    """The key of the inversion an edit of ``img`` with ``spec`` / ``plan`` needs. ``adapter``: the loaded
    image-prompt adapter (its name and ``scale`` override), or None."""
    s = spec.sampler
    kv_steps, feature_steps = recorded_steps(plan)
    ip = plan.image_prompt
    ip_key = None
    if ip is not None and ip.inversion and adapter is not None:
        ip_key = (adapter.name, ip.scale if adapter.scale is None else adapter.scale)
    return InversionKey(
        image=image_key(img),
        prompt=spec.prompt,
        references=tuple((image_key(r.image), r.prompt) for r in plan.references),
        steps=s.steps,
        working_size=tuple(working_size),
        kv_steps=tuple(sorted(kv_steps)),  # type: ignore[arg-type]
        feature_steps=tuple(sorted(feature_steps)),
        model=model,
        weights=weights,
        sampling=plan.sampling,
        kv_layers=str(plan.kv_layers),
        start_step=plan.start_step,
        guidance_features=plan.fidelity.guidance_features,
        schedule=plan.schedule_key,
        vae_latent=plan.fidelity.vae_latent,
        reference_prompt=plan.fidelity.reference_prompt,
        cycle_seed=s.seed if plan.sampling == "cycle-sde" else None,
        vae_seed=s.seed if plan.fidelity.vae_latent == "sample" else None,
        image_prompt=ip_key,
        rng=plan.fidelity.rng,
        arithmetic=f"{plan.fidelity.ddim_arithmetic}/{plan.fidelity.attention_math}",
    )
