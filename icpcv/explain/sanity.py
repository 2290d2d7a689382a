"""The model-randomisation sanity check of Adebayo et al. (2018) for attribution maps.

If a method explains what the network *learned*, its maps must change when the learned weights
are replaced by random ones. Cascading randomisation re-initialises the layers with weights
(convolutions and linear layers) one more at a time from the output towards the input, and after
each step compares the maps with those of the trained network by Spearman rank correlation per
scan, of the absolute values (where the map looks) and of the signed values. A method whose maps
stay highly correlated with the trained ones after all layers are random is showing the input
(edges, bright layers), not the network. The paper cautions that multiplying by the input can
keep a map looking like the input; here that is the factor :math:`x - b` of gradient x input and
integrated gradients. On a CNN trained on the tiny phantom (tests/test_explain_phantom.py) we
measured rho (absolute) about 0.45 for those two and about 0.25 for the plain gradient and
occlusion after full randomisation, and rho (signed) about 0 for all four. A region share of
input-multiplied maps is therefore partly the region's contrast: score the randomised network's
maps as well (the randomised reference of the run's attribution, :mod:`icpcv.explain.fold`). Independent
randomisation re-initialises one layer at a time, the others trained.

Layers are re-initialised with their own ``reset_parameters()`` (PyTorch's default initialisation,
the same one an untrained network has; the zero-initialised regression heads of icpcv's CNNs get
random weights too, or every map of a randomised network would be zero). BatchNorm layers keep
their trained statistics and affine parameters. The draws come from a private generator seeded by
``seed``, on the CPU, so the check is reproducible and leaves the global random state alone.

Reference
---------
Adebayo J, Gilmer J, Muelly M, Goodfellow I, Hardt M, Kim B (2018). Sanity checks for saliency
maps. Advances in Neural Information Processing Systems 31 (NeurIPS 2018), 9505-9515.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from scipy import stats as sps

from icpcv.explain.attribution import model_device, run_method
from icpcv.util import to_jsonable

MODES = ("cascading", "independent")


def weighted_layers(model: torch.nn.Module) -> list[str]:
    """Names of the convolution and linear layers, input to output (registration order)."""
    return [name for name, m in model.named_modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.Linear))]


def randomised_copy(model: torch.nn.Module, layers, *, seed: int = 0) -> torch.nn.Module:
    """A copy of ``model`` with ``layers`` (names) re-initialised; the original is untouched."""
    device = model_device(model)
    twin = copy.deepcopy(model).to("cpu")
    modules = dict(twin.named_modules())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in layers:
            modules[name].reset_parameters()
    return twin.to(device)


def rank_correlations(trained: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spearman's rho per scan between two stacks of maps: (of absolute values, of signed values).
    NaN for a scan where either map is constant (e.g. zero everywhere): there is no ranking to compare."""
    n = len(trained)
    rho_abs, rho_signed = np.full(n, np.nan), np.full(n, np.nan)
    for i in range(n):
        a, b = np.ravel(trained[i]), np.ravel(other[i])
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            continue
        rho_signed[i] = sps.spearmanr(a, b).statistic
        if np.ptp(np.abs(a)) > 0 and np.ptp(np.abs(b)) > 0:
            rho_abs[i] = sps.spearmanr(np.abs(a), np.abs(b)).statistic
    return rho_abs, rho_signed


def _summarise(values: np.ndarray) -> tuple[float, float, float]:
    """Mean, min and max over scans with a defined value (NaN, NaN, NaN when none)."""
    v = values[np.isfinite(values)]
    return (float(v.mean()), float(v.min()), float(v.max())) if v.size else (np.nan, np.nan, np.nan)


@dataclass
class RandomisationCheck:
    """Result of :func:`randomisation_check`: one row per step (layers randomised so far, or alone)."""

    method: str
    mode: str
    steps: pd.DataFrame = field(repr=False)  # step, layer, rho_abs, rho_abs_min, rho_abs_max, rho_signed, n_scans
    threshold: float = 0.5

    @property
    def final_rho_abs(self) -> float:
        """Mean rank correlation (absolute maps) with every layer random (cascading) or the lowest one."""
        if self.mode == "cascading":
            return float(self.steps["rho_abs"].iloc[-1])
        return float(self.steps["rho_abs"].min()) if self.steps["rho_abs"].notna().any() else float("nan")

    @property
    def applicable(self) -> bool:
        """False when no scan had a non-constant map of the trained network (e.g. the restored epoch is
        the untrained one, whose zero head makes every map zero): nothing to compare."""
        return bool(np.isfinite(self.final_rho_abs))

    @property
    def passed(self) -> bool | None:
        """True: the maps changed (rho below the threshold); False: they did not; None: not applicable."""
        return bool(self.final_rho_abs < self.threshold) if self.applicable else None

    @property
    def final_rho_signed(self) -> float:
        if self.mode == "cascading":
            return float(self.steps["rho_signed"].iloc[-1])
        if not self.steps["rho_abs"].notna().any():
            return float("nan")
        return float(self.steps.loc[self.steps["rho_abs"].idxmin(), "rho_signed"])

    def sentence(self) -> str:
        what = "all weighted layers randomised" if self.mode == "cascading" else "one layer randomised at a time"
        if not self.applicable:
            return (f"Randomisation check ({self.method.replace('_', ' ')}, {self.mode}): not applicable, the "
                    "trained network's maps are constant (zero) on every scan: its output does not depend on the "
                    "scan, so there is nothing to compare.")
        verdict = ("the maps depend on the learned weights" if self.passed else
                   "the maps stay close to the trained network's: they show the input more than the network")
        return (f"Randomisation check ({self.method.replace('_', ' ')}, {self.mode}): with {what}, Spearman's rho "
                f"between the trained and the randomised network's maps is {self.final_rho_abs:.2f} for absolute "
                f"and {self.final_rho_signed:.2f} for signed values (mean over {int(self.steps['n_scans'].iloc[0])} "
                f"scans with a non-constant map; absolute below {self.threshold:g} passes): {verdict}.")

    def summary(self) -> str:
        lines = [self.sentence(), "", "| step | layer | rho (abs) | range | rho (signed) |",
                 "| --- | --- | --- | --- | --- |"]
        for r in self.steps.itertuples(index=False):
            lines.append(f"| {r.step} | {r.layer} | {r.rho_abs:.2f} | {r.rho_abs_min:.2f} to {r.rho_abs_max:.2f} "
                         f"| {r.rho_signed:.2f} |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return to_jsonable(dict(method=self.method, mode=self.mode, threshold=self.threshold,
                                final_rho_abs=self.final_rho_abs, final_rho_signed=self.final_rho_signed,
                                applicable=self.applicable, passed=self.passed, sentence=self.sentence(),
                                steps=self.steps.to_dict("records")))


def randomisation_check(model: torch.nn.Module, volumes, iop, *, method: str = "integrated_gradients",
                        mode: str = "cascading", seed: int = 0, threshold: float = 0.5,
                        **method_kw) -> RandomisationCheck:
    """Compare a trained network's maps with those of its randomised copies (Adebayo et al. 2018).

    ``volumes`` and ``iop`` are in the network's units (standardised), as for
    :func:`icpcv.explain.attribution.run_method`, which also takes ``method_kw``. Each step's row:
    the layer randomised at that step and the mean, minimum and maximum over scans of Spearman's
    rho of the absolute maps, and the mean rho of the signed maps. ``threshold`` is the reading's
    pass mark for the final step (a convention here, not from the paper, which shows the curves).

    Example
    -------
    >>> import torch
    >>> from icpcv.models.cnn import LightCNN3D
    >>> from icpcv.explain.sanity import randomisation_check
    >>> _ = torch.manual_seed(0)
    >>> net = LightCNN3D((8, 8, 16)); _ = torch.nn.init.normal_(net.head.weight)
    >>> check = randomisation_check(net, torch.randn(2, 8, 8, 16), torch.zeros(2), method="gradient")
    >>> list(check.steps["layer"])[:2]
    ['head', 'embed.1']
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: choose from {', '.join(MODES)}")
    trained = run_method(method, model, volumes, iop, **method_kw)
    layers = weighted_layers(model)
    top_down = layers[::-1]
    rows = []
    for step, layer in enumerate(top_down, start=1):
        chosen = top_down[:step] if mode == "cascading" else [layer]
        twin = randomised_copy(model, chosen, seed=seed)
        rho_abs, rho_signed = rank_correlations(trained, run_method(method, twin, volumes, iop, **method_kw))
        mean_abs, min_abs, max_abs = _summarise(rho_abs)
        rows.append(dict(step=step, layer=layer, rho_abs=mean_abs, rho_abs_min=min_abs, rho_abs_max=max_abs,
                         rho_signed=_summarise(rho_signed)[0], n_scans=int(np.isfinite(rho_abs).sum())))
    return RandomisationCheck(method, mode, pd.DataFrame(rows), threshold)
