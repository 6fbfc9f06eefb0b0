"""Model configuration: one frozen dataclass, saved inside every weights file."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["TOPOLOGIES", "ModelConfig"]

TOPOLOGIES = ("kp2d", "fast")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a network; unknown keys raise.

    Attributes:
        backbone: registered backbone name (see zippy.models.available()).
        widths: encoder stage widths at 1/2, 1/4, 1/8 resolution.
        feat_dim: channels at 1/8 resolution (heads' input).
        desc_dim: descriptor length in bits (binary) or floats.
        desc_ones: ones per binary descriptor (k of the binary normalization).
        cell: keypoint cell size in pixels (one keypoint per cell).
        cross_ratio: offsets may move a keypoint cross_ratio * (cell - 1) / 2 px from the cell centre.
        temperature: BinNormTrain temperature (training only).
        residual_range: symmetric range of the 8-bit fake-quantized residual stream.
        options: backbone-specific extra settings (e.g. bit widths of compression backbones).
        topology: "kp2d" (:class:`~zippy.models.net.KeypointNet`, the paper's) or "fast"
            (:class:`~zippy.models.fastnet.FastKeypointNet`, CPU-first); files without it are "kp2d".
    """

    backbone: str = "zippypoint"
    widths: tuple[int, int, int] = (32, 64, 128)
    feat_dim: int = 256
    desc_dim: int = 256
    desc_ones: int = 64
    cell: int = 8
    cross_ratio: float = 2.0
    temperature: float = 0.5
    residual_range: float = 6.0
    options: tuple[tuple[str, Any], ...] = ()
    topology: str = "kp2d"

    def __post_init__(self) -> None:
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"unknown topology {self.topology!r}; choose one of {list(TOPOLOGIES)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON / torch.save friendly)."""
        d = asdict(self)
        d["widths"] = list(self.widths)
        d["options"] = dict(self.options)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; expected a subset of {sorted(known)}")
        d = dict(d)
        if "widths" in d:
            d["widths"] = tuple(int(w) for w in d["widths"])
        if "options" in d:
            opts = d["options"]
            d["options"] = tuple(sorted(dict(opts).items())) if not isinstance(opts, tuple) else opts
        return cls(**d)

    def option(self, key: str, default: Any = None) -> Any:
        """A backbone-specific option."""
        return dict(self.options).get(key, default)
