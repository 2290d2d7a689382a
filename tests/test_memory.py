"""The memory planner: its counts against real allocations on the CPU, and the plan's decisions.

Measured on the CPU (real tensors, small shapes): the C heap's bytes in use (glibc
``mallinfo2``) after every aten op of a training step and of a no-grad forward, against the
counted peak; and the bytes autograd saves in a forward (``saved_tensors_hooks``). Not
measured here: anything CUDA-specific (cuDNN workspaces, the caching allocator's rounding and
fragmentation); ``verify_plan_on_cuda`` (marked ``gpu``) compares with
``torch.cuda.max_memory_allocated`` on a GPU.
"""
import contextlib
import ctypes
import ctypes.util
import gc

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from icpcv.models.resnet3d import MaxPool3dS2, ResNet3D, build_resnet
from icpcv.train import datapath as dp
from icpcv.train import loop
from icpcv.models import memory as mm

GiB = 2**30
SEED_SHAPE = (128, 128, 512)
CPU_ALIGN = 64  # c10's CPU allocator aligns every tensor to 64 bytes


# ---------------------------------------------------------------- real allocations on the CPU

class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]


def _heap_in_use():
    """Bytes glibc's malloc has handed out and not got back (small blocks + mmapped ones)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("needs glibc >= 2.33 (mallinfo2) to measure the CPU heap")
    libc.mallinfo2.restype = _MallInfo2

    def in_use():
        m = libc.mallinfo2()
        return m.uordblks + m.hblkhd

    return in_use


class _HeapAfterEachOp(TorchDispatchMode):
    """The heap's maximum, sampled after every aten op (when the op's own scratch memory is freed)."""

    def __init__(self, in_use):
        super().__init__()
        self.in_use, self.peak = in_use, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, self.in_use())
        return out


@contextlib.contextmanager
def _without_onednn():
    """oneDNN keeps caches of reordered weights between calls; the plain CPU kernels free all scratch memory."""
    old = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = old


@pytest.fixture
def one_thread():
    """One intra-op thread: on a loaded 2-core machine the real CPU runs are 3-4x faster so."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _measured_step_peak(build, shape, optimizer, precision, in_use, batch=2):
    """Heap peak of the second of two real training steps (as count_training_step counts), above the start."""
    settings = dp.StepSettings(torch.bfloat16 if precision == "bf16" else None, channels_last=False)
    with _without_onednn():
        gc.collect()
        start = in_use()
        model = build().train()
        best = {k: x.detach().clone() for k, x in model.state_dict().items()}  # noqa: F841 (held, as in fit)
        opt = mm._optimizer(model.parameters(), optimizer, 0.0)
        heap = _HeapAfterEachOp(in_use)
        for step in range(2):
            xb = ((torch.randint(0, 256, (batch,) + shape, dtype=torch.uint8).float() - 100) / 50).unsqueeze(1)
            ib, tb = torch.randn(batch), torch.randn(batch)
            if step == 1:
                with heap:
                    loop.train_step(model, opt, xb, ib, tb, settings)
            else:
                loop.train_step(model, opt, xb, ib, tb, settings)
            del xb, ib, tb
    return heap.peak - start


def _measured_forward_peak(build, shape, precision, in_use, batch=2):
    settings = dp.StepSettings(torch.bfloat16 if precision == "bf16" else None, channels_last=False)
    with _without_onednn(), torch.no_grad():
        gc.collect()
        start = in_use()
        model = build().eval()
        heap = _HeapAfterEachOp(in_use)
        with heap:
            xb = ((torch.randint(0, 256, (batch,) + shape, dtype=torch.uint8).float() - 100) / 50).unsqueeze(1)
            loop.forward(model, xb, torch.randn(batch), settings)
    return heap.peak - start


def _narrow(depth):
    def build():
        torch.manual_seed(0)
        return ResNet3D(depth, base_width=8, iop_repeat=4)
    return build


# the heap also holds autograd's nodes, module objects and autocast's cache entries (host memory on a
# GPU too, not device memory): measured here at 0.1-0.9 MiB for these networks, whatever the shape
HOST_BOOKKEEPING = 1.5 * 2**20
HEAP_JITTER = 16 * 2**10  # Python objects come and go between two runs


@pytest.mark.parametrize("depth,optimizer,precision", [(18, "adamw", "fp32"), (50, "adamax", "bf16")])
def test_counted_training_peak_equals_the_heap_measured_on_the_cpu(one_thread, depth, optimizer, precision):
    in_use = _heap_in_use()
    build = _narrow(depth)
    counted, measured = {}, {}
    for shape in [(24, 24, 48), (24, 24, 96)]:
        counted[shape] = mm.count_training_step(f"resnet{depth}", shape, 2, precision=precision, optimizer=optimizer,
                                                augment=False, model_fn=build, block=CPU_ALIGN).peak
        _measured_step_peak(build, shape, optimizer, precision, in_use)  # first run: one-time caches of the process
        measured[shape] = _measured_step_peak(build, shape, optimizer, precision, in_use)
        assert 0 <= measured[shape] - counted[shape] <= HOST_BOOKKEEPING, (shape, counted, measured)
    # doubling the depth axis: the bookkeeping cancels, the tensors' growth is counted to within 0.5%
    (c1, c2), (m1, m2) = counted.values(), measured.values()
    assert abs((m2 - m1) - (c2 - c1)) <= 0.005 * (c2 - c1) + HEAP_JITTER, (c2 - c1, m2 - m1)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_counted_forward_peak_equals_the_heap_measured_on_the_cpu(one_thread, precision):
    in_use = _heap_in_use()
    build = _narrow(50)
    counted, measured = {}, {}
    for shape in [(24, 24, 48), (24, 24, 96)]:
        counted[shape] = mm.count_forward("resnet50", shape, 2, precision=precision, model_fn=build,
                                          block=CPU_ALIGN).peak
        _measured_forward_peak(build, shape, precision, in_use)
        measured[shape] = _measured_forward_peak(build, shape, precision, in_use)
        assert 0 <= measured[shape] - counted[shape] <= HOST_BOOKKEEPING, (shape, counted, measured)
    (c1, c2), (m1, m2) = counted.values(), measured.values()
    assert abs((m2 - m1) - (c2 - c1)) <= 0.005 * (c2 - c1) + HEAP_JITTER, (c2 - c1, m2 - m1)


@pytest.mark.parametrize("depth,precision", [(18, "fp32"), (50, "bf16")])
def test_counted_forward_keeps_what_autograd_saves(one_thread, depth, precision):
    shape, batch = (16, 16, 32), 2
    build = _narrow(depth)
    counted = mm.count_training_step(f"resnet{depth}", shape, batch, precision=precision, augment=False,
                                     model_fn=build, block=CPU_ALIGN)
    model = build().train()
    x, iop = torch.randn((batch, 1) + shape), torch.randn(batch)
    held = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers(), x, iop]}
    saved = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in held:
            saved[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(x, iop)
    saved[out.untyped_storage().data_ptr()] = out.untyped_storage().nbytes()
    assert counted.saved == sum(-(-n // CPU_ALIGN) * CPU_ALIGN for n in saved.values())


# ---------------------------------------------------------------- the seed preset's plan (points 1-3)

def _pool_of_today(model):
    """The network as before this change: the elementwise pool also where no gradient is taken."""
    class Elementwise(torch.nn.Module):
        def forward(self, x):
            return MaxPool3dS2.elementwise(x)

    model.maxpool = Elementwise()
    return model


def _resnet50_today():
    return _pool_of_today(build_resnet("resnet50"))


def _resnet50_maxpool3d():
    model = build_resnet("resnet50")
    model.maxpool = torch.nn.MaxPool3d(3, stride=2, padding=1)
    return model


def _seed_step():
    return mm.count_training_step("resnet50", SEED_SHAPE, 8, precision="fp32", optimizer="adamax")


def test_prediction_batch_follows_the_memory_training_proved():
    train = _seed_step()
    budget = train.transient  # what a step needs beyond the held state: proved by every training step
    b = mm.largest_eval_batch("resnet50", SEED_SHAPE, budget, precision="fp32", cap=1000)
    assert mm.count_forward("resnet50", SEED_SHAPE, b).transient <= budget
    assert mm.count_forward("resnet50", SEED_SHAPE, b + 1).transient > budget  # the largest that fits
    assert mm.largest_eval_batch("resnet50", SEED_SHAPE, budget) == min(b, mm.EVAL_BATCH_CAP)
    # before the no-grad pool, the fixed batch of 64 needed more than training proved (~51 GiB vs ~45 GiB)
    today = mm.count_forward("resnet50", SEED_SHAPE, 64, model_fn=_resnet50_today)
    assert today.transient > budget
    assert mm.largest_eval_batch("resnet50", SEED_SHAPE, budget, model_fn=_resnet50_today) < 64


def test_a_fixed_prediction_batch_of_64_fails_where_training_fits():
    # the seed network at batch 2 on a 24 GiB card: training fits, a prediction batch of 64 does not
    plan = mm.plan_memory("seed", gpu_mem_gib=24, batch_size=2)
    assert plan.fits
    assert plan.train.held + plan.eval_at_cap.transient > plan.free_bytes
    assert 0 < plan.eval_batch < 64
    assert plan.train.held + plan.eval.transient <= plan.train.peak <= plan.free_bytes


def test_residency_counts_the_training_step(monkeypatch):
    train = _seed_step()
    card, free = 80 * GiB, 79 * GiB
    cohort = 35 * GiB  # e.g. the seed's ~1,150 training scans of a fold kept as float32: 38.6 GB
    assert cohort + train.peak > free  # resident, the first step runs out of memory
    # today's rule: resident, as the volumes take less than half of the free memory
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, card))
    assert dp.choose_mode(cohort, torch.device("cuda"))[0] == "resident"
    assert mm.old_rule_resident(cohort, free)
    mode, why = mm.plan_residency(cohort, train.peak, free)
    assert mode == "stream"
    assert f"{cohort / GiB:.2f} GiB volumes + {train.peak / GiB:.2f} GiB step" in why
    # the seed phantom's largest fold (uint8) stays resident
    assert mm.plan_residency(mm.volume_bytes(mm.phantom_fold_scans(), SEED_SHAPE), train.peak, free)[0] == "resident"
    # a step that cannot fit even streamed says so
    assert "lower the batch size" in mm.plan_residency(cohort, 2 * free, free)[1]


def test_no_grad_forward_pays_nothing_for_the_deterministic_pool():
    ours = mm.count_forward("resnet50", SEED_SHAPE, 64)
    reference = mm.count_forward("resnet50", SEED_SHAPE, 64, model_fn=_resnet50_maxpool3d)
    today = mm.count_forward("resnet50", SEED_SHAPE, 64, model_fn=_resnet50_today)
    assert ours.peak == reference.peak  # as nn.MaxPool3d
    assert today.peak - ours.peak > 10 * GiB  # the elementwise pool's padded copy and intermediate maxima


def test_pool_reference_is_the_library_pool_in_a_forward():
    # the reference network really pools as the library does
    x = torch.randn(1, 1, 16, 16, 32)
    with torch.no_grad():
        a, b = _narrow(10)(), _narrow(10)()
        b.maxpool = torch.nn.MaxPool3d(3, stride=2, padding=1)
        assert torch.equal(a.eval().feature_map(x), b.eval().feature_map(x))


# ---------------------------------------------------------------- the command and the GPU check

def test_plan_command_prints_both_cards(capsys, tmp_path):
    assert mm.main(["--preset", "fast", "--gpu-mem", "80", "141", "--json", str(tmp_path / "plan.json")]) == 0
    out = capsys.readouterr().out
    assert "not measured on a GPU" in out
    assert "card 80 GiB" in out and "card 141 GiB" in out
    assert out.count("resident: ") == 2
    assert "resnet18 at 64x64x256, batch 16, bf16, adamw" in out


def test_verify_plan_skips_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA is here: the gpu test runs instead")
    assert mm.verify_plan_on_cuda("fast") == {"skipped": "no CUDA device"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the device machine)")
@pytest.mark.parametrize("preset", ["fast", "seed"])
def test_plan_within_ten_percent_of_max_memory_allocated(preset):
    r = mm.verify_plan_on_cuda(preset)
    print(r)
    assert 0.9 <= r["train_ratio"] <= 1.1, r
    assert 0.9 <= r["eval_ratio"] <= 1.1, r


class _HeapMeter:
    """The CPU heap as the GPU check's meter: peak sampled after every aten op."""

    def __init__(self, in_use):
        self.mode = _HeapAfterEachOp(in_use)
        self.in_use = in_use

    def allocated(self):
        return self.in_use()

    def reset_peak(self):
        self.mode.peak = self.in_use()

    def peak(self):
        return self.mode.peak


def test_the_gpu_check_measures_what_is_counted_when_run_on_the_cpu(one_thread):
    # the GPU check's own run, on the CPU with the heap as its meter (the light CNN: the only CNN fast here)
    in_use = _heap_in_use()
    shape, batch, eval_batch = (24, 24, 48), 4, 6
    meter = _HeapMeter(in_use)
    with _without_onednn(), meter.mode:
        run = dict(precision="fp32", optimizer="adamw", lr=1e-3, weight_decay=1e-4, device=torch.device("cpu"),
                   meter=meter)
        mm.run_step_and_prediction("cnn", shape, batch, eval_batch, **run)  # one-time caches of the process
        train, prediction = mm.run_step_and_prediction("cnn", shape, batch, eval_batch, **run)
    counted_train = mm.count_training_step("cnn", shape, batch, optimizer="adamw", block=CPU_ALIGN).peak
    counted_eval = mm.count_forward("cnn", shape, eval_batch, block=CPU_ALIGN).transient
    assert 0 <= train - counted_train <= HOST_BOOKKEEPING, (train, counted_train)
    assert abs(prediction - counted_eval) <= HEAP_JITTER, (prediction, counted_eval)
