"""Embedding dragsdk in a host: the step hook and cancellation, diffusers-style arguments, cache control, the dry
run and one-line errors (issue 14, items 7–10 and 12)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from dragsdk import Editor
from dragsdk.errors import (
    ArgumentTypeError,
    DeviceUnavailableError,
    DragSDKError,
    EditCancelled,
    HostAttentionError,
    ModelLoadError,
    SpecError,
)
from dragsdk.models import load_model
from dragsdk.spec import DragSpec

# 3 steps at 64², one guided step (the feature tap and the K/V bank still run), no time travel.
FAST = {
    "steps": 3,
    "resolution": 64,
    "schedule": {"end": 0.34, "dense_end": 0.34},
    "time_travel": {"enabled": False},
}


@pytest.fixture(autouse=True, scope="module")
def one_intra_op_thread():
    """Bit-exact comparisons between runs need one reduction order (see tests/test_concurrency.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def job(car_sample):
    path, spec = car_sample
    return Image.open(path).convert("RGB"), DragSpec.model_validate(
        {**spec, "prompt": "a car", "sampler": FAST}
    )


@pytest.fixture()
def model():
    """A model of its own: tests here change weights, dtype and processors."""
    return load_model("tiny", device="cpu")


def _same(a, b) -> bool:
    return torch.equal(a.latent, b.latent) and np.array_equal(np.asarray(a.image), np.asarray(b.image))


# -- item 7: one step hook, cancellation --------------------------------------------------------------------------
def test_step_hook_sees_every_phase_with_step_total_and_timestep(model, job):
    events = []
    Editor(model).edit(
        *job, callback_on_step_end=lambda e: events.append((e.phase, e.step, e.total, e.index, e.timestep))
    )
    n = job[1].sampler.steps
    assert [e[0] for e in events] == ["encode"] + ["invert"] * n + ["sample"] * n + ["decode"]
    assert events[0][1:3] == (1, 1) and events[-1][1:3] == (1, 1)
    inv, smp = events[1 : 1 + n], events[1 + n : 1 + 2 * n]
    assert [e[1] for e in inv] == list(range(1, n + 1)) and {e[2] for e in inv} == {n}
    assert [e[3] for e in inv] == list(reversed(range(n))) and [e[3] for e in smp] == list(range(n))
    timesteps = [e[4] for e in smp]
    assert timesteps == sorted(timesteps, reverse=True) and len(set(timesteps)) == n
    # A second edit of the same image reuses the inversion: one invert step, and the report says so.
    events.clear()
    r = Editor(model)
    r.edit(*job)
    r.edit(*job, callback_on_step_end=lambda e: events.append(e.phase))
    assert events == ["encode", "invert"] + ["sample"] * n + ["decode"]


@pytest.mark.parametrize("where", [("invert", 2), ("sample", 2), ("decode", 1)])
def test_cancel_from_the_hook_leaves_the_editor_reusable_and_its_cache_clean(model, job, where):
    editor = Editor(model)
    processors = dict(model.unet.attn_processors)
    with pytest.raises(EditCancelled) as info:
        editor.edit(*job, callback_on_step_end=lambda e: (e.phase, e.step) == where)
    assert (info.value.phase, info.value.step) == where and isinstance(info.value, DragSDKError)
    assert not editor.plan(*job).inversion_cached  # nothing cached
    assert model.unet.attn_processors == processors  # the processors before the edit are back
    after = editor.edit(*job)
    assert not after.report.inversion_reused and _same(
        after, Editor(load_model("tiny", device="cpu")).edit(*job)
    )


def test_cancel_event_set_from_another_thread_stops_the_edit_and_keeps_the_earlier_cache(model, job):
    editor = Editor(model)
    first = editor.edit(*job)
    cancel = threading.Event()
    other = job[1].model_copy(update={"prompt": "a street"})  # another inversion: would replace the cache

    def hook(e):
        if e.phase == "invert" and e.step == 1:
            t = threading.Thread(target=cancel.set)
            t.start()
            t.join()

    with pytest.raises(EditCancelled, match="invert step 1/3"):
        editor.edit(job[0], other, callback_on_step_end=hook, cancel=cancel)
    # the cancelled edit did not touch the cache: it holds the first edit's inversion, not the other prompt's
    assert editor.plan(*job).inversion_cached and not editor.plan(job[0], other).inversion_cached
    again = editor.edit(*job)
    assert again.report.inversion_reused and _same(again, first)
    with pytest.raises(ArgumentTypeError, match="cancel: expected a threading.Event"):
        editor.edit(*job, cancel=True)


# -- item 8: diffusers habits ---------------------------------------------------------------------------------------
def test_diffusers_keyword_overrides_equal_the_spec_fields(model, job):
    image, spec = job
    editor = Editor(model)
    over = editor.edit(image, spec, num_inference_steps=4, guidance_scale=2.5)
    sampler = spec.sampler.model_copy(update={"steps": 4, "guidance_scale": 2.5})
    direct = Editor(load_model("tiny", device="cpu")).edit(
        image, spec.model_copy(update={"sampler": sampler})
    )
    assert over.report.steps == 4 and over.spec.sampler.guidance_scale == 2.5 and _same(over, direct)
    assert spec.sampler.steps == 3  # the caller's spec is not modified
    with pytest.raises(ValidationError, match="guidance_scale"):
        editor.edit(image, spec, guidance_scale=0.5)
    with pytest.raises(ArgumentTypeError, match="num_inference_steps: expected an int, got str"):
        editor.edit(image, spec, num_inference_steps="4")


def test_generator_sets_the_seed_reproducibly_and_output_types_hold_the_same_pixels(model, job):
    image, spec = job
    editor = Editor(model)
    a = editor.edit(image, spec, generator=torch.Generator().manual_seed(7), output_type="np")
    b = editor.edit(image, spec, generator=torch.Generator().manual_seed(7), output_type="pt")
    c = editor.edit(image, spec, generator=torch.Generator().manual_seed(8))
    assert a.report.seed == b.report.seed != c.report.seed
    again = editor.edit(
        image, spec.model_copy(update={"sampler": spec.sampler.model_copy(update={"seed": a.report.seed})})
    )
    assert _same(a, again)  # the report's seed alone repeats the edit
    w, h = image.size
    assert a.images.shape == (1, h, w, 3) and a.images.dtype == np.float32
    assert b.images.shape == (1, 3, h, w) and b.images.dtype == torch.float32
    np.testing.assert_array_equal(a.images[0], np.asarray(a.image, dtype=np.float32) / 255)
    np.testing.assert_array_equal(b.images[0].permute(1, 2, 0).numpy(), a.images[0])
    assert c.images == [c.image]
    with pytest.raises(ArgumentTypeError, match="output_type: expected one of pil, np, pt"):
        editor.edit(image, spec, output_type="latent")


def test_to_moves_and_casts_the_model_and_drops_the_caches(model, job):
    editor = Editor(model)
    editor.edit(*job)
    key = editor.weights_key()
    assert editor.device == torch.device("cpu") and editor.dtype == torch.float32
    assert editor.to(dtype=torch.float64) is editor
    assert editor.dtype == torch.float64 and model.unet.conv_in.weight.dtype == torch.float64
    assert len(editor._prompt_cache) == 0
    # back to float32 the weights key is the first edit's again: only a dropped cache reads as not cached
    editor.to(dtype=torch.float32)
    assert editor.weights_key() == key and not editor.plan(*job).inversion_cached
    with pytest.raises(ArgumentTypeError, match="torch_dtype"):
        editor.to(dtype="float16")


def test_host_attention_processors_are_refused_by_name_and_left_in_place(model, job):
    from diffusers.models.attention_processor import AttnProcessor, IPAdapterAttnProcessor2_0

    name = next(k for k in model.unet.attn_processors if "attn2" in k)
    attn = model.unet.get_submodule(name[: -len(".processor")])
    ip = IPAdapterAttnProcessor2_0(
        hidden_size=attn.to_q.out_features, cross_attention_dim=attn.to_k.in_features, num_tokens=(4,)
    )
    model.unet.set_attn_processor(
        {k: (ip if k == name else AttnProcessor()) for k in model.unet.attn_processors}
    )
    before = dict(model.unet.attn_processors)
    editor = Editor(model)
    with pytest.raises(HostAttentionError, match="IPAdapterAttnProcessor2_0 on 1 layers"):
        editor.edit(*job)
    assert model.unet.attn_processors == before and not editor.plan(*job).inversion_cached
    model.unet.set_default_attn_processor()  # plain attention processors are replaced for the edit only
    editor.edit(*job)


# -- item 9: cache control ----------------------------------------------------------------------------------------
def test_a_lora_fused_by_the_host_never_reuses_the_stale_inversion(model, job):
    """diffusers' fuse_lora writes ``W.data += scale·B·A`` in place: no new storage, no version bump."""
    editor = Editor(model)
    editor.edit(*job)
    w = model.unet.get_submodule("up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q").weight
    ptr = w.data_ptr()
    delta = 0.5 * torch.randn(w.shape, generator=torch.Generator().manual_seed(0))
    w.data += delta
    assert w.data_ptr() == ptr
    fused = editor.edit(*job)
    fresh = Editor(load_model("tiny", device="cpu")).model
    fresh.unet.get_submodule("up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q").weight.data += delta
    assert not fused.report.inversion_reused and _same(fused, Editor(fresh).edit(*job))


def test_weights_key_sees_dtype_and_in_place_weight_changes(model):
    editor = Editor(model)
    key = editor.weights_key()
    assert editor.weights_key() == key  # deterministic
    w = model.unet.conv_in.weight
    w.data[0, 0, 0, 0] += 1.0
    assert editor.weights_key() != key
    w.data[0, 0, 0, 0] -= 1.0
    editor.to(dtype=torch.float64)
    assert editor.weights_key() != key


def test_weights_key_is_memoised_and_still_sees_every_kind_of_weight_write(model):
    """A repeated key reuses each unchanged parameter's sum; writes through ``W.data`` (no version bump: peft's
    merge / unmerge behind fuse_lora), ``copy_`` / ``load_state_dict`` (version bump) and a replaced tensor all
    change it, and the memoised key always equals the unmemoised :func:`weights_fingerprint`."""
    from dragsdk.cache import weights_fingerprint

    editor = Editor(model)
    mods = {"unet": model.unet, "vae": model.vae, "text_encoder": model.text_encoder, "text_encoder_2": None}
    key = editor.weights_key()
    n = editor._weights.fingerprint.recomputed
    assert n == sum(1 for m in mods.values() if m is not None for _ in m.parameters())
    assert (
        editor.weights_key() == key and editor._weights.fingerprint.recomputed == 0
    )  # nothing changed: memo only
    w = model.unet.get_submodule("up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q").weight
    version, ptr = w._version, w.data_ptr()
    saved = w.data[0, 0].clone()
    w.data[0, 0] += 0.25  # as peft's merge writes: W.data += delta
    assert (w._version, w.data_ptr()) == (version, ptr)  # no metadata sees it ...
    changed = editor.weights_key()
    assert changed != key and editor._weights.fingerprint.recomputed == 1  # ... the norm read does
    assert changed == weights_fingerprint(mods)
    w.data[0, 0] = saved  # (x + 0.25) - 0.25 need not be x, and the key sees a one-ulp change
    original = {k: v.clone() for k, v in model.unet.state_dict().items()}
    with torch.no_grad():
        w.mul_(-1.0)  # keeps the norm; bumps the version
    assert w._version > version and editor.weights_key() not in (key, changed)
    model.unet.load_state_dict(original)  # copy_ into each parameter: every version bumps
    assert editor.weights_key() == key == weights_fingerprint(mods)
    assert editor._weights.fingerprint.recomputed == sum(1 for _ in model.unet.parameters())
    keys: list[str] = []
    threads = [threading.Thread(target=lambda: keys.append(editor.weights_key())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert keys == [key] * 4


@pytest.mark.parametrize("threads", [1, 3, 8])
def test_weights_key_does_not_depend_on_the_number_of_cpu_threads(model, threads):
    """The key names files other processes read (the per-image LoRA cache, ONNX graphs): an Editor whose memo was
    filled with another ``torch.set_num_threads`` (the CI failure of 2026-12-05: a fresh Editor under one thread
    missed the LoRA file written under two) and one that starts afresh must give the same key. Long parameters
    (over torch's 32768-element grain, reduced in one chunk per thread by a whole-tensor sum) are included."""
    from dragsdk.cache import _statistic

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        memoised = Editor(model)
        key = memoised.weights_key()
        g = torch.Generator().manual_seed(0)
        long = [torch.randn(n, generator=g) for n in (4095, 40_001, 1_000_003)] + [torch.randn(900, 700).t()]
        stats = _statistic(long, "norm") + _statistic(long, "sum")
        torch.set_num_threads(threads)
        assert Editor(model).weights_key() == key
        assert memoised.weights_key() == key and memoised._weights.fingerprint.recomputed == 0
        assert _statistic(long, "norm") + _statistic(long, "sum") == stats
        exact = [
            t.double() for t in long
        ]  # float32 rows, float64 total: within float32 rounding of the exact values
        assert _statistic(long, "norm") == pytest.approx([float(t.norm()) for t in exact], rel=1e-6)
        for got, t in zip(_statistic(long, "sum"), exact, strict=True):
            assert got == pytest.approx(float(t.sum()), abs=1e-6 * float(t.abs().sum()))
    finally:
        torch.set_num_threads(before)


def test_weights_key_sees_peft_adapters_loaded_and_toggled(model):
    peft = pytest.importorskip("peft")
    editor = Editor(model)
    keys = [editor.weights_key()]
    model.unet.add_adapter(
        peft.LoraConfig(r=2, lora_alpha=2, target_modules=["to_q"], init_lora_weights=False)
    )
    keys.append(editor.weights_key())
    model.unet.disable_adapters()
    keys.append(editor.weights_key())
    model.unet.enable_adapters()
    assert editor.weights_key() == keys[1] and len(set(keys)) == 3


def test_reuse_inversion_switch_clear_cache_and_a_bounded_prompt_cache(model, job):
    editor = Editor(model, prompt_cache_size=2)
    first = editor.edit(*job)
    assert editor.edit(*job).report.inversion_reused
    fresh = editor.edit(*job, reuse_inversion=False)
    assert not fresh.report.inversion_reused and _same(fresh, first)
    editor.clear_cache()
    assert not editor.plan(*job).inversion_cached and len(editor._prompt_cache) == 0
    assert not editor.edit(*job).report.inversion_reused
    for p in ("a", "b", "c"):
        editor._prompt(p)
    assert len(editor._prompt_cache) == 2
    with pytest.raises(ArgumentTypeError, match="prompt_cache_size"):
        Editor(model, prompt_cache_size=0)


def test_invert_hands_out_a_copy_of_the_inversion_an_edit_starts_from(model, job):
    """``Editor.invert``: the edit's encode and invert stages only (one UNet call per step, at the inversion's
    timesteps in inversion order), cached for the next edit and answered from the cache; the tensors are copies, so
    changing them changes no later edit; ``latents[n]`` is the encoded image the step hook sees."""
    image, spec = job
    n = spec.sampler.steps
    calls: list[object] = []
    counter = model.unet.register_forward_pre_hook(lambda m, a: calls.append(torch.as_tensor(a[1]).tolist()))
    editor = Editor(model)
    dry = editor.plan(image, spec)
    try:
        inv = editor.invert(image, spec)
        fresh_calls = list(calls)
        cached = editor.invert(image, spec)
        assert len(calls) == len(fresh_calls)  # the cache answered: no UNet call
    finally:
        counter.remove()
    assert not inv.reused and cached.reused and editor.plan(image, spec).inversion_cached
    assert len(inv.timesteps) == n and list(inv.timesteps) == sorted(inv.timesteps, reverse=True)
    assert fresh_calls[:n] == list(reversed(inv.timesteps))  # DDIM inversion: t_{n-1} first
    assert len(fresh_calls) == dry.cost.inversion_forward + (1 if dry.cost.guidance else 0)
    w, h = dry.canvas.latent_size
    assert len(inv.latents) == n + 1 and all(z.shape == (1, 4, h, w) for z in inv.latents)
    assert set(inv.guidance_features) <= set(dry.guided_steps) and inv.guidance_features
    assert all(f.shape[0] == 1 for fs in inv.guidance_features.values() for f in fs)
    start, end = dry.kv_window
    assert inv.kv_layers == dict.fromkeys(range(start, end), editor.bank_layers)
    assert inv.cond.shape[0] == 1 and torch.equal(inv.feature_cond, inv.cond)
    for a, b in zip(inv.latents, cached.latents, strict=True):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()  # the same values, each call its own copy
    encoded = []
    first = editor.edit(*job, callback_on_step_end=lambda e: e.phase == "encode" and encoded.append(e.latent))
    assert first.report.inversion_reused and torch.equal(encoded[0], inv.latents[n])
    for z in inv.latents:
        z.add_(1.0)  # the caller's copies: the Editor's cached inversion is not touched
    for fs in inv.guidance_features.values():
        fs[0].zero_()
    inv.cond.zero_()
    second = editor.edit(*job)
    assert second.report.inversion_reused and _same(second, first)
    assert _same(first, Editor(load_model("tiny", device="cpu")).edit(*job))
    again = editor.invert(image, spec, reuse_inversion=False)
    assert not again.reused and all(
        torch.equal(a, b) for a, b in zip(again.latents, cached.latents, strict=True)
    )


def test_invert_refuses_what_edit_refuses_and_caches_nothing_then(model, job):
    image, spec = job
    editor = Editor(model)
    with pytest.raises(SpecError, match="spec: no file at"):
        editor.invert(image, "no-such-spec.json")
    outside = DragSpec.model_validate({**spec.model_dump(), "points": [[[9000, 10], [20, 20]]]})
    with pytest.raises(SpecError, match=r"points\[0\]\.handle: .* is outside the"):
        editor.invert(image, outside)
    assert not editor.plan(*job).inversion_cached


# -- item 10: the dry run -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("time_travel", [False, True])
def test_plan_runs_no_model_and_predicts_the_unet_evaluations(model, job, time_travel):
    image, spec = job
    if time_travel:
        spec = DragSpec.model_validate(
            {
                **spec.model_dump(),
                "sampler": {
                    "steps": 6,
                    "resolution": 64,
                    "time_travel": {"enabled": True, "start": 0.0, "end": 1.0},
                },
            }
        )
    editor = Editor(model, probe_energy_after=True)
    calls = []
    hook = model.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        dry = editor.plan(image, spec)
        assert not calls  # no UNet evaluation
        assert not dry.inversion_cached and dry.cost.inversion_forward == dry.steps
        assert dry.guided_steps == dry.plan.guided_steps and dry.guided_steps
        assert dry.kv_window == (dry.plan.kv.start, dry.plan.kv.end)
        assert dry.plan.edit_mask.shape == (dry.canvas.latent_size[1], dry.canvas.latent_size[0])
        result = editor.edit(image, spec)
        assert result.report.unet_evaluations == dry.cost.to_dict()
        assert dry.backend == result.report.backend
        if time_travel:
            assert any(p > 1 for p in result.plan.time_travel.values())
        calls.clear()
        again = editor.plan(image, spec)
        assert not calls and again.inversion_cached and again.cost.inversion_forward == 0
        assert editor.edit(image, spec).report.unet_evaluations == again.cost.to_dict()
    finally:
        hook.remove()


@pytest.mark.parametrize("official_cost", [False, True])
def test_plan_cost_matches_region_drag_and_the_official_cost(model, job, official_cost):
    """Cycle-SDE inversion (region-drag), recomputed guidance features and the step-0 own reference counted."""
    image, spec = job
    square = [[100, 100], [160, 100], [160, 160], [100, 160]]
    region = {
        "mode": "region-drag",
        "polygons": [{"handle": square, "target": [[x + 20, y] for x, y in square]}],
        "sampler": {"steps": 6, "resolution": 64},
    }
    editor = Editor(model, official_cost=official_cost)
    for s in (region, spec):
        dry = editor.plan(image, s)
        assert editor.edit(image, s).report.unet_evaluations == dry.cost.to_dict()


def test_plan_does_not_propose_masks_unless_asked(model, car_sample):
    editor = Editor(model)
    path, _ = car_sample
    spec = {"mode": "move", "handle": [200, 200], "dx": 10, "dy": 0, "sampler": FAST}
    with pytest.raises(SpecError, match="dry run does not run the model"):
        editor.plan(path, spec)
    dry = editor.plan(path, spec, propose_mask=True)  # one feature forward proposes the mask
    assert dry.plan.edit_mask.any() and any("proposed" in n for n in dry.plan.notes)


# -- item 12: one-line errors -------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_clear_line(model):
    for make in (
        lambda: Editor("tiny", device="cuda"),
        lambda: Editor(model).to("cuda"),
        lambda: Editor(model, device="cuda:0"),
    ):
        with pytest.raises(DeviceUnavailableError, match="CUDA is not available") as info:
            make()
        assert "\n" not in str(info.value)
    assert model.device == torch.device("cpu")
    with pytest.raises(DeviceUnavailableError, match="not a torch device name"):
        Editor(model).to("gpu")


def test_wrong_argument_types_are_named(model, job):
    image, spec = job
    cases = [
        (lambda: Editor(123), "model"),
        (lambda: Editor(model, backend=None), "backend"),
        (lambda: Editor("tiny", torch_dtype="float16"), "torch_dtype"),
        (lambda: Editor(model).edit(image, spec, generator=0), "generator"),
        (lambda: Editor(model).edit(image, spec, callback_on_step_end="print"), "callback_on_step_end"),
    ]
    for make, field in cases:
        with pytest.raises(ArgumentTypeError) as info:
            make()
        assert info.value.field == field and str(info.value).startswith(f"{field}: expected")
        assert isinstance(info.value, TypeError) and "\n" not in str(info.value)
    for make, field in (
        (lambda: Editor(model).edit(42, spec), "image"),
        (lambda: Editor(model).edit(image, 5), "spec"),
    ):
        with pytest.raises(
            SpecError, match=f"^{field}: expected"
        ) as info:  # the readers' own one-line refusals
            make()
        assert info.value.field == field and "\n" not in str(info.value)


def test_a_host_euler_scheduler_is_converted_on_a_copy_and_flow_matching_is_refused(model, job):
    from diffusers import (
        DDIMScheduler,
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
        StableDiffusionPipeline,
    )

    sched = EulerDiscreteScheduler.from_config(model.scheduler.config)
    sched.set_timesteps(7)
    state = (sched.timesteps.clone(), sched.sigmas.clone(), dict(sched.config), sched.num_inference_steps)
    pipe = StableDiffusionPipeline(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    editor = Editor.from_pipe(pipe)
    assert isinstance(editor.model.scheduler, DDIMScheduler) and pipe.scheduler is sched
    editor.edit(*job)
    assert (
        pipe.scheduler is sched
        and torch.equal(sched.timesteps, state[0])
        and torch.equal(sched.sigmas, state[1])
    )
    assert dict(sched.config) == state[2] and sched.num_inference_steps == state[3]
    pipe.scheduler = FlowMatchEulerDiscreteScheduler()
    with pytest.raises(ModelLoadError, match="FlowMatchEulerDiscreteScheduler has no beta schedule") as info:
        Editor.from_pipe(pipe)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_a_host_pipeline_toggling_a_real_lora_matches_a_fresh_editor_each_time(model, job, tmp_path):
    """The issue's case: a host loads, fuses, unfuses and disables a LoRA with diffusers between edits; every edit
    equals a fresh Editor's on the same weights, and none reuses the inversion made on other weights."""
    pytest.importorskip("peft")
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    donor = load_model("tiny", device="cpu").unet
    donor.add_adapter(
        LoraConfig(
            r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False
        )
    )
    StableDiffusionPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(donor))
    )
    pipe = StableDiffusionPipeline(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=model.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    editor = Editor.from_pipe(pipe)
    results = [editor.edit(*job)]
    for toggle in (
        lambda: pipe.load_lora_weights(tmp_path),
        pipe.fuse_lora,
        pipe.unfuse_lora,
        pipe.disable_lora,
    ):
        toggle()
        r = editor.edit(*job)
        assert not r.report.inversion_reused and _same(r, Editor.from_pipe(pipe).edit(*job))
        results.append(r)
    assert not _same(results[1], results[0])  # the LoRA changes the edit
    assert editor.edit(*job).report.inversion_reused  # unchanged weights: reused
