"""One Editor (or one model shared by two Editors) used from several threads gives exactly the sequential results,
and the inversion cache only ever holds what a successful edit computed (issue 12, item 1)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from dragsdk import Editor
from dragsdk.spec import DragSpec

# Small and cheap: 3 steps at 64², one guided step (the feature tap and the K/V bank still run), no time travel.
FAST = {
    "steps": 3,
    "resolution": 64,
    "schedule": {"end": 0.34, "dense_end": 0.34},
    "time_travel": {"enabled": False},
}
CLICKS = ((131, 264), (359, 180))


@pytest.fixture(autouse=True, scope="module")
def one_intra_op_thread():
    """Bit-exact comparisons need every run to reduce in the same order: with several intra-op threads even two
    sequential edits differ in the last bits (parallel reductions in the energy's backward pass), with one they do
    not. What is compared here is the effect of the Python threads sharing an Editor."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _jobs(car_sample):
    """Four edits: two share an inversion (same image and prompt, other targets), the others each need their own
    (the mirrored image; another prompt)."""
    path, spec = car_sample
    image = Image.open(path).convert("RGB")
    flipped = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    jobs = []
    for img, prompt, dx in (
        (image, "a car", 0),
        (image, "a car", 12),
        (flipped, "a car", 0),
        (flipped, "a street", 12),
    ):
        points = [[p[0], [p[1][0] + dx, p[1][1]]] for p in spec["points"]]
        jobs.append(
            (img, DragSpec.model_validate({**spec, "prompt": prompt, "points": points, "sampler": FAST}))
        )
    return jobs


def _same(result, reference) -> bool:
    return torch.equal(result.latent, reference.latent) and np.array_equal(
        np.asarray(result.image), np.asarray(reference.image)
    )


@pytest.fixture(scope="module")
def sequential(tiny_model, car_sample):
    """Each job run alone on a fresh Editor, and the proposed masks of two clicks."""
    jobs = _jobs(car_sample)
    edits = [Editor(tiny_model).edit(img, spec) for img, spec in jobs]
    image = Image.open(car_sample[0]).convert("RGB")
    masks = [Editor(tiny_model).suggest_mask(image, xy, resolution=64) for xy in CLICKS]
    return jobs, edits, masks


def test_threads_sharing_one_editor_and_one_model_get_the_sequential_results_bit_for_bit(
    tiny_model, car_sample, sequential
):
    """Four threads: two edits per job on one shared Editor, one more per job on a second Editor built on the same
    model bundle, and mask proposals, all at once."""
    jobs, reference, ref_masks = sequential
    shared, other = Editor(tiny_model), Editor(tiny_model)
    processors = {k: type(v) for k, v in tiny_model.unet.attn_processors.items()}
    image = Image.open(car_sample[0]).convert("RGB")
    tasks = [(shared, k) for k in range(len(jobs))] + [(other, k) for k in range(len(jobs))]
    with ThreadPoolExecutor(max_workers=4) as pool:
        edits = [pool.submit(ed.edit, *jobs[k]) for ed, k in tasks]
        masks = [pool.submit(shared.suggest_mask, image, xy, resolution=64) for xy in CLICKS]
        edits = [f.result() for f in edits]
        masks = [f.result() for f in masks]
    assert all(_same(r, reference[k]) for r, (_, k) in zip(edits, tasks, strict=True))
    assert all(np.array_equal(m, ref) for m, ref in zip(masks, ref_masks, strict=True))
    # the cache was left holding a correct inversion: sequential edits on the same Editor still match
    for k in (0, 1):
        assert _same(shared.edit(*jobs[k]), reference[k])
    # the host's attention processors are back, not one edit's
    assert {k: type(v) for k, v in tiny_model.unet.attn_processors.items()} == processors


def test_invert_from_threads_while_editing_gives_the_sequential_inversions(
    tiny_model, car_sample, sequential
):
    """``Editor.invert`` on a shared Editor while other threads edit other images: each thread gets the inversion
    a fresh Editor computes, as its own copy, and the edits their sequential results."""
    jobs, reference, _ = sequential
    want = [Editor(tiny_model).invert(*jobs[k]) for k in (0, 2)]
    shared = Editor(tiny_model)
    with ThreadPoolExecutor(max_workers=4) as pool:
        inversions = [pool.submit(shared.invert, *jobs[k]) for k in (0, 2, 0, 2)]
        edits = [pool.submit(shared.edit, *jobs[k]) for k in (1, 3)]
        inversions = [f.result() for f in inversions]
        edits = [f.result() for f in edits]
    assert all(_same(r, reference[k]) for r, k in zip(edits, (1, 3), strict=True))
    for got, ref in zip(inversions, want * 2, strict=True):
        assert len(got.latents) == len(ref.latents) and all(
            torch.equal(a, b) for a, b in zip(got.latents, ref.latents, strict=True)
        )
        assert got.guidance_features.keys() == ref.guidance_features.keys()
    # two results of one inversion never share storage, whether each was computed or answered from the cache
    assert inversions[0].latents[0].data_ptr() != inversions[2].latents[0].data_ptr()


class _Boom(RuntimeError):
    pass


def test_a_failed_edit_never_writes_the_inversion_cache(tiny_model, car_sample, sequential):
    jobs, reference, _ = sequential
    editor = Editor(tiny_model)
    first = editor.edit(*jobs[0])
    assert _same(first, reference[0])

    def fail_at_step(i, t, z):
        if i == 1:
            raise _Boom("injected failure after the inversion")

    with pytest.raises(_Boom):
        editor.edit(*jobs[2], callback=fail_at_step)  # another image: a new inversion, then a failure
    again = editor.edit(*jobs[1])  # same image and prompt as jobs[0]: the cache must still hold its inversion
    assert again.report.inversion_reused and _same(again, reference[1])
    retried = editor.edit(*jobs[2])
    assert not retried.report.inversion_reused and _same(retried, reference[2])


def test_the_host_scheduler_is_left_as_it_was(tiny_model, car_sample, sequential):
    jobs, _, _ = sequential
    scheduler = tiny_model.scheduler
    scheduler.set_timesteps(7)
    before = scheduler.timesteps.clone()
    Editor(tiny_model).edit(*jobs[0])
    assert torch.equal(scheduler.timesteps, before) and scheduler.num_inference_steps == 7


def test_threads_resolving_one_registry_at_once_all_see_the_complete_tables():
    """Resolution is swapped in whole under the registry's lock: a thread never reads a half-filled table, even
    while a slow plugin's hook is still registering (issue 12, item 1)."""
    import threading
    import time

    from dragsdk import hookimpl
    from dragsdk.registry import Registry

    reg = Registry()
    reg.load_entry_points()
    full = set(reg.modes)

    class Slow:
        @hookimpl
        def dragsdk_register_backends(self, register):
            time.sleep(0.2)

    reg.register_plugin(Slow(), "slow")  # forces a new resolution, slow in the middle
    seen, start = [], threading.Barrier(6)

    def read():
        start.wait()
        seen.append(set(reg.modes))

    threads = [threading.Thread(target=read) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [full] * 6
