"""``pull``: a worked example of the latent-optimisation stage (``LatentOptimisation``, docs/plugins.md).

Before sampling, the inverted latent at ``start`` of the steps is optimised with Adam so that the decoder feature
at ``target`` becomes the one the unoptimised latent had at ``handle`` (L1 over channels, features of
``unet.up_blocks[2]``); a tracker ends the loop once that distance fell below ``tolerance`` times its initial value.
Sampling then runs from the optimised latent with the source's keys and values injected (``replace``).
"""

from __future__ import annotations

import torch
from pydantic import Field

from dragsdk.authoring import (
    EditMode,
    EditPlan,
    EditSpec,
    KVInjection,
    KVPlan,
    LatentOptimisation,
    OptimisationState,
    PlanContext,
    PointPair,
    hookimpl,
)


class PullSpec(EditSpec):
    """Pull the feature under ``point.handle`` to ``point.target`` by optimising the inverted latent."""

    mode: str = Field("pull", pattern="^pull$")
    point: PointPair = Field(..., description="handle → target, image pixels")
    steps: int = Field(20, ge=0, le=200, description="most Adam steps")
    lr: float = Field(0.01, gt=0, le=1, description="Adam learning rate")
    start: float = Field(
        0.3, ge=0, lt=1, description="fraction of the sampling steps skipped (inverted less)"
    )
    tolerance: float = Field(
        0.2, ge=0, le=1, description="stop once the distance is this fraction of the first"
    )


class PullMode(EditMode[PullSpec]):
    name = "pull"
    spec_model = PullSpec
    description = "pull a point's feature to a target (example of the latent-optimisation stage)"
    unsupported_settings = frozenset({"schedule", "kv_start", "sde", "time_travel"})

    def plan(self, spec: PullSpec, ctx: PlanContext) -> EditPlan:
        ctx.check_points([spec.point], "point")
        canvas = ctx.canvas
        (w, h), (hx, hy), (tx, ty) = canvas.image_size, spec.point.handle, spec.point.target

        def distance(state: OptimisationState) -> torch.Tensor:
            assert state.initial is not None
            f, f0 = state.features[0], state.initial.features[0]  # (1, C, h_l, w_l): the block's own size
            fh, fw = f.shape[-2:]
            tr, tc, hr, hc = int(ty / h * fh), int(tx / w * fw), int(hy / h * fh), int(hx / w * fw)
            return (f[0, :, tr, tc] - f0[0, :, hr, hc]).abs().mean()

        def tracker(state: OptimisationState) -> bool:
            d = float(distance(state).detach())
            first = state.memo.setdefault("first", d)
            state.record["distance"] = d
            return d <= spec.tolerance * first

        start = int(spec.start * ctx.steps)
        return EditPlan(
            edit_mask=torch.ones(canvas.latent_size[1], canvas.latent_size[0], dtype=torch.bool),
            start_step=start,
            kv=KVPlan(KVInjection("replace"), start, ctx.steps),
            optimise=LatentOptimisation(distance, spec.steps, spec.lr, tracker, feature_blocks=(2,)),
        )


@hookimpl
def dragsdk_register_modes(register):
    register(PullMode())
