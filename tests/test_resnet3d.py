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


def _tied_maxima(x):
    """Input positions that are one of two or more equal maxima of some 3x3x3 window (stride 2, padding 1)."""
    xp = torch.nn.functional.pad(x, (1,) * 6, value=float("-inf"))
    win = xp.unfold(2, 3, 2).unfold(3, 3, 2).unfold(4, 3, 2)  # (N, C, oX, oY, oZ, 3, 3, 3)
    is_max = win == win.amax(dim=(5, 6, 7), keepdim=True)
    tied = is_max & (is_max.sum(dim=(5, 6, 7), keepdim=True) >= 2)
    mask = torch.zeros(xp.shape, dtype=torch.bool)
    o = win.shape[2:5]
    for a in range(3):
        for b in range(3):
            for c in range(3):
                view = mask[:, :, a:a + 2 * o[0] - 1:2, b:b + 2 * o[1] - 1:2, c:c + 2 * o[2] - 1:2]
                view |= tied[..., a, b, c]
    return mask[:, :, 1:-1, 1:-1, 1:-1]


def test_max_pool_gradient_differs_from_maxpool3d_only_at_tied_maxima():
    from icpcv.models.resnet3d import MaxPool3dS2

    torch.manual_seed(0)
    x = torch.randn(1, 2, 9, 17, 18, dtype=torch.float64).mul(2).round().requires_grad_(True)  # 5,508 voxels
    ours, ref = MaxPool3dS2()(x), torch.nn.MaxPool3d(3, stride=2, padding=1)(x)
    assert torch.equal(ours, ref)
    g_out = torch.randint(1, 9, ref.shape, dtype=torch.float64)  # integers: halving and summing stay exact
    g_ours, = torch.autograd.grad(ours, x, g_out)
    g_ref, = torch.autograd.grad(ref, x, g_out)
    differ = g_ours != g_ref
    tied = _tied_maxima(x.detach())
    # ties on rounded input: MaxPool3d gives a window's gradient to one maximum, ours spreads it over the tied ones
    assert differ.sum() > 0
    assert not (differ & ~tied).any()  # nowhere else
    assert torch.allclose(g_ours.sum(), g_out.sum()) and torch.allclose(g_ref.sum(), g_out.sum())
    print(f"\n{int(differ.sum())} of {x.numel()} positions get another gradient; {int(tied.sum())} are tied maxima")
    # without ties the gradients are identical
    y = torch.randperm(x.numel(), dtype=torch.float64).view(x.shape).requires_grad_(True)
    g1, = torch.autograd.grad(MaxPool3dS2()(y), y, g_out)
    g2, = torch.autograd.grad(torch.nn.MaxPool3d(3, stride=2, padding=1)(y), y, g_out)
    assert torch.equal(g1, g2)


class _OpLog(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_max_pool_is_the_library_pool_where_no_gradient_is_taken():
    from icpcv.models.resnet3d import MaxPool3dS2

    x = torch.randn(2, 3, 8, 9, 10)
    ref = torch.nn.functional.max_pool3d(x, 3, stride=2, padding=1)
    xg = x.clone().requires_grad_(True)
    for context, inp in [(torch.no_grad, xg), (torch.inference_mode, xg), (torch.enable_grad, x)]:
        with context(), _OpLog() as log:
            out = MaxPool3dS2()(inp)
        assert torch.equal(out, ref)
        assert "maximum" not in log.ops and log.ops & {"max_pool3d", "max_pool3d_with_indices"}, context
    with _OpLog() as log:
        MaxPool3dS2()(xg)
    assert "maximum" in log.ops  # training: the elementwise version
    # a maximum is exact in bf16: no fp32 upcast under CPU autocast (which lists max_pool3d as fp32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = MaxPool3dS2()(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref.to(torch.bfloat16))


class _MedicalNetShortcutA(torch.nn.Module):
    """MedicalNet's ``downsample_basic_block`` written out: avg-pool 1x1x1 with the stride, zeros, ``out.data``."""

    def __init__(self, planes, stride):
        super().__init__()
        self.planes, self.stride = planes, stride

    def forward(self, x):
        out = torch.nn.functional.avg_pool3d(x, kernel_size=1, stride=self.stride)
        zero_pads = torch.zeros(out.size(0), self.planes - out.size(1), *out.shape[2:], dtype=out.dtype)
        return torch.cat([out.data, zero_pads], dim=1)


def _grads(model, x, iop):
    model.zero_grad(set_to_none=True)
    out = model(x, iop)
    (out * torch.linspace(-1, 2, len(out))).sum().backward()
    return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("depth,n_differ,n_backbone", [(18, 39, 51), (34, 81, 99)])
def test_medicalnet_shortcut_a_detaches_its_input(depth, n_differ, n_backbone):
    torch.manual_seed(0)
    standard = ResNet3D(depth, base_width=4, iop_repeat=4)
    torch.nn.init.normal_(standard.fc[2].weight)
    medicalnet = ResNet3D(depth, base_width=4, iop_repeat=4, shortcut_grad="medicalnet")
    medicalnet.load_state_dict(standard.state_dict())
    reference = ResNet3D(depth, base_width=4, iop_repeat=4)
    reference.load_state_dict(standard.state_dict())
    for layer in (reference.layer2, reference.layer3, reference.layer4):
        sc = layer[0].downsample
        layer[0].downsample = _MedicalNetShortcutA(sc.planes, sc.stride)
    x, iop = torch.randn(2, 1, 16, 16, 32), torch.tensor([0.3, -1.2])
    out_s, g_s = _grads(standard, x, iop)
    out_m, g_m = _grads(medicalnet, x, iop)
    out_r, g_r = _grads(reference, x, iop)
    assert torch.equal(out_s, out_m) and torch.equal(out_m, out_r)  # the forward pass is the same
    assert all(torch.equal(g_m[k], g_r[k]) for k in g_r)  # MedicalNet's backward
    backbone = [k for k in g_s if not k.startswith("fc.")]
    differ = [k for k in backbone if not torch.equal(g_s[k], g_m[k])]
    assert (len(differ), len(backbone)) == (n_differ, n_backbone)
    # exactly the parameters upstream of the last detached shortcut (layer4.0) get another gradient
    assert all(not k.startswith("layer4.") for k in differ)
    assert all(torch.equal(g_s[k], g_m[k]) for k in g_s if k.startswith(("layer4.", "fc.")))


def test_shortcut_grad_option_is_checked():
    with pytest.raises(InputError, match="shortcut gradient"):
        ResNet3D(18, base_width=4, shortcut_grad="detached")
    assert build_resnet("resnet18", base_width=4, shortcut_grad="medicalnet").layer2[0].downsample.detach
    assert not build_resnet("resnet18", base_width=4).layer2[0].downsample.detach
