"""``run --tune SPEC``: the candidate recipes a run chooses among, inside each outer fold.

A spec names one or more *groups*, each a model with settings; a setting given several values
expands into a grid, and the candidates are the union of the groups' grids, in the order given::

    cnn: lr=1e-3,3e-4; width=8,16             4 candidates (the light CNN, 2 x 2)
    ridge_scan: alpha=0.1,10,1000             3 penalties of the scan ridge
    resnet10 | resnet18: pretrained=PATH      two models: ResNet-10 cold, ResNet-18 warm-started
    mean: subsample=0.7; seed=0,1,2,3         4 recipes equal in truth (differing only in their seed)

or a TOML/JSON file with ``name`` (optional) and ``candidates``, a list of groups
(``{model = "cnn", lr = [1e-3, 3e-4]}``). The tuned model is called ``<model>_tuned`` when every
candidate is one model, else ``recipe_tuned`` (a file's ``name`` replaces it).

Settings (any other is refused, naming the model and what it accepts):

* every model: ``seed`` (the recipe's training seed in place of ``--seed``: what a run with
  ``--seed S`` would have trained; the folds stay those of ``--seed``), ``subsample`` (fit on
  this share of the training monkeys, drawn from the recipe's seed: a bagging-like knob that makes
  a deterministic baseline depend on its seed);
* the networks: the training loop's ``epochs, batch_size, lr, weight_decay, patience, optimizer,
  augment`` and ``pretrained`` (a checkpoint to warm-start a 3D ResNet from, or ``none``);
* ``cnn``: ``width``, the light CNN's channel width (its convolutions have width, 2 x width and
  4 x width channels; default 8);
* ``ridge_scan``: ``alpha`` (a fixed ridge penalty in place of the GCV choice), ``n_components``.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from icpcv.config import OPTIMIZERS
from icpcv.errors import InputError

#: settings every model takes
COMMON_SETTINGS = {"seed": int, "subsample": float}
#: the networks' settings: TrainConfig fields, and the warm start
NETWORK_SETTINGS = {"epochs": int, "batch_size": int, "lr": float, "weight_decay": float, "patience": int,
                    "optimizer": str, "augment": bool, "pretrained": str}
#: one model's own constructor settings: the light CNN's channel width, the scan ridge's penalty and components
MODEL_SETTINGS = {"cnn": {"width": int}, "ridge_scan": {"alpha": float, "n_components": int}}
#: the light CNN's widest channel width a spec may ask for (its last convolution has 4 x width channels)
MAX_WIDTH = 256


def allowed_settings(model: str, network: bool) -> dict:
    return COMMON_SETTINGS | (NETWORK_SETTINGS if network else {}) | MODEL_SETTINGS.get(model, {})


@dataclass(frozen=True)
class Candidate:
    """One recipe: a model and its settings (sorted by name)."""

    model: str
    settings: tuple[tuple[str, object], ...] = ()

    @property
    def options(self) -> dict:
        return dict(self.settings)

    @property
    def label(self) -> str:
        """``cnn lr=0.001 epochs=20``; a ``pretrained`` path by its file name."""
        def show(k, v):
            return Path(v).name if k == "pretrained" and v != "none" else (f"{v:g}" if isinstance(v, float) else v)
        return " ".join([self.model] + [f"{k}={show(k, v)}" for k, v in self.settings])

    def to_dict(self) -> dict:
        return dict(model=self.model, settings=dict(self.settings))


@dataclass(frozen=True)
class TuneSpec:
    name: str  # the tuned model's name in predictions.csv
    candidates: tuple[Candidate, ...] = field(default=())

    def to_dict(self) -> dict:
        return dict(name=self.name, candidates=[c.to_dict() for c in self.candidates])

    @classmethod
    def from_dict(cls, d: dict) -> "TuneSpec":
        return cls(d["name"], tuple(Candidate(c["model"], tuple(sorted(c["settings"].items())))
                                    for c in d["candidates"]))

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(c.model for c in self.candidates))


def _value(text: str):
    t = text.strip()
    low = t.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    for kind in (int, float):
        try:
            return kind(t)
        except ValueError:
            pass
    return t


def _parse_text(text: str) -> tuple[str | None, list[dict]]:
    groups = []
    for g in text.split("|"):
        g = g.strip()
        if not g:
            raise InputError(f"--tune {text!r}: an empty group between '|'; write MODEL[: KEY=V1,V2; ...] | ...")
        model, _, rest = g.partition(":")
        group = {"model": model.strip()}
        for item in (x.strip() for x in rest.split(";")):
            if not item:
                continue
            key, eq, values = item.partition("=")
            if not eq or not key.strip() or not values.strip():
                raise InputError(f"--tune {text!r}: {item!r} is not KEY=V1,V2,... (e.g. lr=1e-3,3e-4)")
            group[key.strip()] = [_value(v) for v in values.split(",") if v.strip()]
        groups.append(group)
    return None, groups


def _read_file(path: Path) -> tuple[str | None, list[dict]]:
    try:
        if path.suffix.lower() == ".toml":
            import tomllib  # lazy: only for a TOML spec

            data = tomllib.loads(path.read_text())
        else:
            data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"--tune {path}: cannot read the spec ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("candidates"), list):
        raise InputError(f"--tune {path}: the file needs 'candidates', a list of groups such as "
                         "{\"model\": \"cnn\", \"lr\": [0.001, 0.0003]}")
    for i, g in enumerate(data["candidates"]):
        if not isinstance(g, dict) or not isinstance(g.get("model"), str):
            raise InputError(f"--tune {path}: candidates[{i}] needs a 'model' (a name as in --models)")
    name = data.get("name")
    if name is not None and not (isinstance(name, str) and name.strip()):
        raise InputError(f"--tune {path}: 'name' must be a non-empty string")
    return name, data["candidates"]


def _check_value(where: str, model: str, key: str, kind, v):
    bad = f"{where}: {model} {key}={v!r}"
    if kind is bool:
        if not isinstance(v, bool):
            raise InputError(f"{bad}: give true or false")
        return v
    if kind is str:
        if key == "optimizer" and v not in OPTIMIZERS:
            raise InputError(f"{bad}: choose from {', '.join(OPTIMIZERS)}")
        if key == "pretrained":
            if str(v).lower() == "none":
                return "none"
            if not Path(str(v)).is_file():
                raise InputError(f"{bad}: checkpoint not found")
            return str(Path(str(v)).resolve())
        return str(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and int(v) != v):
        raise InputError(f"{bad}: give {'an integer' if kind is int else 'a number'}")
    v = kind(v)
    if key == "subsample" and not 0 < v <= 1:
        raise InputError(f"{bad}: the share of training monkeys fitted must be in (0, 1]")
    if key == "seed" and v < 0:
        raise InputError(f"{bad}: a seed is 0 or more")
    if key in ("epochs", "batch_size", "patience", "n_components") and v < 1:
        raise InputError(f"{bad}: must be at least 1")
    if key == "width" and not 1 <= v <= MAX_WIDTH:
        raise InputError(f"{bad}: the light CNN's channel width (its first convolution's channels; the next two "
                         f"double it) must be 1 to {MAX_WIDTH} (default 8)")
    if key in ("lr", "alpha") and not v > 0:
        raise InputError(f"{bad}: must be above 0")
    if key == "weight_decay" and not v >= 0:
        raise InputError(f"{bad}: must be 0 or more")
    return v


def parse_spec(spec: str, *, is_network, known_models) -> TuneSpec:
    """``--tune SPEC`` (text, or a .toml/.json file) as a :class:`TuneSpec`; InputError naming the fault.

    ``is_network(name)`` says whether a model is a network; ``known_models`` lists the model names.

    >>> s = parse_spec("cnn: lr=1e-3,3e-4; epochs=2,3", is_network=lambda m: m == "cnn",
    ...                known_models=["mean", "cnn"])
    >>> s.name, [c.label for c in s.candidates]
    ('cnn_tuned', ['cnn epochs=2 lr=0.001', 'cnn epochs=3 lr=0.001', 'cnn epochs=2 lr=0.0003', 'cnn epochs=3 lr=0.0003'])
    """
    text = str(spec).strip()
    if not text:
        raise InputError("--tune: give candidates, e.g. --tune \"cnn: lr=1e-3,3e-4\" or a .toml/.json file")
    path = Path(text)
    where = f"--tune {text}"
    if path.suffix.lower() in (".toml", ".json"):
        if not path.is_file():
            raise InputError(f"--tune {text}: spec file not found")
        name, groups = _read_file(path)
    else:
        name, groups = _parse_text(text)
    candidates = []
    for g in groups:
        model = str(g["model"]).strip()
        if model not in known_models:
            raise InputError(f"{where}: unknown model {model!r}; known: {', '.join(known_models)}")
        allowed = allowed_settings(model, is_network(model))
        grid = []
        for key, values in g.items():
            if key == "model":
                continue
            if key not in allowed:
                raise InputError(f"{where}: {model} has no setting {key!r}; it takes {', '.join(allowed)}")
            values = values if isinstance(values, list) else [values]
            if not values:
                raise InputError(f"{where}: {model} {key}= has no value")
            grid.append([(key, _check_value(where, model, key, allowed[key], v)) for v in values])
        for combo in itertools.product(*grid) if grid else [()]:
            candidates.append(Candidate(model, tuple(sorted(combo))))
    seen = set()
    for c in candidates:
        if c in seen:
            raise InputError(f"{where}: candidate {c.label!r} is given twice")
        seen.add(c)
    if len(candidates) < 2:
        raise InputError(f"{where}: {len(candidates)} candidate; recipe selection needs at least 2 "
                         "(give a setting several values, or several models separated by '|')")
    models = list(dict.fromkeys(c.model for c in candidates))
    if name is None:
        name = f"{models[0]}_tuned" if len(models) == 1 else "recipe_tuned"
    elif not name.endswith("_tuned"):
        name = f"{name}_tuned"
    return TuneSpec(name, tuple(candidates))
