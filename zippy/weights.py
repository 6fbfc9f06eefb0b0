"""Weights files: ``{"config": dict, "state_dict": dict, "meta": dict}`` saved with torch.save and
loaded with ``weights_only=True`` and strict keys. Shipped weights live in the repository's weights/
folder (installed as the ``zippy_weights`` package): ``<name>.pt`` is the shipped model ``<name>``, a
backbone name (``zippypoint.pt``) or a variant of one (``zippypoint_small.pt``: the config inside says
which backbone and widths).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from zippy.io import atomic_path
from zippy.models import KeypointNet, ModelConfig, build_network

__all__ = [
    "build_model",
    "file_sha256",
    "load_model",
    "load_weights",
    "save_weights",
    "shipped_models",
    "shipped_weights",
]


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_dir() -> Path:
    """Folder searched for shipped weights: $ZIPPY_WEIGHTS_DIR, else the installed weights/ folder."""
    env = os.environ.get("ZIPPY_WEIGHTS_DIR")
    if env:
        return Path(env)
    try:
        import zippy_weights

        return Path(zippy_weights.__file__).parent
    except ImportError:
        return Path(__file__).resolve().parents[1] / "weights"


def shipped_weights(name: str) -> Path | None:
    """Path of the shipped weights of model ``name`` (a backbone or a variant), or None when none ship."""
    if not name or Path(name).name != name or name.startswith("."):
        return None  # a plain file stem only: never a path out of the weights folder
    path = weights_dir() / f"{name}.pt"
    return path if path.is_file() else None


def shipped_models() -> list[str]:
    """Names of the shipped models (the ``<name>.pt`` files of :func:`weights_dir`), sorted."""
    folder = weights_dir()
    return sorted(p.stem for p in folder.glob("*.pt") if p.is_file()) if folder.is_dir() else []


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file in the same folder, then rename: never a half-written file."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def save_weights(path: str | os.PathLike, model: KeypointNet, meta: dict[str, Any] | None = None) -> Path:
    """Write a weights file for ``model`` (fp32 state dict, config, meta)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return atomic_torch_save({"config": model.cfg.to_dict(), "state_dict": state, "meta": dict(meta or {})}, path)


def load_weights(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Read (config, state_dict, meta) from a weights file.

    Raises:
        FileNotFoundError: the file does not exist (the message names the path).
        ValueError: the file is not a zippy weights file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt / foreign pickles
        raise ValueError(f"{path} is not a readable weights file: {e}") from e
    if not isinstance(blob, dict) or not {"config", "state_dict"} <= set(blob):
        raise ValueError(f"{path} is not a zippy weights file (expected keys config, state_dict, meta)")
    from zippy.quant.packing import unpack_state_dict

    try:
        cfg = ModelConfig.from_dict(blob["config"])
        state = unpack_state_dict(blob["state_dict"])
        meta = dict(blob.get("meta", {}))
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as e:
        raise ValueError(f"{path} is not a valid zippy weights file: {type(e).__name__}: {e}") from e
    return cfg, state, meta


def build_model(cfg: ModelConfig, state_dict: dict[str, torch.Tensor] | None = None) -> KeypointNet:
    """Build the network of ``cfg`` and load ``state_dict`` with strict keys.

    Raises:
        ValueError: ``state_dict`` does not fit the network (missing / unexpected keys, wrong shapes).
    """
    model = build_network(cfg)
    if state_dict is not None:
        try:
            model.load_state_dict(state_dict, strict=True)
        except RuntimeError as e:  # torch's message lists the keys; keep its first lines
            lines = str(e).strip().splitlines()
            brief = " ".join(line.strip() for line in lines[:3])[:500]
            raise ValueError(f"weights do not fit the {cfg.backbone!r} network: {brief}") from e
    return model


def load_model(path: str | os.PathLike) -> tuple[KeypointNet, dict[str, Any]]:
    """Build and load the network stored in a weights file; returns (model in eval mode, meta)."""
    cfg, sd, meta = load_weights(path)
    return build_model(cfg, sd).eval(), meta
