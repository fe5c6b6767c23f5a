"""The per-image LoRA stage (dragsdk.finetune, EditRun.finetune, dragdiffusion's lora_steps): training lowers the loss
and changes the UNet, the UNet is bit-identical afterwards (also on cancel and on an error, also a host's pipeline and
its own adapter), the on-disk cache (hit, misses, a corrupt file), progress, the dry run's count, the report, the
determinism of the seed, and loading a LoRA folder in the official repository's saved format."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from dragsdk import Editor
from dragsdk.errors import EditCancelled
from dragsdk.finetune import (
    ADAPTER_NAME,
    cache_dir,
    lora_key,
    lora_on_unet,
    random_crop,
    train_lora,
    training_image,
    working_image,
)
from dragsdk.inversion import UNetCounter
from dragsdk.plan import ImageLoRA

from .conftest import EXAMPLE_SAMPLE

IMAGE = EXAMPLE_SAMPLE / "original_image.png"
FAST = ImageLoRA(steps=3, rank=4, lr=1e-2, batch_size=1, resolution=64, seed=5)
LORA_SPEC = {"lora_steps": 2, "lora_rank": 4, "lora_batch_size": 1, "lora_resolution": 64}


def _spec(**kw):
    base = {
        "mode": "dragdiffusion",
        "prompt": "a car",
        "points": [[[131, 264], [200, 313]]],
        "n_pix_step": 1,
        "sampler": {"steps": 6, "resolution": 64, "seed": 7},
        **LORA_SPEC,
    }
    return {**base, **kw}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DRAGSDK_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _one_thread():
    """Bit-for-bit comparisons of trained edits need one intra-op thread: with several, some CPU backward kernels
    sum in another order from run to run (measured: 1e-5 differences in the edit's latent on 2 threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8))


def _snapshot(unet):
    """Everything about the UNet the stage must leave as it found it."""
    return {
        "state": {k: v.clone() for k, v in unet.state_dict().items()},
        "names": [n for n, _ in unet.named_parameters()],
        "grads": [p.requires_grad for p in unet.parameters()],
        "modes": [m.training for m in unet.modules()],
        "types": [type(m) for m in unet.modules()],
        "processors": {k: type(v) for k, v in unet.attn_processors.items()},
        "peft": dict(vars(unet).get("peft_config") or {}),
    }


def _same(a, b):
    assert a["names"] == b["names"]
    assert a["types"] == b["types"]
    assert a["grads"] == b["grads"]
    assert a["modes"] == b["modes"]
    assert a["processors"] == b["processors"]
    assert a["peft"].keys() == b["peft"].keys()
    assert a["state"].keys() == b["state"].keys()
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])


def _forward(model, unet=None):
    """The UNet's ε at a fixed latent and timestep (``unet``: another UNet of ``model``'s architecture)."""
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = model.encode_prompt("a car")
    with torch.no_grad():
        return (unet or model.unet)(z, 500, encoder_hidden_states=cond, return_dict=False)[0]


def _fixed_loss(model, image, state, lora):
    """The training loss at a fixed crop, noise and timestep with ``state`` on the UNet (None: the fresh LoRA,
    B = 0, so the base UNet)."""
    x = training_image(image, lora.resolution)[None]
    g = torch.Generator().manual_seed(123)
    with torch.no_grad(), lora_on_unet(model.unet, lora, state):
        z = (model.vae.encode(x).latent_dist.mean * model.vae.config.scaling_factor).expand(2, -1, -1, -1)
        noise = torch.randn(z.shape, generator=g)
        a = model.scheduler.alphas_cumprod[torch.tensor([300, 700])][:, None, None, None]
        zt = a.sqrt() * z + (1 - a).sqrt() * noise
        cond = model.encode_prompt("a car").expand(2, -1, -1)
        pred = model.unet(zt, torch.tensor([300, 700]), encoder_hidden_states=cond, return_dict=False)[0]
    return float(torch.nn.functional.mse_loss(pred, noise))


# -- training ---------------------------------------------------------------------------------------------------
def test_training_lowers_the_loss_on_the_image_and_changes_the_unet_output(tiny_model, image):
    lora = ImageLoRA(steps=12, rank=4, lr=1e-2, batch_size=2, resolution=64, seed=1)
    state, losses = train_lora(tiny_model, image, tiny_model.encode_prompt("a car"), lora, UNetCounter())
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert _fixed_loss(tiny_model, image, state, lora) < _fixed_loss(tiny_model, image, None, lora)
    base = _forward(tiny_model)
    with lora_on_unet(tiny_model.unet, lora, state):
        tuned = _forward(tiny_model)
    assert not torch.allclose(base, tuned)
    assert torch.equal(_forward(tiny_model), base)


def test_training_counts_one_graph_forward_and_one_backward_per_step(tiny_model, image):
    counter = UNetCounter()
    train_lora(tiny_model, image, tiny_model.encode_prompt("a car"), FAST, counter)
    assert counter.to_dict() == {"forward": 0, "forward_grad": 3, "backward": 3}


def test_the_unet_is_bit_identical_after_training(tiny_model, image):
    before, out = _snapshot(tiny_model.unet), _forward(tiny_model)
    tiny_model.unet.eval()
    train_lora(tiny_model, image, tiny_model.encode_prompt("a car"), FAST, UNetCounter())
    _same(before, _snapshot(tiny_model.unet))
    assert torch.equal(_forward(tiny_model), out)


def test_an_exception_mid_training_leaves_the_unet_bit_identical(tiny_model, image):
    before, out = _snapshot(tiny_model.unet), _forward(tiny_model)

    def boom(k, loss):
        if k == 1:
            raise RuntimeError("host failure")

    with pytest.raises(RuntimeError, match="host failure"):
        train_lora(tiny_model, image, tiny_model.encode_prompt("a car"), FAST, UNetCounter(), boom)
    _same(before, _snapshot(tiny_model.unet))
    assert torch.equal(_forward(tiny_model), out)


def test_the_same_seed_trains_the_same_lora_and_another_seed_another(tiny_model, image):
    cond = tiny_model.encode_prompt("a car")
    a, la = train_lora(tiny_model, image, cond, FAST, UNetCounter())
    b, lb = train_lora(tiny_model, image, cond, FAST, UNetCounter())
    c, _ = train_lora(tiny_model, image, cond, ImageLoRA(**{**FAST.settings(), "seed": 6}), UNetCounter())
    # the draws are the same; with several CPU threads some backward kernels sum in another order, so the trained
    # weights agree to float rounding, not necessarily bit for bit
    assert la == pytest.approx(lb, rel=1e-3)

    def rel(x, y):
        num = sum(float((x[k] - y[k]).norm() ** 2) for k in x) ** 0.5
        return num / sum(float(x[k].norm() ** 2) for k in x) ** 0.5

    assert rel(a, b) < 1e-3
    assert rel(a, c) > 100 * max(rel(a, b), 1e-6)  # another seed trains another LoRA, far beyond the rounding


def test_training_leaves_the_global_rng_alone(tiny_model, image):
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    train_lora(tiny_model, image, tiny_model.encode_prompt("a car"), FAST, UNetCounter())
    assert torch.equal(torch.rand(3), expected)


def test_the_lora_covers_every_attention_projection_at_its_rank(tiny_model, image):
    state, _ = train_lora(tiny_model, image, tiny_model.encode_prompt("a car"), FAST, UNetCounter())
    linear = [
        n
        for n, m in tiny_model.unet.named_modules()
        if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v")
    ]
    linear += [n for n, m in tiny_model.unet.named_modules() if n.endswith("to_out.0")]
    assert len(state) == 2 * len(linear)
    assert all(f"unet.{n}.lora_A.weight" in state for n in linear)
    assert all(v.shape[0] == 4 for k, v in state.items() if "lora_A" in k)


def test_the_random_crop_draws_its_offsets_from_the_generator_only_when_the_image_is_larger():
    x = torch.arange(3 * 6 * 9, dtype=torch.float32).reshape(3, 6, 9)
    g = torch.Generator().manual_seed(0)
    crop = random_crop(x, 4, g)
    assert crop.shape == (3, 4, 4)
    g2 = torch.Generator().manual_seed(0)
    i, j = int(torch.randint(0, 3, (1,), generator=g2)), int(torch.randint(0, 6, (1,), generator=g2))
    assert torch.equal(crop, x[:, i : i + 4, j : j + 4])
    state = g.get_state()
    assert torch.equal(random_crop(x[:, :4, :4], 4, g), x[:, :4, :4]) and torch.equal(g.get_state(), state)


def test_the_training_image_resizes_the_shorter_side_as_torchvision_does():
    img = Image.new("RGB", (300, 200), (255, 0, 0))
    x = training_image(img, 64)
    assert x.shape == (3, 64, 96) and float(x[0].min()) == 1.0 and float(x[1].max()) == -1.0


# -- the edit: cache, progress, dry run, report -------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_edit_loads_the_cached_lora_and_gives_the_same_result(editor):
    before = _snapshot(editor.model.unet)
    dry = editor.plan(IMAGE, _spec())
    a = editor.edit(IMAGE, _spec())
    assert a.report.finetune["cached"] is False and a.report.finetune["steps"] == 2
    assert len(a.report.finetune["losses"]) == 2 and "finetune" in a.report.phase_seconds
    assert dry.cost.to_dict() == a.report.unet_evaluations
    files = list(cache_dir().glob("*.safetensors"))
    assert [f.stem for f in files] == [a.report.finetune["key"]]
    dry2 = editor.plan(IMAGE, _spec())
    assert dry2.cost.forward_grad == dry.cost.forward_grad - 2 and dry2.inversion_cached
    b = editor.edit(IMAGE, _spec())
    assert b.report.finetune["cached"] is True and b.report.finetune["steps"] == 0
    assert dry2.cost.to_dict() == b.report.unet_evaluations
    assert b.report.inversion_reused
    assert torch.equal(a.latent, b.latent)
    _same(before, _snapshot(editor.model.unet))
    fresh = Editor(editor.model)  # another Editor (as another process would): the file, not a memo
    c = fresh.edit(IMAGE, _spec())
    assert c.report.finetune["cached"] is True and torch.equal(a.latent, c.latent)
    plain = editor.edit(IMAGE, _spec(lora_steps=0))
    assert plain.report.finetune is None and not plain.report.inversion_reused
    assert not torch.equal(plain.latent, a.latent)


def test_the_cache_key_changes_with_the_prompt_steps_image_seed_and_weights(image):
    key = lora_key(image, "a car", "w", FAST)
    other = image.copy()
    other.putpixel((0, 0), (0, 0, 0) if other.getpixel((0, 0)) != (0, 0, 0) else (1, 1, 1))
    changed = [
        lora_key(image, "a cat", "w", FAST),
        lora_key(image, "a car", "w2", FAST),
        lora_key(other, "a car", "w", FAST),
        lora_key(image, "a car", "w", ImageLoRA(**{**FAST.settings(), "steps": 4})),
        lora_key(image, "a car", "w", ImageLoRA(**{**FAST.settings(), "seed": 6})),
        lora_key(image, "a car", "w", ImageLoRA(**{**FAST.settings(), "lr": 2e-2})),
    ]
    assert key == lora_key(image.copy(), "a car", "w", FAST)
    assert len({key, *changed}) == 1 + len(changed)


@pytest.mark.slow
def test_an_edit_with_another_prompt_or_seed_trains_again(editor):
    a = editor.edit(IMAGE, _spec())
    b = editor.edit(IMAGE, _spec(prompt="a red car"))
    c = editor.edit(IMAGE, _spec(lora_seed=3))
    assert (
        not a.report.finetune["cached"]
        and not b.report.finetune["cached"]
        and not c.report.finetune["cached"]
    )
    assert len(set(p.stem for p in cache_dir().glob("*.safetensors"))) == 3


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_corrupt_cache_file_is_deleted_and_retrained_with_a_warning(editor, damage):
    a = editor.edit(IMAGE, _spec())
    path = cache_dir() / f"{a.report.finetune['key']}.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:  # a flipped byte in the last tensor's data: safetensors loads it, the checksum does not match
        data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="corrupt"):
        b = editor.edit(IMAGE, _spec())
    assert b.report.finetune["cached"] is False and b.report.finetune["steps"] == 2
    assert any("corrupt" in n for n in b.report.notes)
    assert torch.equal(a.latent, b.latent)  # the same seed retrains the same LoRA
    assert editor.edit(IMAGE, _spec()).report.finetune["cached"] is True


@pytest.mark.slow
def test_progress_reports_one_finetune_event_per_step_then_one_when_cached(editor):
    events = []
    editor.edit(IMAGE, _spec(), callback_on_step_end=lambda e: events.append((e.phase, e.step, e.total)))
    assert [e for e in events if e[0] == "finetune"] == [("finetune", 1, 2), ("finetune", 2, 2)]
    assert events[0][0] == "finetune"
    events.clear()
    editor.edit(IMAGE, _spec(), callback_on_step_end=lambda e: events.append((e.phase, e.step, e.total)))
    assert [e for e in events if e[0] == "finetune"] == [("finetune", 1, 1)]


@pytest.mark.slow
def test_cancelling_during_training_caches_nothing_and_leaves_the_unet_as_it_was(editor):
    before, out = _snapshot(editor.model.unet), _forward(editor.model)
    with pytest.raises(EditCancelled):
        editor.edit(
            IMAGE, _spec(lora_steps=3), callback_on_step_end=lambda e: e.phase == "finetune" and e.step == 2
        )
    assert list(cache_dir().glob("*")) == []
    _same(before, _snapshot(editor.model.unet))
    assert torch.equal(_forward(editor.model), out)


@pytest.mark.slow
def test_a_host_pipeline_and_its_own_adapter_are_unchanged_by_an_edit_with_a_lora(tiny_model):
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig

    unet = copy.deepcopy(tiny_model.unet)
    pipe = StableDiffusionPipeline(
        vae=tiny_model.vae,
        text_encoder=tiny_model.text_encoder,
        tokenizer=tiny_model.tokenizer,
        unet=unet,
        scheduler=tiny_model.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    unet.add_adapter(
        LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"], init_lora_weights=False), "host"
    )
    host = Editor.from_pipe(pipe)
    before, out = _snapshot(unet), _forward(tiny_model, unet)
    result = host.edit(IMAGE, _spec())
    assert result.report.finetune["steps"] == 2
    _same(before, _snapshot(unet))
    assert torch.equal(_forward(tiny_model, unet), out)
    assert list(unet.peft_config) == ["host"] and ADAPTER_NAME not in repr(unet)
    assert all(m.active_adapters == ["host"] for m in unet.modules() if hasattr(m, "lora_A"))


def test_the_working_image_is_what_the_key_hashes(image):
    assert working_image(image, (32, 32)).size == (32, 32) and working_image(image, (64, 64)).tobytes() == (
        image.tobytes()
    )


# -- a LoRA trained by the official code ----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["safetensors", "bin"])
def test_editor_load_lora_reads_the_official_save_lora_weights_folder(tiny_model, tmp_path, suffix):
    """The official ``train_lora`` saves ``unet_lora_state_dict(unet)`` with ``LoraLoaderMixin.save_lora_weights``
    (``utils/lora_utils.py:353-358``): keys ``unet.<attention>.to_q.lora.down.weight`` / ``lora.up.weight`` in
    ``pytorch_lora_weights.safetensors`` (``.bin`` with ``safe_serialization=False``)."""
    from safetensors.torch import save_file

    model = copy.copy(tiny_model)
    model.unet = copy.deepcopy(tiny_model.unet)
    g = torch.Generator().manual_seed(0)
    state = {}
    names = [n for n, _ in model.unet.named_modules() if n.endswith((".to_q", ".to_k", ".to_v", ".to_out.0"))]
    for n in names:
        layer = model.unet.get_submodule(n)
        state[f"unet.{n}.lora.down.weight"] = torch.randn(4, layer.in_features, generator=g) * 0.1
        state[f"unet.{n}.lora.up.weight"] = torch.randn(layer.out_features, 4, generator=g) * 0.1
    if suffix == "safetensors":
        save_file(state, str(tmp_path / "pytorch_lora_weights.safetensors"))
    else:
        torch.save(state, tmp_path / "pytorch_lora_weights.bin")
    editor = Editor(model)
    w = model.unet.get_submodule(names[0]).weight.detach().clone()
    editor.load_lora(tmp_path)
    down, up = state[f"unet.{names[0]}.lora.down.weight"], state[f"unet.{names[0]}.lora.up.weight"]
    assert torch.allclose(model.unet.get_submodule(names[0]).weight, w + up @ down, atol=1e-5)
    assert not torch.equal(model.unet.get_submodule(names[0]).weight, w)


@pytest.mark.slow
def test_a_v_prediction_model_trains_against_v_and_is_restored(image):
    from dragsdk.models import load_model

    model = load_model("tiny-sd2", device="cpu")
    assert model.adapter.prediction_type == "v_prediction"
    before = _snapshot(model.unet)
    lora = ImageLoRA(steps=6, rank=4, lr=1e-2, batch_size=2, resolution=64, seed=2)
    state, losses = train_lora(model, image, model.encode_prompt("a car"), lora, UNetCounter())
    assert len(losses) == 6 and all(np.isfinite(losses)) and any(v.abs().sum() > 0 for v in state.values())
    _same(before, _snapshot(model.unet))


@pytest.mark.slow
def test_concurrent_edits_with_and_without_the_lora_match_the_edits_run_alone(editor):
    import threading

    alone = [editor.edit(IMAGE, _spec()).latent, editor.edit(IMAGE, _spec(lora_steps=0)).latent]
    editor.clear_cache()
    out: dict[int, torch.Tensor] = {}

    def run(k, spec):
        out[k] = editor.edit(IMAGE, spec).latent

    threads = [
        threading.Thread(target=run, args=(0, _spec())),
        threading.Thread(target=run, args=(1, _spec(lora_steps=0))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.equal(out[0], alone[0]) and torch.equal(out[1], alone[1])


@pytest.mark.slow
def test_the_cached_file_is_a_diffusers_lora_that_editor_load_lora_fuses_to_the_same_edit(tiny_model):
    model = copy.copy(tiny_model)
    model.unet = copy.deepcopy(tiny_model.unet)
    a = Editor(tiny_model).edit(IMAGE, _spec())
    fused = Editor(model)
    fused.load_lora(a.report.finetune["path"])
    b = fused.edit(IMAGE, _spec(lora_steps=0))
    assert torch.allclose(
        a.latent, b.latent, atol=1e-4
    )  # fused W + B·A against the unfused adapter: rounding
