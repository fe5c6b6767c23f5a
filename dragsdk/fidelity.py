"""Fidelity profiles: one mechanism for every mode.

A mode's default profile, ``official``, reproduces its official code step by step; the ``dragsdk`` profile turns on
every documented improvement. A mode declares its options once, as a frozen dataclass whose fields are made with
:func:`option` (the official value, the improved value, one line of help and, optionally, the improvement name a
spec may list in its ``profile``). :class:`ProfileTable` resolves a spec's ``profile`` (plus any per-option fields
the spec gives) into one instance of that dataclass, so a mode reads typed values (``opts.mask_resampling ==
"area"``) and never tests improvement names by hand. The engine reads the options it branches on from one place,
the plan's :class:`Fidelity` (``plan.fidelity``), which also carries the one report format: the profile label and
every option as ``name=value``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from pydantic import Field

OFFICIAL = "official"
"""The profile that reproduces the official code of a mode step by step (every mode's default)."""

ALL_IMPROVEMENTS = "dragsdk"
"""The profile that turns on every named improvement of a mode."""


def option(
    official: Any, improved: Any, help: str, *, improvement: str | None = None, aliases: tuple[str, ...] = ()
) -> Any:
    """One option of a mode's profile table (use as a field of a frozen dataclass).

    Args:
        official: the value under ``official`` (the field's default).
        improved: the value under ``dragsdk``.
        help: one line: what the improved value changes and why (goes into the spec's JSON Schema).
        improvement: the name a spec may list in ``profile`` to turn this option to ``improved`` alone
            (e.g. ``area-masks``); None = only the whole ``dragsdk`` profile (or a per-option spec field) sets it.
        aliases: former improvement names still accepted in a spec (not listed in the docs' tables).
    """
    return dataclasses.field(
        default=official,
        metadata={"improved": improved, "help": help, "improvement": improvement, "aliases": aliases},
    )


@dataclass(frozen=True)
class Fidelity:
    """The fidelity options the engine branches on, in one place (``EditPlan.fidelity``), and the report's profile.

    A field a mode's options dataclass also has (same name) is taken from it by :meth:`ProfileTable.fidelity`; the
    rest keep these defaults (dragsdk's own engine behaviour), which a mode without the option never reaches.

    Attributes:
        guidance_features: guidance features of a guided step: ``inverted`` = ``F(z^inv_{t_i}, t_i)`` recomputed
            by truncated no-grad forwards (official DragonDiffusion, ``Sampler.py:255-260``); ``recorded`` = taken in
            the inversion call that produces ``z_{t_i}`` (one DDIM step off, no extra forward).
        step0_guidance: ``init`` = the first step's reference is the starting latent after the plan's pastes
            (official drag, ``utils.py:149``); ``inversion`` = as every other step.
        rollback_at: timestep of the time-travel roll-back UNet call: ``prev`` (official ``Sampler.py:136-144``)
            or ``t`` (as the inversion).
        reference_prompt: prompt of the reference images' feature forwards: ``base`` (official appearance / paste,
            ``Sampler.py:371-383``) or ``own``.
        text_context: context of the sampling UNet calls' text cross-attention (CFG ε and time-travel roll-back):
            ``text`` = the prompt's tokens ``(B, 77, D)``; ``text+image`` = those plus the base image's image-prompt
            tokens ``(B, 77 + T, D)`` appended (official appearance / paste: ``model.py:154, 355`` concatenate base
            and reference tokens, ``Sampler.py:48-52, 141`` append them to the context, and ``IPAttnProcessor``
            splits off only the last 64, ``attention_processor.py:190-194``; zeros ``T = 64`` without an adapter,
            :func:`dragsdk.image_prompt.context_image_tokens`). Feature forwards stay text-only in both.
        outside_reset: outside the edit mask the latent is reset to the inversion ``before`` each step (official
            RegionDrag) or ``after`` each step.
        vae_latent: ``z_0`` is the posterior ``mean`` or one posterior ``sample`` from the edit's seed.
        to_uint8: decoded image to 8 bits by ``round`` or ``truncate`` (``floor(x·255)``).
        kv_source: where injected K/V come from: ``inversion`` (the bank recorded by the DDIM inversion) or
            ``reconstruction`` (a source branch sampled from the inverted latent beside the edit, text-only, one
            extra UNet forward per sampling step; MasaCtrl as DragDiffusion runs it, ``drag_pipeline.py:525-543``,
            ``utils/attn_utils.py:92-96``).
        rng: the random streams of the edit: ``dragsdk`` = independent streams (the inversion's salted generator,
            :func:`~dragsdk.cycle_sde.inversion_generator`, and the sampler's own, both seeded from
            ``sampler.seed``); ``official`` = one generator seeded as ``torch.manual_seed(seed)`` seeds the official
            code's global stream, on the model's device, drawn in the official order: the VAE posterior sample
            (drawn and discarded when ``vae_latent`` is ``mean``), the inversion's forward noise step by step, then
            the handle noise in the plan's official point order (:class:`~dragsdk.plan.HandleNoise` ``draw_rows``).
        ddim_arithmetic: how the DDIM steps (inversion, sampling, the optimisation's ``x_{t-1}``) compute
            ``√ᾱ`` and ``√(1−ᾱ)``: ``float64`` = from Python floats (dragsdk); ``float32`` = from the scheduler's
            float32 ``alphas_cumprod`` entries as 0-dim tensors, as the official DragDiffusion ``inv_step`` / ``step``
            do (``drag_pipeline.py:369-390`` and the ``step`` above it). The two round differently in the last bit.
        attention_math: the attention op of every UNet attention layer: ``backend`` = the selected backend's
            (SDPA, Triton, xformers, ...); ``classic`` = materialised scores, ``baddbmm(q, kᵀ, α=scale)``, softmax
            over keys in float32, ``bmm`` with V (diffusers' ``AttnProcessor``, which the official DragDiffusion
            installs with ``set_default_attn_processor``, ``run_drag_diffusion.py:120``):
            :func:`dragsdk.attention.classic_attention`. Same math, another rounding; O(N²) memory.
        profile: the profile label: ``official``, ``dragsdk`` or ``official+<improvements>``.
        options: every option of the mode's table as ``name=value``, sorted by name (the report's one format).
    """

    guidance_features: Literal["inverted", "recorded"] = "recorded"
    step0_guidance: Literal["inversion", "init"] = "inversion"
    rollback_at: Literal["prev", "t"] = "t"
    reference_prompt: Literal["base", "own"] = "own"
    text_context: Literal["text", "text+image"] = "text"
    outside_reset: Literal["after", "before"] = "after"
    vae_latent: Literal["mean", "sample"] = "mean"
    to_uint8: Literal["round", "truncate"] = "round"
    kv_source: Literal["inversion", "reconstruction"] = "inversion"
    rng: Literal["dragsdk", "official"] = "dragsdk"
    ddim_arithmetic: Literal["float64", "float32"] = "float64"
    attention_math: Literal["backend", "classic"] = "backend"
    profile: str = ""
    options: tuple[str, ...] = ()


OptionsT = TypeVar("OptionsT")

_ENGINE_FIELDS = frozenset(f.name for f in dataclasses.fields(Fidelity)) - {"profile", "options"}


class ProfileTable(Generic[OptionsT]):
    """The named options of a mode, with a value per profile, resolved into one typed frozen object.

    Args:
        options: a frozen dataclass whose every field is made with :func:`option`.

    Raises:
        TypeError: ``options`` is not a frozen dataclass, a field is not made with :func:`option`, or two fields
            share an improvement name.
    """

    def __init__(self, options: type[OptionsT]) -> None:
        if not dataclasses.is_dataclass(options) or not options.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            raise TypeError(f"ProfileTable: {options!r} must be a frozen dataclass of option() fields")
        self.options_type = options
        self._fields = dataclasses.fields(options)
        self.improvements: dict[str, str] = {}
        """Improvement name → help, in declaration order (what a spec's ``profile`` list may name)."""
        self._by_improvement: dict[str, str] = {}
        for f in self._fields:
            if "improved" not in f.metadata:
                raise TypeError(
                    f"ProfileTable: field {f.name!r} of {options.__name__} is not made with option()"
                )
            name = f.metadata["improvement"]
            if name is None:
                continue
            for known in (name, *f.metadata["aliases"]):
                if known in self._by_improvement:
                    raise TypeError(
                        f"ProfileTable: improvement {known!r} names two options of {options.__name__}"
                    )
                self._by_improvement[known] = f.name
            self.improvements[name] = f.metadata["help"]

    @property
    def names(self) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(f.name for f in self._fields)

    def values(self, profile: str) -> dict[str, Any]:
        """Every option's value under ``profile`` (``official`` or ``dragsdk``).

        Raises:
            ValueError: another profile name.
        """
        if profile == OFFICIAL:
            return {f.name: f.default for f in self._fields}
        if profile == ALL_IMPROVEMENTS:
            return {f.name: f.metadata["improved"] for f in self._fields}
        raise ValueError(f"profile must be {OFFICIAL!r} or {ALL_IMPROVEMENTS!r}, got {profile!r}")

    def resolve(self, profile: str | Sequence[str], overrides: Mapping[str, Any] | None = None) -> OptionsT:
        """The options of ``profile``: ``official``, ``dragsdk`` or a list of improvement names (the official values
        with those options improved); then every ``overrides`` entry that is not None (a spec's per-option field).

        Raises:
            ValueError: an unknown profile, improvement or option name.
        """
        if isinstance(profile, str):
            values = self.values(profile)
        else:
            values = self.values(OFFICIAL)
            improved = self.values(ALL_IMPROVEMENTS)
            for name in profile:
                if name not in self._by_improvement:
                    raise ValueError(f"unknown improvement {name!r}; known: {', '.join(self.improvements)}")
                key = self._by_improvement[name]
                values[key] = improved[key]
        for k, v in (overrides or {}).items():
            if k not in values:
                raise ValueError(f"unknown option {k!r}; known: {', '.join(self.names)}")
            if v is not None:
                values[k] = v
        return self.options_type(**values)

    @staticmethod
    def label(profile: str | Sequence[str]) -> str:
        """The profile as one string: ``official``, ``dragsdk`` or ``official+a+b`` (a list, sorted)."""
        return profile if isinstance(profile, str) else "+".join([OFFICIAL, *sorted(profile)])

    def fidelity(self, profile: str | Sequence[str], options: OptionsT) -> Fidelity:
        """The plan's :class:`Fidelity`: the engine options ``options`` has (by name), the profile label and every
        option as ``name=value``."""
        given = {f.name: getattr(options, f.name) for f in self._fields}
        engine = {k: v for k, v in given.items() if k in _ENGINE_FIELDS}
        return Fidelity(
            **engine, profile=self.label(profile), options=tuple(f"{k}={v}" for k, v in sorted(given.items()))
        )

    def spec_type(self) -> Any:
        """The type of a spec's ``profile`` field: ``"official"``, ``"dragsdk"``, or (when the table names
        improvements) a list of them; the JSON Schema shows the names as an enum."""
        if not self.improvements:
            return Literal[OFFICIAL, ALL_IMPROVEMENTS]
        names = tuple(self._by_improvement)  # former names (aliases) too: old specs stay valid
        return Literal[OFFICIAL, ALL_IMPROVEMENTS] | list[Literal[names]]  # type: ignore[valid-type]

    def spec_field(self, extra: str = "") -> Any:
        """The pydantic ``Field`` of a spec's ``profile`` (default ``"official"``), describing every option."""
        listed = "; ".join(
            f"{f.metadata['improvement'] or f.name}: {f.metadata['help']}" for f in self._fields
        )
        lists = " or a list of improvements;" if self.improvements else ""
        return Field(
            OFFICIAL,
            description=f"'{OFFICIAL}' reproduces the official code; '{ALL_IMPROVEMENTS}' "
            f"enables every improvement;{lists} {extra}Options — {listed}",
        )

    def rows(self) -> list[tuple[str, str | None, Any, Any, str]]:
        """``(option, improvement, official value, dragsdk value, help)`` per option, for docs and ``--help``."""
        return [
            (f.name, f.metadata["improvement"], f.default, f.metadata["improved"], f.metadata["help"])
            for f in self._fields
        ]


__all__ = ["ALL_IMPROVEMENTS", "OFFICIAL", "Fidelity", "ProfileTable", "option"]
