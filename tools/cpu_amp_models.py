"""Small transformers measured under CPU autocast by tools/measure_cpu_amp_transformers.sh
(the planner's tests build the same models: crates/memory/tests/cpu_amp.rs)."""
import torchvision


def vit_1x2():
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=64, mlp_dim=128,
        num_classes=10)


def vit_2x4():
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=4, num_layers=2, num_heads=4, hidden_dim=96, mlp_dim=192,
        num_classes=10)


def maxvit_32():
    from torchvision.models.maxvit import MaxVit
    return MaxVit(input_size=(32, 32), stem_channels=16, partition_size=2, block_channels=[16, 32],
                  block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.1, num_classes=10)


def maxvit_64():
    from torchvision.models.maxvit import MaxVit
    return MaxVit(input_size=(64, 64), stem_channels=16, partition_size=4, block_channels=[16, 32],
                  block_layers=[2, 1], head_dim=8, stochastic_depth_prob=0.2, num_classes=10)


def _swin(v2):
    from torchvision.models.swin_transformer import (
        SwinTransformer, SwinTransformerBlockV2, PatchMergingV2)
    kw = dict(block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2) if v2 else {}
    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2],
                           window_size=[4, 4], stochastic_depth_prob=0.1, num_classes=10, **kw)


def swin_v1():
    return _swin(False)


def swin_v2():
    return _swin(True)
