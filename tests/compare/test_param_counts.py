"""Issue 3, acceptance 1: archjax parameter counts equal timm's exactly."""

import pytest
import timm

from archjax import models

NAMES = [
    "resnet18",
    "resnet50",
    "resnet101",
    "resnet50d",  # ResNet-D: deep stem, avg-pool shortcut
    "resnetrs50",  # + SE, conv stem pool
    "wide_resnet50_2",
    "vgg16",
    "vgg16_bn",
    "nf_resnet50",
    "dm_nfnet_f0",
    "regnetx_016",
    "regnety_016",
    "vit_small_patch16_224",
    "vit_base_patch16_224",
    "mixer_b16_224",
    "convnext_tiny",
]


@pytest.mark.parametrize("name", NAMES)
def test_param_count_equals_timm(name):
    want = sum(p.numel() for p in timm.create_model(name, pretrained=False).parameters())
    assert models.count_params(models.create(name), (1, 224, 224, 3)) == want
