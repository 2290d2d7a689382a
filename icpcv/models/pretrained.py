"""Warm starts that really load: MedicalNet checkpoints and plain state dicts, with an account.

MedicalNet's released files (``resnet_10.pth`` ... ``resnet_50.pth``) hold
``{'state_dict': {...}}`` saved from an ``nn.DataParallel`` model, so every key starts with
``module.``; they carry the segmentation head ``conv_seg.*`` and no regression head. Filtering
those keys by ``k in model.state_dict()`` (as the seed did) therefore keeps *nothing* and the
"pretrained" network silently trains from scratch. Here the wrapper prefixes (``module.``,
``_orig_mod.`` from ``torch.compile``, ``model.``) are stripped first, every tensor is sorted into
matched / missing / unexpected / shape-mismatched, and a file that fills less than 90% of the
backbone's tensors is refused, naming the file; so is a file less than 90% of whose own backbone
tensors find a place (a deeper network's file fills a shallower model completely, and its extra
blocks would be dropped without a word), naming the network the file looks like.

Files are read with ``torch.load(..., weights_only=True)``: no pickled code runs.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from icpcv.errors import InputError
from icpcv.models.resnet3d import build_resnet

WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")
MIN_BACKBONE_FRACTION = 0.9
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


@dataclass
class WarmStart:
    """What a checkpoint gave a model. Counts of tensors; ``fraction`` is over the backbone's."""
    path: str
    sha256: str
    matched: int
    missing: int
    unexpected: int
    shape_mismatched: int
    backbone_total: int
    backbone_matched: int
    fraction: float
    head_matched: int = 0
    #: the file's side: its backbone tensors (outside any head), how many found no place, its likely network
    file_backbone_total: int = 0
    file_backbone_unused: int = 0
    file_architecture: str = ""
    stripped_prefixes: list = field(default_factory=list)
    missing_keys: list = field(default_factory=list)
    unexpected_keys: list = field(default_factory=list)
    shape_mismatched_keys: list = field(default_factory=list)

    def to_dict(self, max_keys: int = 20) -> dict:
        d = asdict(self)
        for k in ("missing_keys", "unexpected_keys", "shape_mismatched_keys"):
            d[k] = d[k][:max_keys]
        return d

    def summary(self) -> str:
        text = (f"warm start from {Path(self.path).name}: {self.backbone_matched}/{self.backbone_total} backbone "
                f"tensors loaded ({self.fraction:.0%}), {self.file_backbone_unused} of the file's "
                f"{self.file_backbone_total} unused, head {self.head_matched} loaded; {self.missing} missing, "
                f"{self.unexpected} unexpected, {self.shape_mismatched} with another shape")
        if self.stripped_prefixes:
            text += f" (stripped key prefix {', '.join(self.stripped_prefixes)})"
        return text


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file: MedicalNet's ``{'state_dict': ...}``, a plain state dict,
    or an icpcv epoch checkpoint (``{'model': ...}``); raises InputError naming the file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: pretrained checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refusals, truncated zips, not a torch file at all
        raise InputError(f"{path}: cannot read as a weights-only torch checkpoint ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); re-save it with "
                         "torch.save(model.state_dict(), path)") from None
    if isinstance(obj, dict):
        for key in _CONTAINER_KEYS:  # a plain state dict maps names to tensors, never to dicts
            inner = obj.get(key)
            if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict) or not obj:
        raise InputError(f"{path}: holds a {type(obj).__name__}, not a state dict (a dict of tensors, possibly "
                         "under 'state_dict')")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise InputError(f"{path}: no tensors found (keys: {', '.join(map(str, list(obj)[:5]))} ...)")
    return tensors


def strip_prefixes(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Drop wrapper prefixes that *every* key carries (repeatedly: ``module._orig_mod.``)."""
    stripped = []
    changed = True
    while changed:
        changed = False
        for p in WRAPPER_PREFIXES:
            if state and all(k.startswith(p) for k in state):
                state = {k[len(p):]: v for k, v in state.items()}
                stripped.append(p)
                changed = True
    return state, stripped


def _counted(key: str) -> bool:
    # BatchNorm's step counter is bookkeeping, not a learned tensor (and absent from older files)
    return not key.endswith("num_batches_tracked")


#: heads a checkpoint may carry that no backbone uses: ours (fc), MedicalNet's segmentation head (conv_seg)
FILE_HEAD_PREFIXES = ("fc.", "conv_seg.")
#: MedicalNet's ResNets by (block kind, blocks per stage): its resnet.py's depths, 10 to 200
_KNOWN_LAYOUTS = {("basic", (1, 1, 1, 1)): 10, ("basic", (2, 2, 2, 2)): 18, ("basic", (3, 4, 6, 3)): 34,
                  ("bottleneck", (3, 4, 6, 3)): 50, ("bottleneck", (3, 4, 23, 3)): 101,
                  ("bottleneck", (3, 8, 36, 3)): 152, ("bottleneck", (3, 24, 36, 3)): 200}
_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.")


def guess_architecture(state: dict) -> str:
    """The network a state dict looks like, from its key names: ``'ResNet-34 (shortcut A)'``, or a
    description of its layout when it is not one of MedicalNet's ResNets (``''`` with no layers)."""
    blocks = [0, 0, 0, 0]
    for k in state:
        m = _BLOCK.match(k)
        if m:
            blocks[int(m.group(1)) - 1] = max(blocks[int(m.group(1)) - 1], int(m.group(2)) + 1)
    if not any(blocks):
        return ""
    kind = "bottleneck" if any(k.startswith("layer1.0.conv3.") for k in state) else "basic"
    shortcut = "B" if any(".downsample." in k for k in state) else "A"
    depth = _KNOWN_LAYOUTS.get((kind, tuple(blocks)))
    if depth is None:
        return f"a ResNet of {kind} blocks {tuple(blocks)} per stage (shortcut {shortcut})"
    return f"ResNet-{depth} (shortcut {shortcut})"


def load_pretrained(model: torch.nn.Module, path, *, head_prefix: str = "fc.",
                    min_fraction: float = MIN_BACKBONE_FRACTION, apply: bool = True) -> WarmStart:
    """Copy every tensor of ``path`` that fits ``model`` (same name after prefix stripping, same shape).

    The backbone is every tensor outside ``head_prefix``; if less than ``min_fraction`` of it
    is filled the model is left untouched and InputError is raised naming the file. With
    ``apply=False`` only the account is made (the model may live on the meta device).
    """
    path = Path(path)
    source, stripped = strip_prefixes(read_state_dict(path))
    target = model.state_dict()
    matched, mismatched = {}, []
    for k, v in source.items():
        if k in target:
            if tuple(v.shape) == tuple(target[k].shape):
                matched[k] = v
            else:
                mismatched.append(f"{k}: file {list(v.shape)} vs model {list(target[k].shape)}")
    unexpected = [k for k in source if k not in target]
    missing = [k for k in target if k not in source and _counted(k)]
    backbone = [k for k in target if not k.startswith(head_prefix) and _counted(k)]
    backbone_matched = sum(1 for k in backbone if k in matched)
    fraction = backbone_matched / max(len(backbone), 1)
    # the file's side too: a deeper network's file fills a shallower model and leaves its extra blocks unused
    file_backbone = [k for k in source if _counted(k) and not k.startswith(FILE_HEAD_PREFIXES + (head_prefix,))]
    file_unused = [k for k in file_backbone if k not in matched]
    file_fraction = (len(file_backbone) - len(file_unused)) / max(len(file_backbone), 1)
    architecture = guess_architecture(source)
    report = WarmStart(path=str(path), sha256=_sha256(path), matched=sum(1 for k in matched if _counted(k)),
                       missing=len(missing), unexpected=len([k for k in unexpected if _counted(k)]),
                       shape_mismatched=len(mismatched), backbone_total=len(backbone),
                       backbone_matched=backbone_matched, fraction=fraction,
                       head_matched=sum(1 for k in matched if k.startswith(head_prefix)),
                       file_backbone_total=len(file_backbone), file_backbone_unused=len(file_unused),
                       file_architecture=architecture, stripped_prefixes=stripped, missing_keys=missing, unexpected_keys=unexpected,
                       shape_mismatched_keys=mismatched)
    name = getattr(model, "name", type(model).__name__)
    looks = f" The file looks like a {architecture}." if architecture else ""
    if fraction < min_fraction:
        hint = ""
        if mismatched:
            hint = f"; first shape mismatch {mismatched[0]}"
        elif missing:
            hint = f"; first missing tensor {missing[0]}"
        raise InputError(
            f"{path}: only {backbone_matched} of {len(backbone)} backbone tensors of {name} ({fraction:.0%}) match "
            f"this checkpoint, below the {min_fraction:.0%} needed for a warm start{hint}.{looks} Is it for another "
            "depth or shortcut type? (MedicalNet: resnet_10/50 use shortcut B, resnet_18/34 shortcut A)")
    if file_fraction < min_fraction:
        raise InputError(
            f"{path}: this checkpoint is not for {name}: {len(file_unused)} of the file's {len(file_backbone)} "
            f"backbone tensors ({1 - file_fraction:.0%}) find no place in it (first: {file_unused[0]}), although "
            f"they fill {backbone_matched} of its {len(backbone)}.{looks} A warm start needs at least "
            f"{min_fraction:.0%} of both sides to match; pick the model of the file's depth (e.g. --models "
            "resnet34 for MedicalNet's resnet_34.pth)")
    if not apply:
        return report
    merged = dict(target)
    merged.update({k: v.to(target[k].dtype) for k, v in matched.items()})
    model.load_state_dict(merged, strict=True)
    return report


def check_pretrained(path, names) -> dict[str, WarmStart]:
    """The account of ``path`` for each 3D ResNet in ``names``, built on the meta device (no
    memory, no weights copied): lets the command line refuse a wrong file before any fold runs."""
    out = {}
    for name in names:
        with torch.device("meta"):
            model = build_resnet(name)
        out[name] = load_pretrained(model, path, apply=False)
    return out
