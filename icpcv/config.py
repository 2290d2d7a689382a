"""Configurations: frozen dataclasses, the one home of every default.

* :class:`TrainConfig`: how a network is trained (the training loop's hyperparameters).
* :class:`RunConfig`: a whole run (data, models, folds, analysis), with a ``TrainConfig`` nested.
* :data:`PRESETS`: GPU set-ups (``run --preset``), each a :class:`Preset` whose ``train`` is
  ``TrainConfig()`` with some fields replaced; explicit options override them.

A run's config is written to its run directory as given; its hash (with the fold plan's and the
data's) names what "the same run" means. This module imports nothing heavy: the command line
reads its defaults for the help text.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from icpcv.util import canonical_hash

DEFAULT_MODELS_VOLUMES = ("mean", "ols_iop", "ridge_scan", "cnn")
DEFAULT_MODELS_LABELS = ("mean", "ols_iop", "ols_iop2", "mixedlm_iop")
#: fold-plan splits: "subjects" keeps every monkey on one side of every fold (the honest one);
#: "scans" is the leaky scan-level split, run only as the twin of the leakage audit
SPLITS = ("subjects", "scans")
OPTIMIZERS = ("adamw", "adam", "adamax")
PRECISIONS = ("auto", "bf16", "fp32")
DATA_MODES = ("auto", "resident", "stream")
#: shortcut A's backward: the standard ResNet's, or MedicalNet's, which detaches the shortcut's input
SHORTCUT_GRADS = ("standard", "medicalnet")
#: ``run --saliency N`` (issue 14): the attribution methods a fold computes by default, one gradient
#: method and the perturbation one (icpcv.explain.attribution.DEFAULT_METHODS is this tuple)
SALIENCY_METHODS = ("integrated_gradients", "occlusion")
#: RunConfig fields (issue 14) left out of ``to_dict`` at their defaults, so that a run without them
#: keeps the config hash (and run directory) it had before they existed
_OPTIONAL_DEFAULTS = {"saliency": 0, "saliency_methods": SALIENCY_METHODS, "shortcut": False,
                      # issue 19: geometry and acquisition (absent at their defaults: old hashes hold)
                      "fov_mm": None, "depth_mm": None, "mirror_os": False, "axes": None,
                      "acquisition": "off", "confound": "none", "covariates": (),
                      # issue 21: run --tune (nested recipe selection); absent at their defaults likewise
                      "tune": None, "inner_folds": None}


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of the CNN training loop (:func:`icpcv.train.loop.fit`)."""

    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    patience: int = 10  # early-stopping patience in epochs
    augment: bool = True
    optimizer: str = "adamw"  # adamw | adam | adamax (the seed's); fused/foreach on CUDA
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32
    data_mode: str = "auto"  # auto | resident | stream (where the volumes live; does not change the numbers)

    def to_dict(self) -> dict:
        return asdict(self)


#: TrainConfig fields the command line sets (``--epochs``, ``--batch-size``, ...)
TRAIN_OPTIONS = ("epochs", "batch_size", "lr", "weight_decay", "patience", "optimizer", "precision")


@dataclass(frozen=True)
class Preset:
    """``run --preset NAME``: the network, volume shape, phantom and training set-up of a GPU run."""

    name: str
    model: str  # takes the light CNN's place in the default models
    shape: tuple[int, int, int]
    phantom: str
    train: TrainConfig
    repeats: int = 1  # trainings per fold of each network (seed ensemble; issue 10)


PRESETS = {
    # the seed study's set-up, read from its train.py: MedicalNet's ResNet-50 (dilated, shortcut B)
    # with the fusion head at 128 x 128 x 512, Adamax at lr 3e-4 without weight decay, batch 8,
    # MSE, fp32, 200 epochs (its ExponentialLR was never stepped: a constant rate, as here; it did
    # not early-stop, we do, with patience 20)
    "seed": Preset("seed", "resnet50", (128, 128, 512), "seed",
                   replace(TrainConfig(), batch_size=8, lr=3e-4, weight_decay=0.0, optimizer="adamax",
                           precision="fp32", epochs=200, patience=20)),
    # resolution for speed: ResNet-18 (MedicalNet layout, so its weights warm-start it) at
    # 64 x 64 x 256 in bf16; 10.9x fewer FLOPs per sample than "seed" (docs/gpu.md)
    "fast": Preset("fast", "resnet18", (64, 64, 256), "seed",
                   replace(TrainConfig(), batch_size=16, lr=1e-3, weight_decay=1e-4, optimizer="adamw",
                           precision="bf16", epochs=60, patience=15),
                   repeats=5),  # cheap enough to measure what a training seed changes (docs/statistics.md)
}


@dataclass(frozen=True)
class RunConfig:
    manifest: str | None = None  # None: the built-in synthetic cohort
    scans_dir: str | None = None  # seed format: folder with <id>.pt
    phantom: str = "small"
    signal: float = 1.0
    data_seed: int = 0
    models: tuple[str, ...] = DEFAULT_MODELS_VOLUMES
    folds: int | None = None  # None: one per subject
    split: str = "subjects"  # the fold plan's unit (SPLITS); "scans" only for the leakage audit's twin
    val_fraction: float = 0.25
    seed: int = 0  # folds, initialisation, shuffling, bootstrap
    shape: tuple[int, int, int] | None = None  # (X, Y, Z=depth); None: the phantom's, or (32, 32, 64)
    train: TrainConfig = field(default_factory=TrainConfig)
    reference: str = "ols_iop"
    n_boot: int = 10000
    ci_level: float = 0.95
    skip_bad_scans: bool = False
    pretrained: str | None = None  # warm-start checkpoint for the 3D ResNets (MedicalNet or a state dict)
    shortcut_grad: str = "standard"  # SHORTCUT_GRADS: "medicalnet" replicates the seed's ResNet-18/34 exactly
    preset: str | None = None  # the --preset that filled in the defaults (recorded only)
    repeats: int = 1  # trainings per fold of each network (initialisation, batch order, augmentation); 1 = once
    # ---- issue 14: attribution maps and the planted shortcut (absent from to_dict at their defaults)
    saliency: int = 0  # held-out scans mapped per monkey and network model after each fold trains; 0 = off
    saliency_methods: tuple[str, ...] = SALIENCY_METHODS
    shortcut: bool = False  # synthetic cohort: plant the phantom's ShortcutMarker (its defaults)
    # ---- issue 19: scan geometry (icpcv.cohort.geometry) and acquisition (absent from to_dict at defaults)
    fov_mm: tuple[float, float] | None = None  # crop every volume to this field of view (X, Y) in mm
    depth_mm: float | None = None  # ... and to this depth (Z) in mm
    mirror_os: bool = False  # flip left eyes (OS) along X into the right eye's orientation
    axes: str | None = None  # the raw volumes' layout when it is not X, Y, Z (e.g. "YZX" for TIFF-like stacks)
    acquisition: str = "off"  # synthetic cohort: "off" (one protocol) or "realistic" (the seed table's mix)
    confound: str = "none"  # synthetic cohort: "none" or "brightness" (brightness drifts with the ICP order)
    covariates: tuple[str, ...] = ()  # extra table columns for the acq nuisance baseline
    # ---- issue 21: nested recipe selection (icpcv.tune; absent from to_dict at their defaults)
    tune: dict | None = None  # the --tune spec, canonical (icpcv.tune.spec.TuneSpec.to_dict): name, candidates
    inner_folds: int | None = None  # inner folds over each outer fold's training monkeys; None = one per monkey

    def to_dict(self) -> dict:
        d = asdict(self)
        d["models"] = list(self.models)
        d["shape"] = list(self.shape) if self.shape else None
        # ---- issue 14: optional fields at their defaults are not written (the hash stays as before)
        off = not d["saliency"]
        for k, default in _OPTIONAL_DEFAULTS.items():
            if d[k] == default or (k == "saliency_methods" and off):
                del d[k]
        if "saliency_methods" in d:
            d["saliency_methods"] = list(d["saliency_methods"])
        for k in ("fov_mm", "covariates"):  # issue 19: tuples as lists in JSON
            if k in d:
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        train_known = {f.name for f in fields(TrainConfig)}
        train = d.get("train")
        if not isinstance(train, dict):  # run.json of icpcv before the nested TrainConfig: flat keys
            train = {k: v for k, v in d.items() if k in train_known}
        d = {k: v for k, v in d.items() if k in known and k != "train"}
        if d.get("models") is not None:
            d["models"] = tuple(d["models"])
        if d.get("shape") is not None:
            d["shape"] = tuple(int(s) for s in d["shape"])
        if d.get("saliency_methods") is not None:  # issue 14
            d["saliency_methods"] = tuple(d["saliency_methods"])
        if d.get("fov_mm") is not None:  # issue 19
            d["fov_mm"] = tuple(float(v) for v in d["fov_mm"])
        if d.get("covariates") is not None:
            d["covariates"] = tuple(d["covariates"])
        return cls(**d, train=TrainConfig(**{k: v for k, v in train.items() if k in train_known}))

    @property
    def hash(self) -> str:
        return canonical_hash(self.to_dict())

    @property
    def synthetic(self) -> bool:
        return self.manifest is None

    def flat(self) -> dict:
        """The config as one level of keys (``train.lr``), for tables and diffs."""
        return flatten(self.to_dict())

    def diff(self, other: "RunConfig") -> list[str]:
        a, b = self.flat(), other.flat()
        return [f"{k}: {b.get(k)!r} -> {a[k]!r}" for k in a if a[k] != b.get(k)]


#: settings that only act on a network (the training set-up, repeats, attribution maps, warm start)
NETWORK_SETTINGS = ("train", "repeats", "saliency", "saliency_methods", "pretrained", "shortcut_grad", "val_fraction")
#: settings of the synthetic cohort, and of a scan table
PHANTOM_SETTINGS = ("phantom", "signal", "data_seed", "shortcut")
TABLE_SETTINGS = ("manifest", "scans_dir", "skip_bad_scans")


def settings_in_effect(config: dict, has_network: bool) -> dict:
    """A run's configuration (run.json's ``config``) without the settings that did nothing, for the
    report: the training set-up, repeats, attribution maps and the inner validation share of a run
    with no network; the phantom's settings of a run on a scan table and the table's of a phantom
    run; the attribution methods when no map was made.

    >>> sorted(settings_in_effect({"models": ["mean"], "train": {"lr": 1e-3}, "phantom": "small",
    ...                            "manifest": "t.csv", "saliency": 0}, has_network=False))
    ['manifest', 'models']
    """
    drop = set()
    if not has_network:
        drop |= set(NETWORK_SETTINGS)
    if not config.get("saliency"):
        drop |= {"saliency_methods"}
    drop |= set(PHANTOM_SETTINGS) if config.get("manifest") else set(TABLE_SETTINGS)
    return {k: v for k, v in config.items() if k not in drop}


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dicts as one level, keys joined by dots."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@dataclass(frozen=True)
class PowerConfig:
    """``icpcv power``: the power of a new study of G monkeys (:func:`icpcv.stats.power.plan_power`).

    ``reference`` and ``n_comparisons`` None: the run's own (its reference; Holm's family of its
    comparisons, approximated by Bonferroni). The planner's keyword defaults are the same numbers
    (tests/test_power_command.py checks that they agree).
    """

    model: str = "cnn"
    reference: str | None = None
    monkeys: tuple[int, ...] = (6, 10, 14, 20, 30, 40)
    effect: float | None = None  # MAE reduction to assume (mmHg); None: the run's own
    alpha: float = 0.05
    n_sim: int = 2000
    n_comparisons: int | None = None
    seed: int = 0
    n_perm: int = 4000  # random sign patterns per study size above 20 monkeys
    target_power: float = 0.8

    def to_dict(self) -> dict:
        d = asdict(self)
        d["monkeys"] = list(self.monkeys)
        return d
