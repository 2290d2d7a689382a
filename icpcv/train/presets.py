"""Training presets for ``icpcv run --preset NAME``: defaults that explicit options override.

``seed`` is the seed study's set-up, read from its ``train.py``: MedicalNet's ResNet-50
(dilated, shortcut B) with the fusion head, 128 x 128 x 512 volumes, Adamax at lr 3e-4 without
weight decay, batch 8, MSE loss, fp32, 200 epochs. (The seed built an ExponentialLR(0.99)
scheduler but never stepped it, so its learning rate was constant, as here; it did not
early-stop, we do, with patience 20.)

``fast`` trades resolution for speed: ResNet-18 (MedicalNet layout and dilation, so its
weights warm-start it) on 64 x 64 x 256 volumes in bf16, batch 16, AdamW. Counted with
``torch.utils.flop_counter`` (forward + backward, per sample): ResNet-50 at 128x128x512 needs
4.94 TFLOP, ResNet-18 at 64x64x256 0.455 TFLOP: 10.9x fewer (8x from the voxels, 1.36x from
ResNet-18 over ResNet-50); bf16 tensor cores run about twice the TF32 rate, so an epoch should take roughly
1/20 of the seed preset's. Not measured: the session that wrote this had no GPU (docs/gpu.md).
``resnet18_nodil`` at the same size needs 0.088 TFLOP, another 5x less, at the price of a
2x2x8 final feature map.
"""
from __future__ import annotations

PRESETS = {
    "seed": dict(model="resnet50", shape=(128, 128, 512), phantom="seed", batch_size=8, lr=3e-4, weight_decay=0.0,
                 optimizer="adamax", precision="fp32", epochs=200, patience=20),
    "fast": dict(model="resnet18", shape=(64, 64, 256), phantom="seed", batch_size=16, lr=1e-3, weight_decay=1e-4,
                 optimizer="adamw", precision="bf16", epochs=60, patience=15),
}

#: what ``run`` uses when neither an option nor a preset says otherwise
BASE = dict(batch_size=32, lr=3e-3, weight_decay=1e-4, optimizer="adamw", precision="auto", epochs=30, patience=10)
