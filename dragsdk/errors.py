"""Exceptions raised by dragsdk. Each names what was wrong and what was expected."""

from __future__ import annotations


class DragSDKError(Exception):
    """Base class of every dragsdk error."""


class SpecError(DragSDKError, ValueError):
    """An edit spec, image or geometry that cannot be edited.

    Attributes:
        field: dotted path of the offending field, e.g. ``points[1].target`` or ``mask``.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class ModelNotFoundError(DragSDKError, OSError):
    """A model id or folder that cannot be loaded (absent, offline and not cached, or not in diffusers layout)."""


class ModelLoadError(ModelNotFoundError):
    """A model that was found but cannot be used: a broken folder, an unsupported family or prediction type, a
    checkpoint of another architecture, LoRA weights that match nothing. The message names what was found."""


class UnsafePickleError(DragSDKError, ValueError):
    """A pickle asked for an object outside the allow-list; nothing in it was run."""


class BackendUnavailableError(DragSDKError, RuntimeError):
    """The requested backend cannot run here, or none covers the edit."""


class PluginError(DragSDKError):
    """A plugin registered something invalid (a duplicate name, a mode without a spec model, ...)."""


class NonFiniteError(DragSDKError, ArithmeticError):
    """The latent (or the decoded image) went NaN or ±inf; the edit stopped and wrote nothing.

    Attributes:
        phase: ``encoding``, ``inversion``, ``optimisation``, ``sampling`` or ``decoding``.
        step: the step index (sampling step ``i``, or the inversion step reaching it), None outside the loops.
        timestep: the diffusion timestep of that step, None outside the loops.
    """

    def __init__(self, phase: str, step: int | None = None, timestep: int | None = None) -> None:
        self.phase, self.step, self.timestep = phase, step, timestep
        where = f"{phase} step {step} (timestep {timestep})" if step is not None else phase
        super().__init__(
            f"the latent became NaN or infinite during {where}; nothing was written. Lower energy_scale, "
            "guidance_step, the weights or guidance_scale, or run in float32"
        )


class EditCancelled(DragSDKError):
    """The edit was cancelled by its step hook or its ``cancel`` event; nothing was returned or cached, and the
    Editor is ready for the next edit.

    Attributes:
        phase: ``encode``, ``invert``, ``optimise``, ``sample`` or ``decode``: the phase whose step asked to stop.
        step: the number of steps of that phase done when it stopped (``1 … total``).
        total: the phase's step count.
    """

    def __init__(self, phase: str, step: int, total: int) -> None:
        self.phase, self.step, self.total = phase, step, total
        super().__init__(f"edit cancelled after {phase} step {step}/{total}; nothing was returned or cached")


class DeviceUnavailableError(DragSDKError, RuntimeError):
    """A device that this machine does not have (``cuda`` without a CUDA build or GPU), or not a device name."""


class ArgumentTypeError(DragSDKError, TypeError):
    """An argument of the wrong type.

    Attributes:
        field: the argument's name.
    """

    def __init__(self, field: str, expected: str, got: object) -> None:
        self.field = field
        super().__init__(f"{field}: expected {expected}, got {type(got).__name__}")


class HostAttentionError(DragSDKError, RuntimeError):
    """The UNet carries attention processors of the host (an IP-Adapter's, a custom one) that an edit would
    bypass: dragsdk installs its own K/V processors for the edit, so it refuses rather than ignore them silently.

    Attributes:
        processors: the class names of the foreign processors.
    """

    def __init__(self, processors: list[str], layers: int) -> None:
        self.processors = processors
        super().__init__(
            f"the UNet has host attention processors {', '.join(processors)} on {layers} layers, which an edit would "
            "bypass; remove them (e.g. pipe.unload_ip_adapter() or unet.set_default_attn_processor()), or, for an "
            "IP-Adapter loaded with diffusers' load_ip_adapter, compose it: Editor.from_pipe(pipe) or "
            "editor.use_host_ip_adapter(pipe.image_encoder)"
        )


class OutputError(DragSDKError, OSError):
    """An output file could not be written (a read-only folder, a full disk); nothing partial is left behind."""
