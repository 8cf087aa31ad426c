"""Export a trained encoder for use outside selfsup, and load it back.

Three formats, all holding the *backbone* only (pooled features ``[B, D]``, no projector):

- ``torchvision``: ``FILE.pt`` = the backbone's ``state_dict`` (plain tensors, loads with
  ``torch.load(FILE, weights_only=True)``) for the matching ``torchvision.models.resnetXX()`` with
  ``fc = nn.Identity()`` (and, for the small-image stem or other input channels, a replaced
  ``conv1``/``maxpool``), plus a sidecar ``FILE.json`` with the architecture, preprocessing
  (image size, mean, std) and the exact code that loads it. Width 1 and BatchNorm only: other
  widths and norms cannot be built by torchvision's constructors.
- ``safetensors``: ``FILE.safetensors`` with the weights and every setting needed to rebuild the
  backbone in its header metadata; any width and norm.
- ``onnx``: ``FILE.onnx`` of the backbone in eval mode, input ``images`` ``[batch, C, S, S]``
  (normalised floats, dynamic batch), output ``features`` ``[batch, D]``; the same settings are
  stored as ONNX ``metadata_props``. The export is checked against PyTorch with onnxruntime when
  it is installed.

A ``timm:NAME`` backbone exports as safetensors (timm's own ``state_dict`` keys; the timm version
is stored too, as the architecture is timm's code) or ONNX; not as torchvision.

Inputs of every format are preprocessed as selfsup's evaluation does: uint8 / 255, bilinear
(antialiased) resize to ``image_size``, then per-channel ``(x - mean) / std``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfsup import __version__
from selfsup.config import ConfigError
from selfsup.evaluation.frozen import eval_preprocess
from selfsup.io import atomic_write
from selfsup.models import build_backbone
from selfsup.models.timm_backbones import TimmError, import_timm, is_timm
from selfsup.runs import Run, load_run

FORMATS: dict[str, str] = {"torchvision": ".pt", "safetensors": ".safetensors", "onnx": ".onnx"}
FORMAT_TAG = "selfsup-encoder"
FORMAT_VERSION = 1
EXTRA_HINT = "pip install 'selfsup[export]'"


class ExportError(ConfigError):
    """An export or load that cannot be done as asked (one-line message naming the fix)."""


@dataclass
class EncoderInfo:
    """Everything needed to rebuild a backbone and feed it correctly."""

    backbone: str
    width: float
    in_channels: int
    small_stem: bool
    norm: str
    image_size: int
    mean: list[float]
    std: list[float]
    feature_dim: int
    method: str = ""
    data: str = ""
    selfsup_version: str = ""
    timm_version: str = ""  # timm:NAME backbones: the timm that built it

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EncoderInfo":
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in d and f.default is dataclasses.MISSING]
        if missing:
            raise ExportError(f"encoder metadata lacks {', '.join(missing)}; was it written by selfsup export?")
        info = cls(**{k: v for k, v in d.items() if k in names})
        info.width, info.in_channels, info.image_size = float(info.width), int(info.in_channels), int(info.image_size)
        info.small_stem, info.feature_dim = bool(info.small_stem), int(info.feature_dim)
        info.mean, info.std = [float(v) for v in info.mean], [float(v) for v in info.std]
        return info

    def to_strings(self) -> dict[str, str]:
        """Flat ``str -> str`` metadata (safetensors header, ONNX metadata_props): text raw, the rest JSON."""
        out = {"format": FORMAT_TAG, "format_version": str(FORMAT_VERSION)}
        for k, v in self.to_dict().items():
            out[k] = v if isinstance(v, str) else json.dumps(v)
        return out

    @classmethod
    def from_strings(cls, meta: dict[str, str]) -> "EncoderInfo":
        text_fields = {f.name for f in dataclasses.fields(cls) if f.type in ("str", str)}
        return cls.from_dict({k: (v if k in text_fields else json.loads(v)) for k, v in meta.items()
                              if k in {f.name for f in dataclasses.fields(cls)}})

    def preprocess(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """uint8 ``[B, C, H, W]`` -> the encoder's input (resize to ``image_size``, normalise)."""
        return eval_preprocess(self.image_size, self.mean, self.std)


# ---------------------------------------------------------------------------------------------
# sources: a run folder or an exported file


def info_from_run(run: Run) -> EncoderInfo:
    """The ``EncoderInfo`` of a loaded run."""
    encoder = run.encoder
    return EncoderInfo(backbone=run.config.backbone, width=float(run.config.width),
                       in_channels=_in_channels(encoder), small_stem=bool(run.resolved.small_stem),
                       norm=getattr(run.method, "backbone_norm", run.config.norm),  # a method may swap norms
                       image_size=int(run.resolved.image_size),
                       mean=[float(v) for v in run.mean], std=[float(v) for v in run.std],
                       feature_dim=int(encoder.feature_dim), method=run.config.method, data=run.config.data,
                       selfsup_version=__version__, timm_version=_timm_version(run.config.backbone))


def _timm_version(backbone: str) -> str:
    return import_timm(backbone).__version__ if is_timm(backbone) else ""


def _in_channels(encoder: nn.Module) -> int:
    """Input channels of a backbone: those of its first convolution (ResNet stem, ViT patch embedding)."""
    if isinstance(getattr(encoder, "in_channels", None), int):  # timm models: recorded when built
        return encoder.in_channels
    return int(next(m for m in encoder.modules() if isinstance(m, nn.Conv2d)).in_channels)


def _load_source(source: str | Path, device: str = "cpu") -> tuple[nn.Module, EncoderInfo]:
    """``(encoder in eval mode, info)`` from a run folder or an exported file."""
    path = Path(source)
    if path.is_dir():
        try:
            run = load_run(path, device=device)
            return run.encoder.eval(), info_from_run(run)
        except TimmError as e:  # a timm:NAME run without timm installed
            raise ExportError(str(e)) from e
    if not path.exists():
        raise ExportError(f"{path}: no such run folder or encoder file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _load_safetensors(path, device)
    if suffix in (".pt", ".pth"):
        return _load_torchvision(path, device)
    if suffix == ".onnx":
        raise ExportError(f"{path}: ONNX files run with onnxruntime (onnxruntime.InferenceSession), "
                          "not as a PyTorch module; load the run folder or a .safetensors export instead")
    raise ExportError(f"{path}: not a run folder, .safetensors or torchvision .pt export")


def load_encoder(source: str | Path, device: str = "cpu") -> nn.Module:
    """A ready encoder (``nn.Module`` in eval mode, features ``[B, D]``) from a run folder, a
    ``.safetensors`` export, or a torchvision ``.pt`` export with its ``.json`` sidecar.

    The module's ``selfsup_info`` attribute (an :class:`EncoderInfo`) holds the image size, mean
    and std its inputs need; ``selfsup_info.preprocess()`` turns uint8 images into such inputs.
    """
    encoder, info = _load_source(source, device)
    encoder.selfsup_info = info
    return encoder.eval()


def _build(info: EncoderInfo) -> nn.Module:
    try:
        return build_backbone(info.backbone, width=info.width, in_channels=info.in_channels,
                              small_stem=info.small_stem, norm=info.norm, image_size=info.image_size)
    except TimmError as e:
        raise ExportError(str(e)) from e


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], info: EncoderInfo, path: Path) -> None:
    """Strict ``load_state_dict``; for a timm model a mismatch most likely means another timm version."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        if not is_timm(info.backbone):
            raise
        installed = import_timm(info.backbone).__version__
        raise ExportError(f"{path}: its weights do not fit {info.backbone} as timm {installed} builds it (exported "
                          f"with timm {info.timm_version or '?'}); install that timm version") from e


# ---------------------------------------------------------------------------------------------
# export entry point


def default_out(source: str | Path, fmt: str) -> Path:
    """``RUN_DIR/export/encoder.<ext>`` (next to the file for a file source)."""
    path = Path(source)
    base = path if path.is_dir() else path.parent
    return base / "export" / f"encoder{FORMATS[fmt]}"


def export_encoder(source: str | Path, fmt: str = "safetensors", out: str | Path | None = None,
                   verify: bool = True) -> dict[str, Any]:
    """Export the backbone of a run folder (or a ``.safetensors``/``.pt`` export) as ``fmt``.

    Returns ``{"format", "path", "files", ...info}``; ``files`` lists everything written (the
    torchvision format adds a ``.json`` sidecar). Raises :class:`ExportError` with a one-line
    message when the format cannot represent this encoder or an optional package is missing.
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format: unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    encoder, info = _load_source(source)
    if fmt == "torchvision":
        check_torchvision_compatible(info)
    out_path = Path(out) if out is not None else default_out(source, fmt)
    if fmt == "torchvision" and out_path.suffix.lower() == ".json":
        raise ExportError(f"--out: {out_path} would collide with the .json sidecar; use e.g. encoder.pt")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    encoder = copy.deepcopy(encoder).cpu().float().eval()
    writer = {"torchvision": write_torchvision, "safetensors": write_safetensors, "onnx": write_onnx}[fmt]
    files = writer(encoder, info, out_path, **({"verify": verify} if fmt == "onnx" else {}))
    return {"format": fmt, "path": str(out_path), "files": [str(f) for f in files], **info.to_dict()}


def _require_missing_deps(modules: tuple[str, ...]) -> None:
    import importlib

    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(f"this needs the optional package(s) {', '.join(missing)}: {EXTRA_HINT}")


def _plain_state(encoder: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in encoder.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# torchvision


def check_torchvision_compatible(info: EncoderInfo) -> None:
    """Raise :class:`ExportError` unless torchvision's ``resnetXX()`` can hold this backbone."""
    import torchvision.models

    if is_timm(info.backbone):
        raise ExportError(f"--format torchvision: {info.backbone} is a timm model, which torchvision's constructors "
                          "cannot build; use --format safetensors (load with selfsup.load_encoder) or --format onnx")
    if not info.backbone.startswith("resnet") or not hasattr(torchvision.models, info.backbone):
        raise ExportError(f"--format torchvision: covers the ResNet backbones, not {info.backbone}; use --format "
                          "safetensors (load with selfsup.load_encoder) or --format onnx")
    if info.width != 1.0:
        widths = [max(4, int(round(w * info.width))) for w in (64, 128, 256, 512)]
        raise ExportError(
            f"--format torchvision: this {info.backbone} has width {info.width:g} (stage channels "
            f"{'-'.join(map(str, widths))}), which torchvision.models.{info.backbone}() cannot build (width 1 "
            f"only); use --format safetensors (load with selfsup.load_encoder) or --format onnx")
    if info.norm != "batchnorm":
        what = ("GroupNorm with weight-standardised convolutions" if info.norm == "groupnorm_ws"
                else f"norm {info.norm!r}")
        raise ExportError(
            f"--format torchvision: this backbone uses {what}, which torchvision's ResNet (BatchNorm, plain "
            f"convolutions) does not have; use --format safetensors (load with selfsup.load_encoder) or "
            f"--format onnx")


def torchvision_stem_lines(info: EncoderInfo) -> list[str]:
    """The stem changes (as code) that torchvision's ResNet needs for this backbone; [] if none."""
    if info.small_stem:
        return [f"m.conv1 = nn.Conv2d({info.in_channels}, 64, 3, 1, 1, bias=False)", "m.maxpool = nn.Identity()"]
    if info.in_channels != 3:
        return [f"m.conv1 = nn.Conv2d({info.in_channels}, 64, 7, 2, 3, bias=False)"]
    return []


def torchvision_load_code(info: EncoderInfo, weights: str) -> str:
    """Python code that loads a torchvision export with ``strict=True``."""
    lines = ["import torch, torchvision", "from torch import nn", f"m = torchvision.models.{info.backbone}()",
             "m.fc = nn.Identity()", *torchvision_stem_lines(info),
             f"m.load_state_dict(torch.load({weights!r}, weights_only=True), strict=True)", "m.eval()"]
    return "\n".join(lines)


def torchvision_resnet(info: EncoderInfo) -> nn.Module:
    """torchvision's ``resnetXX()`` shaped for ``info`` (fc removed, stem as trained), untrained."""
    import torchvision.models

    check_torchvision_compatible(info)
    m = getattr(torchvision.models, info.backbone)()
    m.fc = nn.Identity()
    if info.small_stem:
        m.conv1 = nn.Conv2d(info.in_channels, 64, 3, 1, 1, bias=False)
        m.maxpool = nn.Identity()
    elif info.in_channels != 3:
        m.conv1 = nn.Conv2d(info.in_channels, 64, 7, 2, 3, bias=False)
    return m


def sidecar_path(weights: str | Path) -> Path:
    """``encoder.pt`` -> ``encoder.json``."""
    return Path(weights).with_suffix(".json")


def write_torchvision(encoder: nn.Module, info: EncoderInfo, out: Path) -> list[Path]:
    check_torchvision_compatible(info)
    state = _plain_state(encoder)
    reference = torchvision_resnet(info)
    reference.load_state_dict(state, strict=True)  # fails here, not in the user's hands
    atomic_write(out, lambda tmp: torch.save(state, tmp))
    sidecar = sidecar_path(out)
    meta = {"format": "torchvision", "format_tag": FORMAT_TAG, "format_version": FORMAT_VERSION,
            "weights": out.name, "torchvision_model": f"torchvision.models.{info.backbone}",
            **info.to_dict(),
            "preprocess": f"uint8 / 255, bilinear antialiased resize to {info.image_size}x{info.image_size}, "
                          "then (x - mean) / std per channel",
            "load": torchvision_load_code(info, out.name).splitlines()}
    atomic_write(sidecar, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))
    return [out, sidecar]


def _load_torchvision(path: Path, device: str) -> tuple[nn.Module, EncoderInfo]:
    sidecar = sidecar_path(path)
    if not sidecar.exists():
        raise ExportError(f"{path}: its sidecar {sidecar.name} (architecture, mean, std) is missing; "
                          "it is written beside the .pt by `selfsup export --format torchvision`")
    info = EncoderInfo.from_dict(json.loads(sidecar.read_text()))
    model = torchvision_resnet(info)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.to(device).eval(), info


# ---------------------------------------------------------------------------------------------
# safetensors


def write_safetensors(encoder: nn.Module, info: EncoderInfo, out: Path) -> list[Path]:
    _require_missing_deps(("safetensors",))
    from safetensors.torch import save_file

    state = _plain_state(encoder)
    atomic_write(out, lambda tmp: save_file(state, tmp, metadata=info.to_strings()))
    return [out]


def read_safetensors_info(path: str | Path) -> EncoderInfo:
    """The :class:`EncoderInfo` stored in a ``.safetensors`` export's header."""
    _require_missing_deps(("safetensors",))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT_TAG:
        raise ExportError(f"{path}: not a selfsup encoder export (no {FORMAT_TAG!r} metadata in its header)")
    return EncoderInfo.from_strings(meta)


def _load_safetensors(path: Path, device: str) -> tuple[nn.Module, EncoderInfo]:
    from safetensors.torch import load_file

    info = read_safetensors_info(path)
    model = _build(info)
    _load_weights(model, load_file(str(path)), info, path)
    return model.to(device).eval(), info


# ---------------------------------------------------------------------------------------------
# ONNX


def write_onnx(encoder: nn.Module, info: EncoderInfo, out: Path, verify: bool = True) -> list[Path]:
    _require_missing_deps(("onnx",))
    import onnx

    example = torch.randn(2, info.in_channels, info.image_size, info.image_size,
                          generator=torch.Generator().manual_seed(0))

    def export(tmp: str) -> None:
        try:
            import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)
            dynamo = True
        except ImportError:
            dynamo = False
        kwargs: dict[str, Any] = (
            {"dynamo": True, "external_data": False, "dynamic_shapes": ({0: torch.export.Dim("batch")},)}
            if dynamo else {"dynamo": False, "dynamic_axes": {"images": {0: "batch"}, "features": {0: "batch"}}})
        with torch.no_grad():
            torch.onnx.export(encoder, (example,), tmp, input_names=["images"], output_names=["features"],
                              verbose=False, **kwargs)
        model = onnx.load(tmp)
        for key, value in info.to_strings().items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        model.doc_string = (f"selfsup {info.backbone} encoder: input 'images' [batch, {info.in_channels}, "
                            f"{info.image_size}, {info.image_size}] normalised with mean/std from the "
                            f"metadata, output 'features' [batch, {info.feature_dim}]")
        onnx.save(model, tmp)
        if verify:
            _verify_onnx(encoder, tmp, info)

    atomic_write(out, export)
    return [out]


def _verify_onnx(encoder: nn.Module, path: str, info: EncoderInfo) -> None:
    """Compare onnxruntime with PyTorch on batches of 1 and 3 (skipped without onnxruntime)."""
    try:
        import onnxruntime
    except ImportError:
        return
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(1)
    for batch in (1, 3):
        x = torch.randn(batch, info.in_channels, info.image_size, info.image_size, generator=gen)
        with torch.no_grad():
            ref = encoder(x)
        got = torch.from_numpy(session.run(["features"], {"images": x.numpy()})[0])
        err = (got - ref).abs().max().item()
        if got.shape != ref.shape or err > 1e-3 * max(1.0, ref.abs().max().item()):
            raise ExportError(f"--format onnx: onnxruntime output differs from PyTorch (max abs diff {err:.3g}, "
                              f"shapes {tuple(got.shape)} vs {tuple(ref.shape)}); please report this")


def read_onnx_info(path: str | Path) -> EncoderInfo:
    """The :class:`EncoderInfo` stored in an ONNX export's ``metadata_props``."""
    _require_missing_deps(("onnx",))
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if meta.get("format") != FORMAT_TAG:
        raise ExportError(f"{path}: not a selfsup encoder export (no {FORMAT_TAG!r} metadata)")
    return EncoderInfo.from_strings(meta)
