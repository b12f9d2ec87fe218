"""Every registered model: sizes against torchvision and the paper's tables, shapes, gradients, options, errors."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import FrozenBatchNorm2d

from resnet_backbone.modeling import DropPath, ResNet, create_model, list_models
from resnet_backbone.modeling.blocks import BasicBlock, BottleneckBlock
from resnet_backbone.paper_tables import TABLE1_FLOPS, TABLE6_PARAMS
from resnet_backbone.report import count_multiply_adds, count_parameters, torchvision_parameter_count

torch.set_num_threads(2)

IMAGENET_DEPTHS = (18, 34, 50, 101, 152)
# the largest models: one tiny forward/backward each is still seconds on 2 CPU threads
HEAVY = {"cifar_resnet1202", "cifar_plain1202", "vgg16", "resnext101_32x8d", "resnet152", "plain152", "resnet101",
         "plain101"}


def _param(name):
    return pytest.param(name, marks=pytest.mark.slow) if name in HEAVY else name


# ------------------------------------------------------------------------------------------------------------
# sizes
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", IMAGENET_DEPTHS)
def test_parameters_equal_torchvision(depth):
    # option B (projection where dimensions change) is torchvision's downsample
    expected = torchvision_parameter_count(f"resnet{depth}")
    assert expected is not None
    assert count_parameters(create_model(f"resnet{depth}", shortcut="B")) == expected


def test_vgg16_and_resnext_parameters_equal_torchvision():
    for name in ("vgg16", "resnext50_32x4d"):
        assert count_parameters(create_model(name)) == torchvision_parameter_count(name), name


@pytest.mark.parametrize("resnet, plain", [("resnet34", "plain34"), ("resnet50", "plain50"),
                                           ("cifar_resnet56", "cifar_plain56")])
def test_option_a_and_plain_nets_have_equal_counts_and_no_shortcut_parameters(resnet, plain):
    a = create_model(resnet, shortcut="A")
    p = create_model(plain)
    assert count_parameters(a) == count_parameters(p)
    for model in (a, p):
        assert not [n for n, _ in model.named_parameters() if "shortcut" in n]
    # and option B / C add projections (C on every block)
    if not resnet.startswith("cifar"):
        b, c = create_model(resnet, shortcut="B"), create_model(resnet, shortcut="C")
        assert count_parameters(a) < count_parameters(b) < count_parameters(c)


@pytest.mark.parametrize("depth", sorted(TABLE6_PARAMS))
def test_cifar_parameters_match_table6(depth):
    for name in (f"cifar_resnet{depth}", f"cifar_plain{depth}"):
        n = count_parameters(create_model(name))
        assert TABLE6_PARAMS[depth].agrees(n), f"{name}: {n} vs paper {TABLE6_PARAMS[depth].value}"


@pytest.mark.parametrize("depth", [d if d < 101 else pytest.param(d, marks=pytest.mark.slow)
                                   for d in IMAGENET_DEPTHS])
def test_multiply_adds_match_table1(depth):
    macs = count_multiply_adds(create_model(f"resnet{depth}"), 224)  # paper stride placement (default)
    paper = TABLE1_FLOPS[depth].value
    assert abs(macs - paper) <= 0.05 * paper, f"resnet{depth}: {macs / 1e9:.3f} vs paper {paper / 1e9} GFLOPs"


def test_torchvision_stride_placement_costs_more():
    # torchvision's "v1.5" puts the stride in the 3x3: the 1x1 before it runs at full resolution
    paper = count_multiply_adds(create_model("resnet50", stride_in_1x1=True), 64)
    v15 = count_multiply_adds(create_model("resnet50", stride_in_1x1=False), 64)
    assert v15 > 1.05 * paper


# ------------------------------------------------------------------------------------------------------------
# every registered model: shapes, gradients, finiteness
# ------------------------------------------------------------------------------------------------------------


# BatchNorm in training mode makes gradients grow exponentially with depth in a net without shortcuts (Yang et al.,
# ICLR 2019, "A Mean Field Theory of Batch Normalization"): at 1202 layers they overflow on the first step. The paper
# never trains a plain net that deep (Fig. 6: plain-20..56); for these nets the backward runs with fixed statistics.
TRAIN_MODE_GRADIENTS_OVERFLOW = {"cifar_plain1202"}


@pytest.mark.parametrize("name", [_param(n) for n in list_models()])
def test_every_model_forward_backward(name):
    torch.manual_seed(0)
    model = create_model(name).train(name not in TRAIN_MODE_GRADIENTS_OVERFLOW)
    size = 16 if name.startswith("cifar") else 32  # CIFAR maps 16/8/4; ImageNet res5 1x1
    size = 8 if name.endswith("1202") else size  # 1202 layers: the smallest maps (8/4/2) keep it affordable
    x = torch.randn(2, 3, size, size)
    logits = model(x)
    assert logits.shape == (2, model.num_classes) and torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"no gradient reaches {no_grad[:5]}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients in {bad[:5]}"
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x[:1])).all()


def test_backbone_outputs_and_strides():
    model = create_model("resnet50", num_classes=None, out_features=["stem", "res2", "res3", "res4", "res5"])
    out = model(torch.randn(1, 3, 64, 64))
    for name, spec in model.output_shape().items():
        assert out[name].shape == (1, spec.channels, 64 // spec.stride, 64 // spec.stride), name


# ------------------------------------------------------------------------------------------------------------
# options
# ------------------------------------------------------------------------------------------------------------


def test_drop_path_identity_in_eval_and_stochastic_in_train():
    drop = DropPath(0.5)
    x = torch.ones(2000, 3)
    assert torch.equal(drop.eval()(x), x)
    y = drop.train()(x)
    kept = y[:, 0] != 0
    assert 0.45 < kept.float().mean().item() < 0.55
    assert torch.allclose(y[kept], torch.full_like(y[kept], 2.0))  # kept samples scaled by 1 / (1 - p)

    torch.manual_seed(0)
    dropping = create_model("cifar_resnet20", drop_path_rate=0.5)
    plain = create_model("cifar_resnet20")
    plain.load_state_dict(dropping.state_dict())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(dropping.eval()(x), plain.eval()(x))
        dropping.train()
        assert not torch.equal(dropping(x), dropping(x))


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "cifar_resnet20"])
def test_zero_init_last_makes_blocks_identity(name):
    model = create_model(name, zero_init_last=True).eval()
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, BottleneckBlock))]
    assert blocks
    for block in blocks:
        x = F.relu(torch.randn(2, block.in_channels, 8, 8))
        shortcut = block.shortcut(x) if block.shortcut is not None else x
        with torch.no_grad():
            assert torch.allclose(block(x), F.relu(shortcut)), type(block).__name__
        if block.shortcut is None:
            assert torch.equal(block(x), x)  # a true identity where the shortcut is


def test_freeze_at():
    model = create_model("resnet50", freeze_at=2)
    for name, p in model.named_parameters():
        assert p.requires_grad == (not name.startswith(("stem.", "res2."))), name
    assert isinstance(model.stem.conv1.norm, FrozenBatchNorm2d) and isinstance(model.res2[0].conv1.norm,
                                                                                FrozenBatchNorm2d)
    assert isinstance(model.res3[0].conv1.norm, torch.nn.BatchNorm2d)
    vgg = create_model("vgg16", num_classes=None, freeze_at=2)
    frozen = {n.split(".")[0] for n, p in vgg.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1_1", "conv1_2", "conv2_1", "conv2_2"}


@pytest.mark.parametrize("build, bad", [
    (lambda: create_model("resnet42"), "resnet42"),
    (lambda: ResNet(42), "42"),
    (lambda: create_model("cifar_resnet21"), "21"),
    (lambda: ResNet(2, variant="cifar"), "got 2"),  # n = 0 blocks per stage
    (lambda: create_model("resnet18", shortcut="D"), "'D'"),
    (lambda: BottleneckBlock(64, 256, bottleneck_channels=64, num_groups=3), "groups=3"),  # 3 does not divide 64
    (lambda: create_model("resnet18", norm="XN"), "'XN'"),
    (lambda: create_model("resnet18", colour=True), "colour"),
    (lambda: create_model("plain18", shortcut="B"), "'B'"),
    (lambda: create_model("resnet18", drop_path_rate=1.0), "1.0"),
    (lambda: create_model("resnet18", freeze_at=9), "got 9"),
])
def test_bad_options_raise_value_error_naming_the_value(build, bad):
    with pytest.raises(ValueError) as info:
        build()
    assert bad in str(info.value)


def test_validators_keep_bools_and_numbers_apart():
    import numpy as np

    from resnet_backbone.modeling.options import check_choice, check_int, check_rate

    for call in (lambda: check_choice("stride_in_1x1", 1, (True, False)),  # 1 == True in Python
                 lambda: check_choice("res5_dilation", True, (1, 2)),
                 lambda: check_int("depth", True, 1),
                 lambda: check_rate("drop_path_rate", False),
                 lambda: create_model("resnet18", stride_in_1x1=1)):
        with pytest.raises(ValueError):
            call()
    assert check_choice("channels_last", "auto", (True, False, "auto")) == "auto"
    seed = check_int("seed", np.int64(3), 0)
    assert seed == 3 and type(seed) is int
    with pytest.raises(ValueError, match=r"freeze_at must be an integer in \[0, 5\], got 6"):
        check_int("freeze_at", 6, 0, 5)
