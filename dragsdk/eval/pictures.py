"""Pictures of benchmark samples (used by the worker and the report): thumbnails, and :func:`draw_arrows`: the edited
image with each handle → target arrow (red → blue) and, when MD ran, the DIFT match of each handle (green cross): how
far the content got from where it should be."""

from __future__ import annotations

import math
from typing import Any

from PIL import Image, ImageDraw


def thumbnail(image: Image.Image, width: int) -> Image.Image:
    """``image`` scaled to at most ``width`` pixels wide (aspect kept), RGB."""
    img = image.convert("RGB")
    if img.size[0] <= width:
        return img
    return img.resize((width, max(1, round(img.size[1] * width / img.size[0]))), Image.Resampling.LANCZOS)


def draw_arrows(
    image: Image.Image,
    points: list[Any],
    matches: list[Any] | None = None,
    width: int | None = None,
) -> Image.Image:
    """The image, dimmed, with handle → target arrows (red dot → blue head) and the matched handles (green crosses).

    Args:
        image: usually the edited image.
        points: ``[[handle, target], ...]`` in the image's pixels.
        matches: ``[[x, y], ...]`` per pair (MD's matches), or None.
        width: scale the result to at most this width (points follow).
    """
    img = thumbnail(image, width) if width else image.convert("RGB")
    img = Image.blend(img, Image.new("RGB", img.size, (0, 0, 0)), 0.35)  # dimmed, so the marks stand out
    s = img.size[0] / image.size[0]
    d = ImageDraw.Draw(img)
    lw = max(3, round(img.size[0] / 150))
    r = 2 * lw
    for (hx, hy), (tx, ty) in points:
        hx, hy, tx, ty = hx * s, hy * s, tx * s, ty * s
        d.line([(hx, hy), (tx, ty)], fill=(255, 255, 255), width=lw + 2)
        d.line([(hx, hy), (tx, ty)], fill=(230, 40, 40), width=lw)
        ang = math.atan2(ty - hy, tx - hx)
        head = [(tx, ty)] + [
            (tx - 3 * r * math.cos(ang + a), ty - 3 * r * math.sin(ang + a)) for a in (0.45, -0.45)
        ]
        d.polygon(head, fill=(40, 90, 240))
        d.ellipse([hx - r, hy - r, hx + r, hy + r], fill=(230, 40, 40), outline=(255, 255, 255))
    for m in matches or []:
        mx, my = m[0] * s, m[1] * s
        d.line([(mx - 2 * r, my - 2 * r), (mx + 2 * r, my + 2 * r)], fill=(40, 220, 60), width=lw)
        d.line([(mx - 2 * r, my + 2 * r), (mx + 2 * r, my - 2 * r)], fill=(40, 220, 60), width=lw)
    return img


# -- plots ----------------------------------------------------------------------------------------------------


__all__ = ["draw_arrows", "thumbnail"]
