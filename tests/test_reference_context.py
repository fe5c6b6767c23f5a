"""Appearance and paste under their ``official`` profile (issue 21): the text cross-attention's context holds the
base image's image-prompt tokens after the 77 text tokens, as the official code leaves them there
(``src/demo/model.py:154-155, 355-356``, ``src/models/Sampler.py:48-52, 141``,
``src/unet/attention_processor.py:190-194``), and the composite K/V key masks are sampled nearest at each layer's
token grid (``src/unet/attention_processor.py:84-92``); ``text-only-context`` and ``area-masks`` are the opt-in
improvements. Tiny model, 64 px, 12 steps (time travel on step 6: two roll-backs)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from dragsdk import Editor
from dragsdk.attention import KVProcessor, token_mask
from dragsdk.image_prompt import OFFICIAL_IMAGE_TOKENS
from dragsdk.registry import get_registry
from dragsdk.sampler import GuidedSampler

from .builtin_specs import IMAGE, builtin_specs

SAMPLER = {"steps": 12, "resolution": 64, "seed": 7}
SHORT = {"steps": 3, "resolution": 64, "seed": 7}
"""Three steps: composite K/V on steps 0–1, no time travel (the mask and difference tests)."""
TEXT = 77


def _spec(mode: str, sampler: dict[str, Any] = SAMPLER, **extra: Any) -> dict[str, Any]:
    return {**builtin_specs(sampler)[mode], **extra}


@contextmanager
def text_contexts(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record ``encoder_hidden_states`` of one text cross-attention layer (the first ``attn2`` called) per UNet
    call, by phase: ``cfg`` (the sampler's ε calls), ``rollback`` (time travel), ``features`` (guidance feature
    forwards) and ``other`` (inversion)."""
    seen: dict[str, list[torch.Tensor]] = {"cfg": [], "rollback": [], "features": [], "other": []}
    phase = ["other"]
    layer: list[str] = []
    call = KVProcessor.__call__

    def spy(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        if encoder_hidden_states is not None and self.layer.endswith("attn2"):
            if not layer:
                layer.append(self.layer)
            if self.layer == layer[0]:
                seen[phase[0]].append(encoder_hidden_states.detach().clone())
        return call(self, attn, hidden_states, encoder_hidden_states, *args, **kwargs)

    def in_phase(name: str, fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            before, phase[0] = phase[0], name
            try:
                return fn(*args, **kwargs)
            finally:
                phase[0] = before

        return wrapped

    monkeypatch.setattr(KVProcessor, "__call__", spy)
    monkeypatch.setattr(GuidedSampler, "_eps", in_phase("cfg", GuidedSampler._eps))
    monkeypatch.setattr(GuidedSampler, "_roll_back", in_phase("rollback", GuidedSampler._roll_back))
    monkeypatch.setattr(GuidedSampler, "features", in_phase("features", GuidedSampler.features))
    yield seen


@pytest.mark.parametrize("mode", ["appearance", "paste"])
def test_official_text_cross_attention_sees_77_text_tokens_then_64_zero_image_tokens(
    tiny_model, monkeypatch, one_thread, mode
):
    """Without an IP-Adapter the official code's base-image tokens are those of a zero-token image prompt: 64 zero
    rows after the text, in both CFG rows and in the roll-back's conditional context; feature forwards and the
    inversion stay text-only (``text_embeddings_org``, ``Sampler.py:50``; ``ddim_inv`` without ``emb_im``)."""
    uncond = tiny_model.encode_prompt("", True)
    cond = tiny_model.encode_prompt(_spec(mode)["prompt"])
    with text_contexts(monkeypatch) as seen:
        r = Editor(tiny_model).edit(IMAGE, _spec(mode))
    assert r.report.profile == "official" and "text_context=text+image" in r.report.profile_options
    assert seen["cfg"] and seen["rollback"] and seen["features"] and seen["other"]
    for c in seen["cfg"]:
        assert c.shape == (2, TEXT + OFFICIAL_IMAGE_TOKENS, cond.shape[-1])
        assert torch.equal(c[:, :TEXT], torch.cat([uncond, cond]))
        assert torch.count_nonzero(c[:, TEXT:]) == 0
    for c in seen["rollback"]:
        assert c.shape == (1, TEXT + OFFICIAL_IMAGE_TOKENS, cond.shape[-1])
        assert torch.equal(c[:, :TEXT], cond) and torch.count_nonzero(c[:, TEXT:]) == 0
    assert all(c.shape[1] == TEXT for c in seen["features"] + seen["other"])


@pytest.mark.parametrize("mode", ["appearance", "paste"])
def test_text_only_context_improvement_keeps_the_77_text_tokens_everywhere(
    tiny_model, monkeypatch, one_thread, mode
):
    with text_contexts(monkeypatch) as seen:
        r = Editor(tiny_model).edit(IMAGE, _spec(mode, profile=["text-only-context"]))
    assert "text_context=text" in r.report.profile_options
    assert seen["cfg"] and seen["rollback"]
    assert all(c.shape[1] == TEXT for calls in seen.values() for c in calls)


def test_the_image_tokens_change_the_official_edit_and_text_only_context_drops_them(tiny_model, one_thread):
    """The 64 zero keys / values dilute the text attention (softmax over 141 keys): the official result differs
    from the text-only one."""
    editor = Editor(tiny_model)
    official = editor.edit(IMAGE, _spec("paste", SHORT))
    text_only = editor.edit(IMAGE, _spec("paste", SHORT, profile=["text-only-context"]))
    assert (official.latent - text_only.latent).abs().max() > 1e-3


def test_nearest_token_mask_is_f_interpolate_nearest_and_differs_from_area_coverage():
    """On an 8×8 latent mask holding only the top-left cell of every 2×2 block, nearest sampling at 4×4 takes every
    token (the top-left cell decides), area coverage none (25 % < 50 %); its complement the other way round."""
    top_left = torch.zeros(8, 8, dtype=torch.bool)
    top_left[::2, ::2] = True
    for mask in (top_left, ~top_left):
        for h, w in ((8, 8), (4, 4), (2, 2), (1, 1)):
            expected = F.interpolate(mask.float()[None, None], (h, w), mode="nearest")[0, 0] > 0.5
            assert torch.equal(token_mask(mask, method="nearest")(h, w), expected.flatten())
            assert torch.equal(token_mask(mask, invert=True, method="nearest")(h, w), ~expected.flatten())
    assert token_mask(top_left, method="nearest")(4, 4).all() and not token_mask(top_left)(4, 4).any()
    assert not token_mask(~top_left, method="nearest")(4, 4).any() and token_mask(~top_left)(4, 4).all()
    with pytest.raises(ValueError, match="method must be 'area' or 'nearest'"):
        token_mask(top_left, method="bilinear")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["appearance", "paste"])
@pytest.mark.parametrize("profile", ["official", ["area-masks"]])
def test_composite_key_masks_are_nearest_at_each_layer_grid_in_the_official_profile(
    tiny_model, monkeypatch, one_thread, mode, profile
):
    """Every layer grid the composite injection asks for during the edit gets the plan's latent mask sampled
    nearest (official) or by area coverage (``area-masks``): key mask 0 = base keys outside the object, 1 = reference
    keys inside the reference-frame object."""
    asked: list[tuple[int, int]] = []
    plugin = __import__(f"dragsdk.plugins.{mode}", fromlist=["token_mask"])
    masks: list[tuple[torch.Tensor, bool, str]] = []

    def spy(latent_mask, invert=False, method="area"):
        masks.append((latent_mask.clone(), invert, method))
        fn = token_mask(latent_mask, invert, method)

        def grid(h, w):
            asked.append((h, w))
            return fn(h, w)

        return grid

    monkeypatch.setattr(plugin, "token_mask", spy)
    r = Editor(tiny_model).edit(IMAGE, _spec(mode, SHORT, profile=profile))
    want = "nearest" if profile == "official" else "area"
    assert [(inv, m) for _, inv, m in masks] == [(True, want), (False, want)]
    assert torch.equal(masks[0][0], r.plan.edit_mask)
    grids = sorted(set(asked))
    assert len(grids) >= 2 and tuple(r.plan.edit_mask.shape) in grids
    inj = r.plan.kv.injection
    for h, w in grids:
        for fn, (latent_mask, invert, _) in zip(inj.token_masks, masks, strict=True):
            near = (
                F.interpolate(latent_mask.float()[None, None], (h, w), mode="nearest")[0, 0] > 0.5
            ).flatten()
            area = (F.adaptive_avg_pool2d(latent_mask.float()[None, None], (h, w))[0, 0] >= 0.5).flatten()
            expected = near if want == "nearest" else area
            assert torch.equal(fn(h, w), ~expected if invert else expected)


@pytest.mark.parametrize("mode", ["appearance", "paste"])
def test_the_profile_table_and_the_report_list_the_text_context_option(tiny_model, mode):
    desc = get_registry().modes[mode].describe()
    row = next(p for p in desc["profiles"] if p["option"] == "text_context")
    assert row["improvement"] == "text-only-context"
    assert (row["official"], row["dragsdk"]) == ("text+image", "text")
    assert "text-only-context" in str(desc["schema"])
    r = Editor(tiny_model).plan(IMAGE, _spec(mode, profile="dragsdk"))
    assert r.plan.fidelity.text_context == "text" and "text_context=text" in r.plan.fidelity.options
    official = Editor(tiny_model).plan(IMAGE, _spec(mode))
    assert "text_context=text+image" in official.plan.fidelity.options


def test_drag_and_move_keep_the_text_only_context(tiny_model):
    """Only appearance and paste carry the option: the other DragonDiffusion modes' plans stay text-only."""
    editor = Editor(tiny_model)
    for mode in ("drag", "move", "resize"):
        plan = editor.plan(IMAGE, builtin_specs(SAMPLER)[mode]).plan
        assert plan.fidelity.text_context == "text"
        assert not any(o.startswith("text_context=") for o in plan.fidelity.options)


def test_image_tokens_go_after_the_text_and_before_an_sdxl_pooled_row():
    from dragsdk.image_prompt import append_context_tokens

    cond = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    tokens = -torch.ones(2, 4, 3)
    plain = append_context_tokens(cond, tokens)
    assert plain.shape == (2, 9, 3) and torch.equal(plain[:, :5], cond) and torch.equal(plain[:, 5:], tokens)
    sdxl = append_context_tokens(cond, tokens, pooled_row=True)
    assert torch.equal(sdxl[:, :4], cond[:, :4]) and torch.equal(sdxl[:, 4:8], tokens)
    assert torch.equal(sdxl[:, -1], cond[:, -1])  # the pooled row stays last, where the UNet wrapper reads it
    with pytest.raises(ValueError, match="do not fit the text context"):
        append_context_tokens(cond, torch.zeros(2, 4, 7))
