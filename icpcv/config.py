"""The run configuration: a frozen dataclass, written to the run directory as given.

Its hash (with the fold plan's and the data's) names what "the same run" means. Fields that do
not change the numbers (where it runs, how it reports progress) are kept out of the hash.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from icpcv.util import canonical_hash

DEFAULT_MODELS_VOLUMES = ("mean", "ols_iop", "ridge_scan", "cnn")
DEFAULT_MODELS_LABELS = ("mean", "ols_iop", "ols_iop2", "mixedlm_iop")


@dataclass(frozen=True)
class RunConfig:
    manifest: str | None = None  # None: the built-in synthetic cohort
    scans_dir: str | None = None  # seed format: folder with <id>.pt
    phantom: str = "small"
    signal: float = 1.0
    data_seed: int = 0
    models: tuple[str, ...] = DEFAULT_MODELS_VOLUMES
    folds: int | None = None  # None: one per subject
    split: str = "subjects"
    val_fraction: float = 0.25
    seed: int = 0
    shape: tuple[int, int, int] | None = None  # (X, Y, Z=depth); None: the phantom's, or (32, 32, 64)
    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    patience: int = 10
    augment: bool = True
    reference: str = "ols_iop"
    n_boot: int = 10000
    ci_level: float = 0.95
    skip_bad_scans: bool = False
    # CNN training (icpcv.train): see docs/gpu.md
    optimizer: str = "adamw"  # adamw | adam | adamax (the seed's)
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    pretrained: str | None = None  # warm-start checkpoint for the 3D ResNets (MedicalNet or a state dict)
    preset: str | None = None  # the --preset that filled in the defaults (recorded only)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["models"] = list(self.models)
        d["shape"] = list(self.shape) if self.shape else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if d.get("models") is not None:
            d["models"] = tuple(d["models"])
        if d.get("shape") is not None:
            d["shape"] = tuple(int(s) for s in d["shape"])
        return cls(**d)

    @property
    def hash(self) -> str:
        return canonical_hash(self.to_dict())

    @property
    def synthetic(self) -> bool:
        return self.manifest is None

    def diff(self, other: "RunConfig") -> list[str]:
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {b[k]!r} -> {a[k]!r}" for k in a if a[k] != b.get(k)]
