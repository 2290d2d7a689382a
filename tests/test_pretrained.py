"""Warm starts: MedicalNet-format checkpoints load tensor for tensor; the seed's filter loaded none."""
import pickle

import pytest
import torch

from icpcv.errors import InputError
from icpcv.models.pretrained import load_pretrained, read_state_dict, strip_prefixes
from icpcv.models.resnet3d import ResNet3D


def _medicalnet_file(path, depth=10, width=8, seed=1, **kw):
    """A checkpoint as MedicalNet saved it: DataParallel 'module.' keys, a segmentation head, no fc."""
    torch.manual_seed(seed)
    src = ResNet3D(depth, base_width=width, **kw)
    for p in src.parameters():  # make every tensor recognisable
        torch.nn.init.normal_(p)
    for name, buf in src.named_buffers():
        if "running" in name:
            buf.uniform_(0.5, 1.5)
    state = {f"module.{k}": v for k, v in src.state_dict().items() if not k.startswith("fc.")}
    state["module.conv_seg.0.weight"] = torch.randn(8 * width * src.layer4[0].expansion, 32, 2, 2, 2)
    state["module.conv_seg.1.weight"] = torch.ones(32)
    state["module.conv_seg.4.weight"] = torch.randn(2, 32, 1, 1, 1)
    torch.save({"state_dict": state}, path)
    return src


def test_seed_filter_loads_nothing_but_ours_loads_the_whole_backbone(tmp_path):
    path = tmp_path / "resnet_10.pth"
    src = _medicalnet_file(path)
    model = ResNet3D(10, base_width=8)
    ckpt = torch.load(path, weights_only=True)
    naive = {k: v for k, v in ckpt["state_dict"].items() if k in model.state_dict()}
    assert naive == {}  # the seed's warm start: every key has 'module.' in front, so nothing matched

    ws = load_pretrained(model, path)
    backbone = [k for k in model.state_dict() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    assert ws.fraction == 1.0 and ws.backbone_matched == ws.backbone_total == len(backbone)
    assert ws.shape_mismatched == 0
    assert ws.missing == 4 and set(ws.missing_keys) == {"fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias"}
    assert ws.unexpected == 3 and all(k.startswith("conv_seg.") for k in ws.unexpected_keys)
    assert ws.stripped_prefixes == ["module."]
    for k, v in src.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(model.state_dict()[k], v), k
    assert torch.all(model.fc[2].weight == 0)  # the head keeps its zero start
    d = ws.to_dict()
    for key in ("matched", "missing", "unexpected", "shape_mismatched", "backbone_total", "fraction"):
        assert key in d
    assert "90%" not in ws.summary() and "100%" in ws.summary()


def test_plain_and_compiled_state_dicts_load_with_their_head(tmp_path):
    torch.manual_seed(0)
    src = ResNet3D(18, base_width=8)
    torch.nn.init.normal_(src.fc[2].weight)
    torch.save(src.state_dict(), tmp_path / "plain.pt")
    torch.save({f"_orig_mod.{k}": v for k, v in src.state_dict().items()}, tmp_path / "compiled.pt")
    torch.save({"model": src.state_dict(), "epoch": 3, "generator": torch.zeros(3, dtype=torch.uint8)},
               tmp_path / "epoch_checkpoint.pt")
    for name in ("plain.pt", "compiled.pt", "epoch_checkpoint.pt"):
        model = ResNet3D(18, base_width=8)
        ws = load_pretrained(model, tmp_path / name)
        assert ws.fraction == 1.0 and ws.missing == 0 and ws.unexpected == 0 and ws.head_matched == 4, name
        assert torch.equal(model.fc[2].weight, src.fc[2].weight)


def test_weights_fit_dilated_and_plain_variants(tmp_path):
    path = tmp_path / "resnet_50.pth"
    _medicalnet_file(path, depth=50, width=4)
    ws = load_pretrained(ResNet3D(50, dilated=False, use_iop=False, base_width=4), path)
    assert ws.fraction == 1.0


def test_refuses_a_checkpoint_for_another_shortcut_type(tmp_path):
    path = tmp_path / "resnet_18.pth"
    _medicalnet_file(path, depth=18)  # shortcut A: no downsample tensors
    model = ResNet3D(18, shortcut="B", base_width=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InputError, match="resnet_18.pth") as err:
        load_pretrained(model, path)
    assert "backbone tensors" in str(err.value)
    for k, v in model.state_dict().items():  # refused: nothing was copied
        assert torch.equal(v, before[k])
    assert load_pretrained(ResNet3D(18, base_width=8), path).fraction == 1.0


def test_refuses_below_ninety_percent(tmp_path):
    path = tmp_path / "resnet_18.pth"
    _medicalnet_file(path, depth=18)
    with pytest.raises(InputError, match=r"resnet_18\.pth.*below the 90%"):
        load_pretrained(ResNet3D(10, base_width=8), path)  # resnet10: downsample tensors missing, 75%
    with pytest.raises(InputError, match="shape mismatch"):
        load_pretrained(ResNet3D(18, base_width=16), path)  # another width: every shape differs


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_unreadable_files_are_input_errors_naming_the_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_state_dict(tmp_path / "absent.pth")
    bad = tmp_path / "notes.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(InputError, match="notes.pth"):
        read_state_dict(bad)
    obj = tmp_path / "object.pth"
    with open(obj, "wb") as fh:  # a pickle that would run code: weights_only refuses it
        pickle.dump({"state_dict": _Evil()}, fh)
    with pytest.raises(InputError, match="object.pth"):
        read_state_dict(obj)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(InputError, match="not a state dict"):
        read_state_dict(tmp_path / "list.pt")


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_strip_prefixes_only_when_every_key_has_it():
    t = torch.zeros(1)
    assert strip_prefixes({"module._orig_mod.a": t, "module._orig_mod.b": t})[0].keys() == {"a", "b"}
    assert strip_prefixes({"module.a": t, "b": t})[0].keys() == {"module.a", "b"}


@pytest.mark.parametrize("file_depth,model_depth,width", [(34, 18, 8), (50, 18, 4), (50, 34, 4)])
def test_refuses_a_deeper_network_s_file_that_fills_the_model(tmp_path, file_depth, model_depth, width):
    """Issue 11: a resnet_34 file filled resnet18 to 100% while 80 of its backbone tensors went unused;
    resnet_50 files filled resnet18 (91%) and resnet34 (90%). The file's side is counted too."""
    path = tmp_path / f"resnet_{file_depth}.pth"
    _medicalnet_file(path, depth=file_depth, width=width)
    model = ResNet3D(model_depth, base_width=width)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InputError) as err:
        load_pretrained(model, path)
    msg = str(err.value)
    assert f"resnet_{file_depth}.pth" in msg and "of the file's" in msg
    assert f"looks like a ResNet-{file_depth}" in msg, msg
    for k, v in model.state_dict().items():  # refused: nothing was copied
        assert torch.equal(v, before[k])


def test_the_account_counts_the_file_s_unused_backbone_tensors(tmp_path):
    path = tmp_path / "resnet_18.pth"
    _medicalnet_file(path, depth=18)
    ws = load_pretrained(ResNet3D(18, base_width=8), path)
    assert ws.file_backbone_unused == 0 and ws.file_backbone_total == ws.backbone_total
    assert ws.file_architecture == "ResNet-18 (shortcut A)"
    assert ws.to_dict()["file_backbone_total"] == ws.backbone_total
