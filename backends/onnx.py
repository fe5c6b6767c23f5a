"""The ``onnx`` backend: ONNX Runtime for everything that needs no gradient.

What runs in ONNX Runtime (CPU ``onnxruntime``; ``onnxruntime-gpu`` through the ``cuda`` extra):

- **VAE** encode (``image (B, 3, H, W) in [-1, 1] → latent (B, 4, H/8, W/8)``, posterior mean × scaling factor) and
  decode (``latent → image``, clamped to [-1, 1]), through :meth:`OnnxBackend.vae_encode` /
  :meth:`OnnxBackend.vae_decode`.
- **The UNet** of gradient-free plans with no K/V injection or ``replace`` injection (the region-drag path: Cycle-SDE
  inversion recording K/V, sampling replacing them). One graph per (model, batch, latent size, bank layers, dtype):

  ``unet_kv(sample, timestep, encoder_hidden_states, use_bank, k_in_0, v_in_0, …) → (eps, k_0, v_0, …)``

  with ``sample (B, 4, h, w)``, ``timestep (1,)`` int64, ``encoder_hidden_states (B, 77, D)``, ``use_bank`` a bool
  scalar, ``k_in_i / v_in_i (1, N_i, C_i)`` the bank entry of bank layer ``i`` and ``k_i / v_i (B, N_i, C_i)`` that
  layer's own ``to_k`` / ``to_v`` projections (what :class:`~dragsdk.attention.KVProcessor` records). With
  ``use_bank`` false the graph is the plain UNet and returns the K/V to record; with ``use_bank`` true every bank
  layer attends to the given K/V only (``replace``). One graph serves ``record``, ``replace`` and ``plain``: each
  graph holds a copy of the weights, so separate record / replace / plain graphs would triple the disk use (3.4 GB
  each for SD 1.5 in float32) and the export time, for a saving of the bank layers' ``to_k``/``to_v`` in replace mode.
  Shapes are static (one graph per batch size and latent size; region drag runs batch 1 only).

The per-step state stays in the shared :class:`~dragsdk.attention.AttentionController`: the callable returned by
:meth:`OnnxBackend.prepare_unet_for_edit` reads ``controller.mode`` / ``step`` / ``injection`` / ``bank`` at every
call, stores the returned K/V into ``controller.bank`` in ``record`` mode (same layer names, ``(B, N, C)``) and feeds
the bank's K/V in ``inject`` mode. Nothing per step is baked into a graph.

Graphs are exported with ``torch.onnx.export(..., dynamo=True)`` (falling back to the TorchScript exporter, with the
reason recorded in ``meta.json`` and a warning, only when the dynamo exporter fails) and cached under
``<cache>/onnx/<key>/`` (``<cache>`` = ``$DRAGSDK_CACHE_DIR`` or ``platformdirs.user_cache_dir("dragsdk")``), the key a
hash of the model name, its config, a weight fingerprint taken at every graph lookup
(:class:`dragsdk.cache.WeightsFingerprint`: a LoRA fused in place later gives a new graph, never the stale one), the
shapes, the dtype, the graph format and the torch / onnx / onnxscript versions. A graph is written into a temporary
folder and renamed into place, so readers never see a partial export.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .base import (
    Backend,
    BackendUnavailableError,
    Capabilities,
    KVSource,
    ProcessorBase,
    WeightsFingerprint,
    hookimpl,
    split_heads,
)
from .eager import sdpa_over_sources

__all__ = ["GRAPH_FORMAT", "OnnxBackend", "OrtUNet", "UNetKVGraph", "onnx_cache_dir"]

GRAPH_FORMAT = 1
"""Bumped whenever the exported graphs change meaning; part of every cache key."""

INSTALL_HINT = "onnxruntime is not installed (pip install 'dragsdk[onnx]')"

_NP_DTYPES = {torch.float32: "float32", torch.float16: "float16"}


def onnx_cache_dir() -> Path:
    """Where exported graphs are kept: ``$DRAGSDK_CACHE_DIR/onnx``, else ``user_cache_dir("dragsdk")/onnx``."""
    root = os.environ.get("DRAGSDK_CACHE_DIR")
    if not root:
        from platformdirs import user_cache_dir

        root = user_cache_dir("dragsdk")
    return Path(root).expanduser() / "onnx"


# -- the export-side modules --------------------------------------------------------------------------------------


class _KVState:
    """What one forward of :class:`UNetKVGraph` passes to its processors (set at the start of every forward)."""

    def __init__(self) -> None:
        self.use_bank: torch.Tensor | None = None
        self.kv_in: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.kv_out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


class _ExportProcessor(ProcessorBase):
    """A stateless twin of :class:`~dragsdk.attention.KVProcessor` for export: a bank layer returns its own K/V
    through the state and, where ``use_bank`` is true, attends to the K/V given as graph inputs (``replace``)."""

    def __init__(self, state: _KVState, layer: str, bank: bool) -> None:
        self.state = state
        self.layer = layer
        self.bank = bank

    def attend(
        self,
        attn: Any,
        k: torch.Tensor,
        v: torch.Tensor,
        qh: torch.Tensor,
        kh: torch.Tensor,
        vh: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        st = self.state
        heads = attn.heads
        if self.bank:
            st.kv_out[self.layer] = (k, v)
            given = st.kv_in.get(self.layer)
            if given is not None and mask is None:
                assert st.use_bank is not None
                # replace: the bank entry (1, H, N, d), broadcast over the batch, no norm_k (as KVProcessor).
                bk, bv = split_heads(given[0].to(k.dtype), heads), split_heads(given[1].to(v.dtype), heads)
                kh = torch.where(st.use_bank, bk, kh)
                vh = torch.where(st.use_bank, bv, vh)
        return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=attn.scale)


class UNetKVGraph(torch.nn.Module):
    """The exported UNet: ``(sample, timestep, encoder_hidden_states, use_bank, kv_in) → (eps, k_0, v_0, …)``.

    Args:
        unet: a diffusers ``UNet2DConditionModel``.
        layers: the bank layers (attention module names without ``.processor``), in graph order.

    Call inside :meth:`installed`, which puts stateless export processors on the UNet (and restores the previous
    ones). ``kv_in`` is a tuple ``(k_in_0, v_in_0, k_in_1, …)`` of ``(1, N_i, C_i)`` tensors, or empty (no bank input:
    a probe of the K/V shapes). Outputs: ``eps (B, 4, h, w)`` then ``k_i, v_i (B, N_i, C_i)`` per bank layer.
    """

    def __init__(self, unet: Any, layers: Sequence[str]) -> None:
        super().__init__()
        self.unet = unet
        self.layers = list(layers)
        self.state = _KVState()

    @contextlib.contextmanager
    def installed(self) -> Iterator[UNetKVGraph]:
        previous = dict(self.unet.attn_processors)
        bank = set(self.layers)
        procs = {}
        for name in previous:
            layer = name[: -len(".processor")]
            procs[name] = _ExportProcessor(self.state, layer, layer in bank)
        self.unet.set_attn_processor(procs)
        try:
            yield self
        finally:
            self.unet.set_attn_processor(previous)
            self.state.kv_in, self.state.kv_out, self.state.use_bank = {}, {}, None

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        use_bank: torch.Tensor,
        kv_in: tuple[torch.Tensor, ...] = (),
    ) -> tuple[torch.Tensor, ...]:
        st = self.state
        st.use_bank = use_bank
        st.kv_in = (
            {name: (kv_in[2 * i], kv_in[2 * i + 1]) for i, name in enumerate(self.layers)} if kv_in else {}
        )
        st.kv_out = {}
        eps = self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
        outs: list[torch.Tensor] = [eps]
        for name in self.layers:
            outs.extend(st.kv_out[name])
        st.kv_in, st.kv_out = {}, {}
        return tuple(outs)


class VAEEncodeGraph(torch.nn.Module):
    """``image (B, 3, H, W) in [-1, 1] → latent (B, 4, H/8, W/8)``: posterior mean × ``scaling_factor``."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(image).latent_dist.mean * self.vae.config.scaling_factor


class VAEDecodeGraph(torch.nn.Module):
    """``latent (B, 4, h, w) → image (B, 3, 8h, 8w)`` clamped to [-1, 1]."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent / self.vae.config.scaling_factor).sample.clamp(-1, 1)


# -- export and cache ---------------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import onnx
    import onnxscript

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxscript": onnxscript.__version__}


def _config_hash(module: Any) -> str:
    cfg = dict(getattr(module, "config", {}) or {})
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")[-48:] or "model"


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[io.StringIO]:
    """Silence the exporter's progress prints and its 'torchvision is not installed' warnings."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.onnx._internal.exporter._registration")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(buf), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def _error_line(e: BaseException) -> str:
    """``Type: first line`` of an exception and of its cause, ANSI colours stripped."""
    parts = []
    for x in (e, e.__cause__):
        if x is not None:
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(x)).strip()
            parts.append(f"{type(x).__name__}: {text.splitlines()[0] if text else ''}")
    return " <- ".join(parts)


def export_graph(
    module: torch.nn.Module,
    args: tuple[Any, ...],
    folder: Path,
    input_names: list[str],
    output_names: list[str],
) -> dict[str, Any]:
    """Export ``module(*args)`` to ``folder/model.onnx`` (weights in ``model.onnx.data``) at the shapes of ``args``.

    Shapes are static: a dynamic batch axis doubles the dynamo exporter's time (symbolic shapes through the
    whole UNet), and region drag only ever runs batch 1.

    Args:
        args: example inputs (a tuple argument is flattened into consecutive graph inputs).
        input_names / output_names: names of the flattened inputs and outputs.

    Returns:
        ``{"exporter", "fallback_reason", "seconds"}``.

    Raises:
        RuntimeError: both exporters failed (the message has both errors).
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    t0 = time.perf_counter()
    info: dict[str, Any] = {"exporter": "dynamo", "fallback_reason": None}
    try:
        with torch.no_grad(), _quiet_exporter():
            prog = torch.onnx.export(
                module,
                args,
                dynamo=True,
                input_names=input_names,
                output_names=output_names,
                optimize=False,
                verbose=False,
            )
            prog.save(str(path), external_data=True)
    except Exception as e:  # the dynamo exporter raises many error types (export, translation, onnxscript)
        reason = _error_line(e)  # the backend warns with it (OnnxBackend._record) and meta.json keeps it
        for p in folder.iterdir():
            p.unlink()
        try:
            with torch.no_grad(), _quiet_exporter():
                torch.onnx.export(
                    module,
                    args,
                    str(path),
                    dynamo=False,
                    input_names=input_names,
                    output_names=output_names,
                    opset_version=17,
                )
        except Exception as e2:
            raise RuntimeError(
                f"ONNX export failed: dynamo exporter: {reason}; TorchScript exporter: "
                f"{type(e2).__name__}: {e2}"
            ) from e2
        info = {"exporter": "torchscript", "fallback_reason": reason}
    info["seconds"] = round(time.perf_counter() - t0, 3)
    return info


class GraphCache:
    """Exported graphs under ``root/<key>/`` (``model.onnx``, ``model.onnx.data``, ``meta.json``), written atomically.

    Args:
        root: the cache folder (default :func:`onnx_cache_dir` at each call).
    """

    def __init__(self, root: Path | None = None) -> None:
        self._root = root
        self._lock = threading.Lock()

    @property
    def root(self) -> Path:
        return self._root if self._root is not None else onnx_cache_dir()

    @staticmethod
    def key(parts: dict[str, Any]) -> str:
        """``<model>-<kind>-<hash>`` of the key parts (JSON, sorted)."""
        digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]
        return f"{_safe(str(parts.get('model', 'model')))}-{parts.get('graph', 'graph')}-{digest}"

    def get(self, key: str) -> tuple[Path, dict[str, Any]] | None:
        """``(model.onnx path, meta)`` when the graph is cached, else None."""
        folder = self.root / key
        meta = folder / "meta.json"
        if (folder / "model.onnx").is_file() and meta.is_file():
            return folder / "model.onnx", json.loads(meta.read_text())
        return None

    def get_or_export(
        self, key: str, export: Callable[[Path], dict[str, Any]]
    ) -> tuple[Path, dict[str, Any], bool]:
        """The cached graph, exporting it first when absent: ``export(folder)`` writes ``model.onnx`` into a
        temporary folder and returns the meta; the folder is then renamed to ``root/key``.

        Returns:
            ``(model.onnx path, meta, exported_now)``.

        Raises:
            RuntimeError: the export failed (nothing is left in the cache).
        """
        with self._lock:
            hit = self.get(key)
            if hit is not None:
                return (*hit, False)
            if (self.root / key).exists():  # damaged by hand (renames are atomic): export it again
                shutil.rmtree(self.root / key, ignore_errors=True)
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key[:40]}-", dir=self.root))
            try:
                meta = export(tmp)
                (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
                try:
                    os.rename(tmp, self.root / key)
                except OSError:  # another process renamed its export into place first: use that one
                    if self.get(key) is None:
                        raise
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
            hit = self.get(key)
            assert hit is not None
            return (*hit, True)


# -- the runtime side ---------------------------------------------------------------------------------------------


def _to_numpy(x: torch.Tensor, dtype: torch.dtype) -> Any:
    return x.detach().to("cpu", dtype).contiguous().numpy()


class OrtUNet:
    """The UNet callable of one edit: the diffusers signature, run by ONNX Runtime, driven by the controller.

    ``OrtUNet(sample, timestep, encoder_hidden_states=c, return_dict=False) → (eps,)`` with ``sample (B, 4, h, w)``,
    ``timestep`` an int or a 0-d / 1-element tensor, ``c (B or 1, 77, D)``. Per call it reads the controller:

    - ``record`` (at a step in ``record_steps``, or every step when None): runs the graph with ``use_bank`` false and
      puts each bank layer's ``(k, v)`` ``(B, N, C)`` into ``controller.bank`` at ``controller.step``;
    - ``inject`` with a ``replace`` injection and a bank entry at this step: feeds bank row ``injection.banks[0]`` of
      every bank layer (``use_bank`` true);
    - otherwise (``plain``): the plain UNet.

    Raises:
        BackendUnavailableError: a ``concat`` / ``composite`` injection, or a call that needs gradients.
    """

    def __init__(self, backend: OnnxBackend, model: Any, controller: Any) -> None:
        self.backend = backend
        self.model = model
        self.unet = model.unet
        self.controller = controller
        bank = set(controller.bank_layers) if controller is not None else set()
        self.layers = [
            k[: -len(".processor")] for k in self.unet.attn_processors if k[: -len(".processor")] in bank
        ]
        self._graphs: dict[tuple[int, int, int], tuple[Any, dict[str, Any], list[Any]]] = {}

    # diffusers-like attributes some callers read
    @property
    def config(self) -> Any:
        return self.unet.config

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _graph(self, shape: tuple[int, int, int]) -> tuple[Any, dict[str, Any], list[Any]]:
        """``(session, meta, zero K/V inputs)`` for a ``(batch, h, w)`` latent."""
        if shape not in self._graphs:
            import numpy as np

            if self.model.dtype not in _NP_DTYPES:
                raise BackendUnavailableError(
                    f"the onnx backend runs float32 / float16, not {self.model.dtype}"
                )
            path, meta = self.backend.unet_graph(self.model, self.layers, shape)
            zeros = [np.zeros(s, dtype=_NP_DTYPES[self.model.dtype]) for s in meta["kv_in_shapes"]]
            self._graphs[shape] = (self.backend.session(path, self.model.device), meta, zeros)
        return self._graphs[shape]

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: int | torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        return_dict: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor]:
        import numpy as np

        if encoder_hidden_states is None:
            raise ValueError("encoder_hidden_states is required")
        extra = {k: v for k, v in kwargs.items() if v is not None}
        if extra:
            raise BackendUnavailableError(f"the onnx backend's UNet takes no {sorted(extra)}")
        if torch.is_grad_enabled() and (sample.requires_grad or encoder_hidden_states.requires_grad):
            raise BackendUnavailableError(
                "the onnx backend has no gradients (ONNX Runtime inference sessions)"
            )
        ctl = self.controller
        b = sample.shape[0]
        session, meta, zeros = self._graph((int(b), int(sample.shape[-2]), int(sample.shape[-1])))
        dtype = self.model.dtype
        cond = encoder_hidden_states
        if cond.shape[0] == 1 and b > 1:
            cond = cond.expand(b, -1, -1)
        t = torch.as_tensor(timestep).reshape(-1)[:1].to("cpu", torch.int64).numpy()
        feeds: dict[str, Any] = {
            "sample": _to_numpy(sample, dtype),
            "timestep": t,
            "encoder_hidden_states": _to_numpy(cond, dtype),
        }
        mode = "plain"
        if ctl is not None and self.layers:
            if ctl.mode == "record" and (ctl.record_steps is None or ctl.step in ctl.record_steps):
                mode = "record"
            elif ctl.mode == "inject" and ctl.injection is not None and ctl.bank.has(ctl.step):
                if ctl.injection.mode != "replace":
                    raise BackendUnavailableError(
                        f"the onnx backend runs K/V 'replace' only, not {ctl.injection.mode!r}"
                    )
                mode = "replace"
        names = meta["kv_in_names"]
        if mode == "replace":
            row = ctl.injection.banks[0]
            feeds["use_bank"] = np.array(True)
            for i, layer in enumerate(self.layers):
                k, v = ctl.bank.get(ctl.step, layer, torch.device("cpu"))
                feeds[names[2 * i]] = _to_numpy(k[row : row + 1], dtype)
                feeds[names[2 * i + 1]] = _to_numpy(v[row : row + 1], dtype)
        else:
            feeds["use_bank"] = np.array(False)
            feeds.update(zip(names, zeros, strict=True))
        outputs = ["eps", *meta["kv_out_names"]] if mode == "record" else ["eps"]
        res = session.run(outputs, feeds)
        device = sample.device
        eps = torch.from_numpy(res[0]).to(device, sample.dtype)
        if mode == "record":
            for i, layer in enumerate(self.layers):
                k = torch.from_numpy(res[1 + 2 * i]).to(device, dtype)
                v = torch.from_numpy(res[2 + 2 * i]).to(device, dtype)
                ctl.bank.put(ctl.step, layer, k, v)
        return (eps,)


class OnnxBackend(Backend):
    """ONNX Runtime for the gradient-free path (VAE, and the UNet with no or ``replace`` K/V injection).

    Attributes:
        exports: one :class:`dict` per graph exported by this process (``key``, ``graph``, ``seconds``,
            ``exporter``, ``fallback_reason``).
        loads: paths of the graphs loaded into a session, in order.
    """

    name = "onnx"
    description = "ONNX Runtime (VAE and the gradient-free region-drag UNet; K/V in and out of the graph)"
    priority = 0

    def __init__(self, cache: GraphCache | None = None) -> None:
        self.cache = cache or GraphCache()
        self.exports: list[dict[str, Any]] = []
        self.loads: list[str] = []
        self._sessions: dict[tuple[str, str], Any] = {}
        self._caps: Capabilities | None = None
        self._lock = threading.Lock()
        self._idents: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()
        self._weights: weakref.WeakKeyDictionary[Any, WeightsFingerprint] = weakref.WeakKeyDictionary()

    # -- declaration ----------------------------------------------------------------------------------------
    @staticmethod
    def _providers() -> list[str]:
        try:
            import onnxruntime as ort
        except Exception:
            return []
        return list(ort.get_available_providers())

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        """cpu (+ cuda with the CUDA execution provider), float32 (+ float16 on CUDA), no gradients, K/V
        ``plain`` / ``replace``, SD 1.x / 2.x models (the exported UNet graph has no SDXL ``added_cond_kwargs``
        inputs)."""
        if self._caps is None:
            cuda = "CUDAExecutionProvider" in self._providers()
            self._caps = Capabilities(
                devices=("cpu", "cuda") if cuda else ("cpu",),
                dtypes=("float32", "float16") if cuda else ("float32",),
                gradients=False,
                kv_modes=("plain", "replace"),
                families=("sd1", "sd2"),
                image_prompt=False,  # the exported graphs have no image-prompt (IP-Adapter) inputs
            )
        return self._caps

    def availability(self) -> tuple[bool, str]:
        try:
            import onnxruntime  # noqa: F401
        except Exception:
            return False, INSTALL_HINT
        missing = []
        for mod in ("onnx", "onnxscript"):
            try:
                __import__(mod)
            except Exception:
                missing.append(mod)
        if missing:
            return False, (
                f"{' and '.join(missing)} not installed (the torch ONNX exporter needs them; "
                "pip install 'dragsdk[onnx]')"
            )
        return True, ""

    def attention(
        self, q: torch.Tensor, sources: Sequence[KVSource], scale: float | None = None
    ) -> torch.Tensor:
        # Used only where the torch UNet still runs with the installed processors (e.g. mask suggestion).
        return sdpa_over_sources(q, sources, scale)

    # -- sessions -------------------------------------------------------------------------------------------
    def session(self, path: Path, device: torch.device) -> Any:
        """An ``onnxruntime.InferenceSession`` of ``path`` for ``device`` (cached in memory); intra-op threads =
        ``torch.get_num_threads()``."""
        import onnxruntime as ort

        key = (str(path), device.type)
        with self._lock:
            if key not in self._sessions:
                so = ort.SessionOptions()
                so.intra_op_num_threads = max(1, torch.get_num_threads())
                so.inter_op_num_threads = 1
                so.log_severity_level = 3
                providers = ["CPUExecutionProvider"]
                if device.type == "cuda" and "CUDAExecutionProvider" in self._providers():
                    providers = [
                        ("CUDAExecutionProvider", {"device_id": device.index or 0}),
                        "CPUExecutionProvider",
                    ]
                self._sessions[key] = ort.InferenceSession(str(path), so, providers=providers)
                self.loads.append(str(path))
            return self._sessions[key]

    def clear_sessions(self) -> None:
        """Drop the in-memory sessions (the next use loads the cached graphs from disk again)."""
        with self._lock:
            self._sessions.clear()

    # -- graphs ---------------------------------------------------------------------------------------------
    def _key_parts(self, model: Any, module: Any, graph: str, **extra: Any) -> dict[str, Any]:
        with self._lock:
            config = self._idents.get(module)
            if config is None:
                config = self._idents[module] = {"config": _config_hash(module)}
            fingerprint = self._weights.get(module)
            if fingerprint is None:
                fingerprint = self._weights[module] = WeightsFingerprint()
        # At every lookup: a LoRA fused into the weights in place (W.data writes) gives another graph, never the
        # stale one (dragsdk.cache.WeightsFingerprint reads each weight once, as its norm).
        weights = fingerprint({"module": module})
        return {
            "graph": graph,
            "format": GRAPH_FORMAT,
            "model": model.name,
            **config,
            "weights": weights,
            "dtype": str(model.dtype).removeprefix("torch."),
            **_versions(),
            **extra,
        }

    def _ensure_available(self) -> None:
        ok, why = self.availability()
        if not ok:
            raise BackendUnavailableError(f"backend 'onnx' cannot run here: {why}")

    def _record(self, key: str, meta: dict[str, Any], exported: bool) -> None:
        if exported:
            self.exports.append(
                {
                    "key": key,
                    "graph": meta.get("graph"),
                    "seconds": meta.get("seconds"),
                    "exporter": meta.get("exporter"),
                    "fallback_reason": meta.get("fallback_reason"),
                }
            )
            if meta.get("fallback_reason"):
                warnings.warn(
                    f"dragsdk onnx: the dynamo exporter failed for {key}, exported with the TorchScript "
                    f"exporter instead: {meta['fallback_reason']}",
                    stacklevel=3,
                )

    def unet_graph(
        self, model: Any, layers: Sequence[str], shape: tuple[int, int, int]
    ) -> tuple[Path, dict[str, Any]]:
        """The cached (or newly exported) ``unet_kv`` graph of ``model`` for bank ``layers`` (names without
        ``.processor``, in graph order) and ``shape`` = ``(batch, h, w)`` of the latent.

        Returns:
            ``(model.onnx path, meta)``; meta holds ``kv_in_names``, ``kv_out_names``, ``kv_in_shapes``
            (``(1, N_i, C_i)``), ``layers``, ``exporter``, ``fallback_reason``, ``seconds``.

        Raises:
            BackendUnavailableError: onnxruntime / onnx / onnxscript missing. RuntimeError: the export failed.
        """
        self._ensure_available()
        unet = model.unet
        b, h, w = shape
        parts = self._key_parts(model, unet, "unet_kv", shape=[b, h, w], layers=list(layers))
        key = GraphCache.key(parts)

        def export(folder: Path) -> dict[str, Any]:
            wrapper = UNetKVGraph(unet, layers).eval()
            dev, dt = model.device, model.dtype
            d = unet.config.cross_attention_dim
            g = torch.Generator("cpu").manual_seed(0)
            z = torch.randn(b, unet.config.in_channels, h, w, generator=g).to(dev, dt)
            t = torch.tensor([500], dtype=torch.int64, device=dev)
            c = torch.randn(b, 77, d, generator=g).to(dev, dt)
            use = torch.tensor(False, device=dev)
            with wrapper.installed(), torch.no_grad():
                probe = wrapper(z, t, c, use, ())  # the K/V shapes
                kv_shapes = [tuple(o.shape[1:]) for o in probe[1:]]
                kv_in = tuple(torch.zeros(1, *s, dtype=dt, device=dev) for s in kv_shapes)
                in_names = [f"{kind}_in_{i}" for i in range(len(layers)) for kind in ("k", "v")]
                out_names = [f"{kind}_{i}" for i in range(len(layers)) for kind in ("k", "v")]
                info = export_graph(
                    wrapper,
                    (z, t, c, use, kv_in),
                    folder,
                    ["sample", "timestep", "encoder_hidden_states", "use_bank", *in_names],
                    ["eps", *out_names],
                )
            return {
                **parts,
                **info,
                "key": key,
                "layers": list(layers),
                "kv_in_names": in_names,
                "kv_out_names": out_names,
                "kv_in_shapes": [[1, *s] for s in kv_shapes],
            }

        path, meta, exported = self.cache.get_or_export(key, export)
        self._record(key, meta, exported)
        return path, meta

    def vae_graph(self, model: Any, kind: str, shape: tuple[int, int, int]) -> tuple[Path, dict[str, Any]]:
        """The cached (or newly exported) ``vae_encode`` / ``vae_decode`` graph for ``shape`` = ``(batch, h, w)``
        of the latent.

        Raises:
            ValueError: unknown ``kind``. BackendUnavailableError / RuntimeError: as :meth:`unet_graph`.
        """
        if kind not in ("vae_encode", "vae_decode"):
            raise ValueError(f"kind must be 'vae_encode' or 'vae_decode', got {kind!r}")
        self._ensure_available()
        vae = model.vae
        b, h, w = shape
        parts = self._key_parts(model, vae, kind, shape=[b, h, w])
        key = GraphCache.key(parts)

        def export(folder: Path) -> dict[str, Any]:
            f = model.vae_scale_factor
            g = torch.Generator("cpu").manual_seed(0)
            if kind == "vae_encode":
                module: torch.nn.Module = VAEEncodeGraph(vae).eval()
                x = torch.rand(b, 3, h * f, w * f, generator=g) * 2 - 1
                names = (["image"], ["latent"])
            else:
                module = VAEDecodeGraph(vae).eval()
                x = torch.randn(b, vae.config.latent_channels, h, w, generator=g)
                names = (["latent"], ["image"])
            x = x.to(vae.device, vae.dtype)
            info = export_graph(module, (x,), folder, *names)
            return {**parts, **info, "key": key}

        path, meta, exported = self.cache.get_or_export(key, export)
        self._record(key, meta, exported)
        return path, meta

    # -- the hooks the editor calls -------------------------------------------------------------------------
    def prepare_unet_for_edit(self, model: Any, controller: Any) -> OrtUNet:
        """An :class:`OrtUNet` for one edit (graphs are exported or loaded at its first call).

        Raises:
            BackendUnavailableError: an SDXL model (the exported graph has no ``added_cond_kwargs`` inputs).
        """
        self._ensure_available()
        if getattr(model, "family", "sd1") == "sdxl":
            raise BackendUnavailableError(
                "the onnx backend exports SD 1.x / 2.x UNets only; this model is SDXL "
                "(text_time conditioning); use backend 'eager' or 'compile'"
            )
        return OrtUNet(self, model, controller)

    @torch.no_grad()
    def vae_encode(self, model: Any, image: torch.Tensor) -> torch.Tensor:
        """As :meth:`dragsdk.models.ModelBundle.encode_image`: ``(B, 3, H, W)`` in [-1, 1] → ``(B, 4, H/8, W/8)``
        in the model's dtype and device, through ONNX Runtime."""
        f = model.vae_scale_factor
        path, _ = self.vae_graph(
            model, "vae_encode", (image.shape[0], image.shape[-2] // f, image.shape[-1] // f)
        )
        sess = self.session(path, model.device)
        out = sess.run(["latent"], {"image": _to_numpy(image, model.vae.dtype)})[0]
        return torch.from_numpy(out).to(model.device, model.dtype)

    @torch.no_grad()
    def vae_decode(self, model: Any, latent: torch.Tensor) -> torch.Tensor:
        """As :meth:`dragsdk.models.ModelBundle.decode_latent`: ``(B, 4, h, w)`` → ``(B, 3, 8h, 8w)`` in [-1, 1]
        (the VAE's dtype, the model's device), through ONNX Runtime."""
        path, _ = self.vae_graph(model, "vae_decode", (latent.shape[0], latent.shape[-2], latent.shape[-1]))
        sess = self.session(path, model.device)
        out = sess.run(["image"], {"latent": _to_numpy(latent, model.vae.dtype)})[0]
        return torch.from_numpy(out).to(model.device, model.vae.dtype)


@hookimpl
def dragsdk_register_backends(register):
    register(OnnxBackend())
