"""What an :class:`~dragsdk.editor.Editor` keeps beside its model: the image-prompt adapter (loaded by the editor or
adopted from the host pipeline) and the identity of the weights the caches are keyed by. Small objects the editor
delegates to; the editor holds the model's lock around every call that changes them and drops its caches.
"""

from __future__ import annotations

import os
from typing import Any

from .attention import foreign_processors
from .cache import WeightsFingerprint
from .errors import HostAttentionError, ModelLoadError
from .image_prompt import host_adapter_installed
from .models import ModelBundle


class ImagePromptSlot:
    """The image-prompt adapter (IP-Adapter, :mod:`dragsdk.image_prompt`) an editor edits with, or none.

    Attributes:
        adapter: the adapter (``name``, ``scale`` override, ``host`` flag, ``processors``, ``state(...)``), or None.
    """

    def __init__(self, model: ModelBundle) -> None:
        self.model = model
        self.adapter: Any = None

    def load(
        self,
        folder_or_id: str | os.PathLike[str],
        weight_name: str,
        subfolder: str = "",
        image_encoder: str | os.PathLike[str] | Any | None = None,
        scale: float | None = None,
    ) -> None:
        """Read an IP-Adapter with diffusers' loader pieces (:func:`dragsdk.image_prompt.load_ip_adapter`); nothing
        is installed on the UNet.

        Raises:
            ModelNotFoundError: the weights or the image encoder are absent.
            ModelLoadError: the file is not an IP-Adapter for this UNet.
        """
        from .image_prompt import load_ip_adapter

        m = self.model
        self.adapter = load_ip_adapter(
            m.unet, folder_or_id, weight_name, subfolder, image_encoder, scale, m.device, m.dtype
        )

    def adopt_host(self, image_encoder: Any) -> None:
        """Compose the IP-Adapter the host loaded into the UNet (:func:`dragsdk.image_prompt.host_ip_adapter`).

        Raises:
            ModelLoadError: the UNet has no IP-Adapter, more than one, or ``image_encoder`` is None.
        """
        from .image_prompt import host_ip_adapter

        adapter = host_ip_adapter(self.model.unet, image_encoder)
        if adapter is None:
            raise ModelLoadError(
                "the UNet carries no IP-Adapter processors (load one with the host pipeline's "
                "load_ip_adapter, or use Editor.load_ip_adapter)"
            )
        self.adapter = adapter

    def unload(self) -> None:
        """Drop the adapter: the modes run text-only."""
        self.adapter = None

    def live(self) -> Any:
        """The adapter an edit would use now, without changing anything: None when a host adapter adopted earlier
        has since been unloaded or replaced by the host."""
        a = self.adapter
        if a is not None and a.host and not host_adapter_installed(self.model.unet, a):
            return None
        return a

    def for_edit(self) -> tuple[Any, bool]:
        """The adapter to edit with, and whether a stale host adapter was dropped (the caller then drops the
        inversion it conditioned). The caller holds the model's lock.

        Raises:
            HostAttentionError: the UNet carries host processors that an edit would bypass (not a composed adapter).
        """
        adapter = self.live()
        dropped = adapter is None and self.adapter is not None
        if dropped:
            self.adapter = None
        composed = adapter.processors.values() if adapter is not None and adapter.host else ()
        foreign = foreign_processors(self.model.unet, composed)
        if foreign:
            raise HostAttentionError(sorted(foreign), sum(foreign.values()))
        return adapter, dropped


class WeightsIdentity:
    """The identity of a model's weights (:func:`dragsdk.cache.weights_fingerprint` of the UNet, VAE and text
    encoders), memoised per parameter (:class:`dragsdk.cache.WeightsFingerprint`).

    Attributes:
        fingerprint: the memo (its ``recomputed`` counts the parameters the last call read).
    """

    def __init__(self, model: ModelBundle) -> None:
        self.model = model
        self.fingerprint = WeightsFingerprint()

    def key(self) -> str:
        """The current key; the caller holds the model's lock."""
        m = self.model
        return self.fingerprint(
            {"unet": m.unet, "vae": m.vae, "text_encoder": m.text_encoder, "text_encoder_2": m.text_encoder_2}
        )
