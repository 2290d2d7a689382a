"""The 3D ResNets have MedicalNet's layout: names, shapes, shortcut types, dilation, parameter counts."""
import pytest
import torch

from icpcv.errors import InputError
from icpcv.models import CNNS, check_models, make_cnn, make_model
from icpcv.models.resnet3d import ResNet3D, ZeroPadShortcut, build_resnet, parse_name


def _meta(depth, **kw):
    with torch.device("meta"):
        return ResNet3D(depth, **kw)


def _shapes(model):
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def test_resnet10_state_dict_has_medicalnet_names_and_shapes():
    s = _shapes(_meta(10))
    expected = {
        "conv1.weight": [64, 1, 7, 7, 7],
        "bn1.weight": [64], "bn1.running_mean": [64], "bn1.num_batches_tracked": [],
        "layer1.0.conv1.weight": [64, 64, 3, 3, 3],
        "layer1.0.bn2.running_var": [64],
        "layer2.0.conv1.weight": [128, 64, 3, 3, 3],
        "layer2.0.downsample.0.weight": [128, 64, 1, 1, 1],
        "layer2.0.downsample.1.weight": [128],
        "layer3.0.downsample.0.weight": [256, 128, 1, 1, 1],
        "layer4.0.conv2.weight": [512, 512, 3, 3, 3],
        "layer4.0.downsample.0.weight": [512, 256, 1, 1, 1],
        "layer4.0.downsample.1.running_mean": [512],
    }
    for k, shape in expected.items():
        assert s[k] == shape, k
    assert "layer1.0.downsample.0.weight" not in s  # 64 -> 64 at stride 1 needs no projection
    assert not any(k.startswith("layer1.1") for k in s)  # one block per stage
    assert not any(k.startswith("conv_seg") for k in s)


def test_shortcut_types_follow_medicalnet_checkpoints():
    # MedicalNet README: resnet-10/50 --resnet_shortcut B, resnet-18/34 A
    assert _meta(10).shortcut == "B" and _meta(50).shortcut == "B"
    assert _meta(18).shortcut == "A" and _meta(34).shortcut == "A"
    s18 = _shapes(_meta(18))
    assert not any("downsample" in k for k in s18)
    assert isinstance(_meta(18).layer2[0].downsample, ZeroPadShortcut)
    assert "layer2.0.downsample.0.weight" in _shapes(_meta(18, shortcut="B"))
    assert [k for k in s18 if k.startswith("layer4.")][:2] == ["layer4.0.conv1.weight", "layer4.0.bn1.weight"]
    assert "layer4.1.conv2.weight" in s18 and "layer4.2.conv2.weight" not in s18
    assert "layer3.5.conv2.weight" in _shapes(_meta(34))


def test_resnet50_bottleneck_layout_and_2048_channels():
    m = _meta(50)
    s = _shapes(m)
    assert s["layer1.0.conv1.weight"] == [64, 64, 1, 1, 1]
    assert s["layer1.0.conv3.weight"] == [256, 64, 1, 1, 1]
    assert s["layer1.0.downsample.0.weight"] == [256, 64, 1, 1, 1]
    assert s["layer4.2.conv3.weight"] == [2048, 512, 1, 1, 1]
    assert s["layer4.0.downsample.0.weight"] == [2048, 1024, 1, 1, 1]
    assert "layer3.5.bn3.weight" in s and "layer3.6.bn3.weight" not in s
    assert m.out_channels == 2048
    # the seed's fusion head: IOP x512 joined to 2048 features -> 1280 -> 1, as fc.0 / fc.2
    assert s["fc.0.weight"] == [1280, 2560] and s["fc.2.weight"] == [1, 1280]


@pytest.mark.parametrize("depth,millions,tol", [(10, 14.36, 0.005), (18, 32.99, 0.005), (34, 63.31, 0.02),
                                                (50, 46.21, 0.06)])
def test_backbone_parameter_counts_match_medicalnet_table(depth, millions, tol):
    m = _meta(depth)
    n = sum(p.numel() for k, p in m.named_parameters() if not k.startswith("fc."))
    assert abs(n / 1e6 - millions) <= tol


def test_dilation_and_strides():
    m = _meta(50)
    for block in m.layer3:
        assert block.conv2.dilation == (2, 2, 2) and block.conv2.padding == (2, 2, 2)
        assert block.conv2.stride == (1, 1, 1)
    for block in m.layer4:
        assert block.conv2.dilation == (4, 4, 4) and block.conv2.stride == (1, 1, 1)
    assert m.layer3[0].downsample[0].stride == (1, 1, 1)
    assert m.conv1.stride == (2, 2, 2) and m.conv1.padding == (3, 3, 3)
    assert m.layer2[0].conv2.stride == (2, 2, 2) and m.layer2[0].conv2.dilation == (1, 1, 1)
    b = _meta(18)
    assert b.layer3[0].conv1.dilation == (2, 2, 2) and b.layer3[1].conv2.dilation == (2, 2, 2)
    assert b.layer4[0].conv1.dilation == (4, 4, 4)
    nd = _meta(50, dilated=False)
    assert nd.layer3[0].conv2.stride == (2, 2, 2) and nd.layer3[0].conv2.dilation == (1, 1, 1)
    assert nd.layer4[0].conv2.stride == (2, 2, 2) and nd.layer4[0].downsample[0].stride == (2, 2, 2)
    assert _shapes(nd) == _shapes(m)  # same tensors: MedicalNet weights load into both


def test_feature_map_resolution():
    x = torch.zeros(1, 1, 32, 32, 64, device="meta")
    assert tuple(_meta(10).feature_map(x).shape) == (1, 512, 4, 4, 8)  # 1/8: dilated stages keep it
    assert tuple(_meta(10, dilated=False).feature_map(x).shape) == (1, 512, 1, 1, 2)  # 1/32


def test_resnet50_forward_on_cpu_and_zero_head():
    torch.manual_seed(0)
    m = build_resnet("resnet50").eval()
    x = torch.randn(1, 1, 16, 16, 32)
    with torch.no_grad():
        assert m.feature_map(x).shape[1] == 2048
        out = m(x, torch.tensor([0.3]))
    assert out.shape == (1,) and torch.all(out == 0)  # zero-initialised last layer: predicts the mean


def test_shortcut_a_forward_and_scanonly_ignores_iop():
    torch.manual_seed(0)
    m = ResNet3D(18, use_iop=False, base_width=8)
    x = torch.randn(2, 1, 16, 16, 32)
    torch.nn.init.normal_(m.fc[2].weight)
    m.eval()
    with torch.no_grad():
        a = m(x, torch.tensor([0.0, 1.0]))
        b = m(x, None)
    assert a.shape == (2,) and torch.equal(a, b)
    assert "fc.0.weight" in m.state_dict() and m.fc[0].in_features == 64
    f = ResNet3D(18, base_width=8)
    torch.nn.init.normal_(f.fc[2].weight)
    f.eval()
    with torch.no_grad():
        assert not torch.equal(f(x, torch.tensor([0.0, 0.0])), f(x, torch.tensor([1.0, 1.0])))
    with pytest.raises(ValueError):
        f(x)


def test_zero_pad_shortcut_subsamples_and_pads():
    x = torch.arange(2 * 4 * 4 * 4 * 4, dtype=torch.float32).view(2, 4, 4, 4, 4)
    y = ZeroPadShortcut(8, 2)(x)
    assert y.shape == (2, 8, 2, 2, 2)
    assert torch.equal(y[:, :4], torch.nn.functional.avg_pool3d(x, kernel_size=1, stride=2))
    assert torch.all(y[:, 4:] == 0)


def test_names_registry():
    for name in ("resnet10", "resnet18", "resnet34", "resnet50", "resnet50_nodil", "resnet18_scanonly",
                 "resnet34_nodil_scanonly"):
        assert name in CNNS
    assert check_models(["mean", "resnet50_nodil"]) == ["mean", "resnet50_nodil"]
    assert make_model("resnet18_scanonly").needs_iop is False and make_model("resnet18").needs_iop is True
    spec = parse_name("resnet34_nodil_scanonly")
    assert (spec.depth, spec.dilated, spec.use_iop) == (34, False, False)
    for bad in ("resnet101", "resnet18_scanonly_nodil", "resnet"):
        with pytest.raises(InputError):
            parse_name(bad)
        with pytest.raises(InputError, match="unknown model"):
            check_models([bad])
    with torch.device("meta"):
        assert make_cnn("resnet50_nodil", (16, 16, 32)).name == "resnet50_nodil"


def test_deterministic_max_pool_equals_medicalnets():
    from icpcv.models.resnet3d import MaxPool3dS2

    for shape in [(2, 3, 7, 8, 9), (1, 2, 16, 16, 32)]:
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        ours, ref = MaxPool3dS2()(x), torch.nn.MaxPool3d(3, stride=2, padding=1)(x)
        assert torch.equal(ours, ref)
        g_ours, = torch.autograd.grad(ours.sum(), x)
        g_ref, = torch.autograd.grad(ref.sum(), x)
        assert torch.equal(g_ours, g_ref)
