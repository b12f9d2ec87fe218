"""add_resnet_backbone_config: the plugin's config keys, one comment each. Call it before merge_from_file.

Existing detectron2 keys keep their meaning where they apply: MODEL.RESNETS.{DEPTH, OUT_FEATURES, NORM,
NUM_GROUPS, WIDTH_PER_GROUP, STRIDE_IN_1X1, RES5_DILATION, STEM_OUT_CHANNELS, RES2_OUT_CHANNELS} and
MODEL.BACKBONE.FREEZE_AT (for every backbone: the number of its stages frozen, d2/specs.py's freeze_stages).

`check_resnet_backbone_config` checks every key added here (KEY_CHECKS, with modeling/options.py's validators) when
a config loads (engine/config_io.load_config; LazyConfigs through their yacs view): a bad value is a ValueError
naming the key, the value and what is allowed, before anything is built or trained.
"""
from detectron2.config import CfgNode as CN

from .modeling.options import (NORM_OPTIONS, SHORTCUT_OPTIONS, check_bool, check_choice, check_int, check_number,
                               check_path, check_rate, check_sequence)


def add_resnet_backbone_config(cfg):
    """Add the plugin's keys to a detectron2 config (idempotent: existing values are kept)."""
    _c = cfg.MODEL
    if "RB_RESNET" not in _c:
        _c.RB_RESNET = CN()
        # paper Sec 3.3 shortcut option: "A" (zero-pad identity), "B" (projection where dims change),
        # "C" (projection everywhere) or "none" (plain net)
        _c.RB_RESNET.SHORTCUT = "B"
        # "imagenet" (Table 1 stem and four stages) or "cifar" (3x3 stem, three stages of 16/32/64, depth 6n+2)
        _c.RB_RESNET.VARIANT = "imagenet"
        # stochastic depth: drop-path rate of the last block, decaying linearly to 0 at the first
        _c.RB_RESNET.DROP_PATH_RATE = 0.0
        # zero-init the last norm of each residual branch (Goyal et al. 2017); only for trainable norms
        _c.RB_RESNET.ZERO_INIT_LAST = False
        # backbone in channels-last memory format (same function, features returned contiguous): True, False or
        # "auto" (on for MODEL.DEVICE cpu, where oneDNN trains it faster)
        _c.RB_RESNET.CHANNELS_LAST = "auto"
    if "VGG" not in _c:
        _c.VGG = CN()
        # VGG-16 features returned by the backbone (conv5_3 = stride 16, pool5 dropped as in Faster R-CNN)
        _c.VGG.OUT_FEATURES = ["conv5_3"]
        # older spelling of MODEL.BACKBONE.FREEZE_AT for VGG-16 (which counts conv blocks there, 2 = conv1_x and
        # conv2_x): None = not set; a value must equal MODEL.BACKBONE.FREEZE_AT (checked when the config loads)
        _c.VGG.FREEZE_AT = None
        # dropout after fc6 and fc7 of the VGG box head (0.5 as in VGG)
        _c.VGG.DROPOUT = 0.5
    if "RB_DEPLOY" not in _c:
        _c.RB_DEPLOY = CN()
        # fold frozen BatchNorm into the preceding convolutions after loading weights (inference only)
        _c.RB_DEPLOY.FUSE_BN = False
        # run the backbone in channels-last memory format
        _c.RB_DEPLOY.CHANNELS_LAST = False
        # CPU: convolutions on pre-packed oneDNN weights, ReLU / shortcut addition fused into them (after FUSE_BN)
        _c.RB_DEPLOY.ONEDNN = False
        # CPU, with ONEDNN: 3x3 / stride-1 convolutions may run Winograd F(4x4 or 2x2, 3x3), where KERNELS picks it
        # (resnet_backbone/deploy/winograd.py; kernels built with the C compiler)
        _c.RB_DEPLOY.WINOGRAD = False
        # CPU, with ONEDNN: "measure" = each convolution times its candidate kernels (F.conv2d NCHW / NHWC, packed
        # oneDNN, Winograd) on its first input of each shape and keeps the fastest, cached under RB_CACHE_DIR per CPU,
        # torch version and thread count (deploy/kernels.py); "rules" = the fixed rule, nothing measured
        _c.RB_DEPLOY.KERNELS = "measure"
        # wrap the model in torch.compile (inference; falls back to eager with a log line if compiling fails)
        _c.RB_DEPLOY.COMPILE = False
        # "float32", or "float16" / "bfloat16": inference in that precision, outputs float32 (its accuracy, ~1e-2
        # relative): on CPU with ONEDNN bfloat16 weights converted once (float32 on CPUs without bfloat16
        # instructions), elsewhere torch.autocast (float16 on CUDA, bfloat16 on CUDA GPUs that have it and on CPU)
        _c.RB_DEPLOY.PRECISION = "float32"
        # "torch", or "openvino": the backbone and the box head's res5 / fc layers run by OpenVINO (CPU, PRECISION
        # float32 or bfloat16; pip install -e .[deploy]); resnet_backbone/deploy/openvino_parts.py
        _c.RB_DEPLOY.RUNTIME = "torch"
    if "RB_WEIGHTS" not in _c:
        _c.RB_WEIGHTS = CN()
        # allow MODEL.WEIGHTS to leave more than half of the backbone uninitialised (otherwise the load is refused)
        _c.RB_WEIGHTS.ALLOW_PARTIAL = False
        # check MODEL.PIXEL_MEAN / PIXEL_STD / INPUT.FORMAT against what MODEL.WEIGHTS needs (its .provenance.json,
        # or the known public source its name shows: MSRA, torchvision, detectron2 model zoo)
        _c.RB_WEIGHTS.CHECK_PREPROCESSING = True
        # train even when frozen stages (FREEZE_AT) or FrozenBN layers got no weights from MODEL.WEIGHTS, i.e. stay
        # random / identity (otherwise training refuses to start)
        _c.RB_WEIGHTS.ALLOW_RANDOM_FROZEN = False
    if "RB_TRAIN" not in cfg:
        cfg.RB_TRAIN = CN()
        # detection training: iterations between log lines / metrics.json records (detectron2 hard-codes 20)
        cfg.RB_TRAIN.LOG_PERIOD = 20
        # training images that cannot be read: False = stop with an error naming the file; True = skip with a warning
        cfg.RB_TRAIN.SKIP_UNREADABLE_IMAGES = False
    if "PRETRAIN" not in cfg:
        cfg.PRETRAIN = _pretrain_defaults()
    return cfg


def _pretrain_defaults():
    """cfg.PRETRAIN: the classification stage (tools/pretrain_net.py, tools/cifar_study.py); paper Sec 3.4 / 4.2.
    Also read there: MODEL.DEVICE, OUTPUT_DIR, SEED (< 0: drawn once and stored in the checkpoint)."""
    p = CN()
    # classifier to train: a resnet_backbone.create_model name (resnet50, plain34, cifar_resnet110, vgg16, ...)
    p.MODEL = "resnet50"
    # output classes; 0 = the number of classes of the training set
    p.NUM_CLASSES = 0
    # residual nets' shortcut option "A" / "B" / "C"; "" = the model's default (B ImageNet, A CIFAR)
    p.SHORTCUT = ""
    # ResNets' norm layer ("BN": per-GPU statistics as in the paper; "SyncBN": over all GPUs; "naiveSyncBN":
    # detectron2's all-reduce version, also on CPU processes (GLOO), so N processes train as one with N x the batch)
    p.NORM = "BN"
    # ResNets: zero-initialise each residual branch's last BN (Goyal et al. 2017), so that every block starts as
    # the identity; not in the paper, which trains without it (the shipped configs keep False)
    p.ZERO_INIT_LAST = False
    # mixed precision: the forward under autocast in bfloat16 where the device supports it (CPU, recent CUDA GPUs;
    # no loss scaling needed), else float16 with a GradScaler (saved in the checkpoints); evaluation stays float32
    p.AMP = False
    p.DATASET = CN()
    # "imagenet" (ROOT/{train,val}/<wnid>/*), "cifar10" (ROOT/cifar-10-batches-py) or the embedded generated
    # sets "generated_imagenet" / "generated_cifar10" / "digits" (scikit-learn's real handwritten digits on cluttered
    # backgrounds, data/digits.py; ImageNet layout) written under ROOT on first use
    p.DATASET.NAME = "imagenet"
    # data folder; a relative path is taken under $RB_DATASETS (default <repo>/datasets)
    p.DATASET.ROOT = "imagenet"
    # CIFAR: training images held out for validation (paper: 45k/5k to choose the schedule); 0 = test on test_batch
    p.DATASET.VAL_SIZE = 0
    # ImageNet folders: skip unreadable images with a warning instead of stopping with an error naming the file
    p.DATASET.SKIP_CORRUPT = False
    # generated sets only: number of classes (at most 144)
    p.DATASET.GENERATED_NUM_CLASSES = 10
    # generated sets only: training images per class
    p.DATASET.GENERATED_TRAIN_PER_CLASS = 50
    # generated sets only: validation images per class
    p.DATASET.GENERATED_VAL_PER_CLASS = 10
    # generated sets only: seed of the image generator (not of training: that is the top-level SEED)
    p.DATASET.GENERATED_SEED = 0
    p.INPUT = CN()
    # scale augmentation: shorter side random in [min, max] (Sec 3.4: [256, 480]); ImageNet-style sets only
    p.INPUT.SCALE = (256, 480)
    # random training crop and evaluation crop size (224; CIFAR sets use the 32x32 image)
    p.INPUT.CROP_SIZE = 224
    # evaluation: shorter side resized to this before the centre crop or the 10 crops
    p.INPUT.TEST_RESIZE = 256
    # std of AlexNet's PCA colour augmentation (Krizhevsky et al. 2012: 0.1); 0 disables it
    p.INPUT.LIGHTING_STD = 0.1
    # CIFAR: zero padding before the random 32x32 crop (Sec 4.2: 4)
    p.INPUT.CIFAR_PADDING = 4
    # random horizontal flips in training
    p.INPUT.FLIP = True
    # network input in detectron2's convention: pixels in [0, 255] in FORMAT order, (x - PIXEL_MEAN) / PIXEL_STD.
    # These defaults are detectron2's (MSRA models: BGR, mean subtraction only), so exported weights fit its
    # default MODEL.PIXEL_MEAN / PIXEL_STD / INPUT.FORMAT; they are recorded beside the exported weights.
    p.INPUT.PIXEL_MEAN = [103.530, 116.280, 123.675]
    # per-channel divisor, same order and units as PIXEL_MEAN (1 = mean subtraction only, as the paper)
    p.INPUT.PIXEL_STD = [1.0, 1.0, 1.0]
    # channel order of the network input: "BGR" or "RGB"
    p.INPUT.FORMAT = "BGR"
    p.SOLVER = CN()
    # images per iteration over all processes (paper: 256 ImageNet, 128 CIFAR)
    p.SOLVER.IMS_PER_BATCH = 256
    # learning rate for REFERENCE_BATCH images, scaled linearly to IMS_PER_BATCH (Goyal et al. 2017)
    p.SOLVER.BASE_LR = 0.1
    # the batch size BASE_LR is given for (paper: 0.1 for 256 on ImageNet, 0.1 for 128 on CIFAR)
    p.SOLVER.REFERENCE_BATCH = 256
    # SGD momentum (paper: 0.9)
    p.SOLVER.MOMENTUM = 0.9
    # weight decay on every parameter (paper: 1e-4)
    p.SOLVER.WEIGHT_DECAY = 0.0001
    # Nesterov momentum (not in the paper)
    p.SOLVER.NESTEROV = False
    # "step": lr x GAMMA at each of STEPS; "plateau": lr x GAMMA when the validation top-1 error has not improved
    # by PLATEAU_THRESHOLD for PLATEAU_PATIENCE evaluations (Sec 3.4: "divided by 10 when the error plateaus")
    p.SOLVER.LR_SCHEDULER = "step"
    # iterations at which the step schedule multiplies the lr by GAMMA (CIFAR: 32k, 48k)
    p.SOLVER.STEPS = (32000, 48000)
    # lr factor of each step / plateau drop
    p.SOLVER.GAMMA = 0.1
    # training iterations (CIFAR: 64k; ImageNet: up to 600k)
    p.SOLVER.MAX_ITER = 64000
    # plateau schedule: evaluations without improvement before a drop
    p.SOLVER.PLATEAU_PATIENCE = 3
    # plateau schedule: smallest decrease of the top-1 error (a fraction) that counts as an improvement
    p.SOLVER.PLATEAU_THRESHOLD = 0.001
    # plateau schedule: at most this many drops (0.1 -> 0.0001 in the paper's ImageNet runs: 3)
    p.SOLVER.PLATEAU_MAX_DROPS = 3
    # warm-up: lr x WARMUP_FACTOR for at most WARMUP_ITERS iterations (0 = none), ended early once the training
    # error (mean of the last iterations) is below WARMUP_UNTIL_ERROR. Sec 4.2, ResNet-110: 0.01 until the
    # training error is below 80% (about 400 iterations)
    p.SOLVER.WARMUP_ITERS = 0
    # lr multiplier during warm-up (0.01 / 0.1)
    p.SOLVER.WARMUP_FACTOR = 0.1
    # training-error fraction that ends the warm-up early (0 = warm up for all of WARMUP_ITERS)
    p.SOLVER.WARMUP_UNTIL_ERROR = 0.8
    # data-loading worker processes per training process
    p.NUM_WORKERS = 4
    # every this many iterations: a metrics.json / TensorBoard record (loss, error, lr, images/s, times, ETA) and a
    # console line as train_net's, smoothed (median) over these iterations
    p.LOG_PERIOD = 20
    # save a resumable checkpoint every this many iterations (and at the end)
    p.CHECKPOINT_PERIOD = 5000
    # checkpoints kept on disk (oldest deleted first); 0 keeps all
    p.KEEP_CHECKPOINTS = 3
    # evaluate (1-crop) on the validation set every this many iterations; 0 = only at the end
    p.EVAL_PERIOD = 5000
    p.TEST = CN()
    # evaluation images per process (a 10-crop batch holds 10x as many crops)
    p.TEST.IMS_PER_BATCH = 32
    # final evaluation also with the standard 10 crops (ImageNet-style sets; CIFAR is single-view, Sec 4.2)
    p.TEST.TEN_CROP = True
    p.PRECISE_BN = CN()
    # recompute BN statistics as a true average over training batches after training (MSRA release notes;
    # fvcore's precise BN)
    p.PRECISE_BN.ENABLED = False
    # training batches used for the recomputation
    p.PRECISE_BN.NUM_ITER = 200
    # after training, write OUTPUT_DIR/model_final_d2.pkl (detectron2 format, loads into the plugin's C4 / FPN /
    # VGG-16 detectors through MODEL.WEIGHTS) and its .provenance.json (preprocessing, checked when loaded)
    p.EXPORT = True
    return p


def _vgg_features():
    from .modeling.vgg import vgg_conv_names  # the model's layer list, the one source of the names
    return tuple(vgg_conv_names())


def _choices(module, name):
    """A tuple of allowed values defined where it is used (imported late: those modules import the config's users)."""
    import importlib
    return getattr(importlib.import_module(module, __package__), name)


def _positive_int(what, value):
    return check_int(what, value, 1)


def _count(what, value):
    return check_int(what, value, 0)


def _model_name(what, value):
    try:  # the factory's names, CIFAR nets of any depth 6n+2 included
        _choices(".modeling.factory", "_spec")(value)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    return value


_BOOL = check_bool
_RATE = check_rate

# every key of add_resnet_backbone_config -> check(what, value), raising ValueError naming `what`, the value and what
# is allowed (tests/test_config_checks.py walks them all with a bad value)
KEY_CHECKS = {
    "MODEL.RB_RESNET.SHORTCUT": lambda w, v: check_choice(w, v, SHORTCUT_OPTIONS),
    "MODEL.RB_RESNET.VARIANT": lambda w, v: check_choice(w, v, _choices(".modeling.resnet", "VARIANTS")),
    "MODEL.RB_RESNET.DROP_PATH_RATE": _RATE,
    "MODEL.RB_RESNET.ZERO_INIT_LAST": _BOOL,
    "MODEL.RB_RESNET.CHANNELS_LAST": lambda w, v: check_choice(w, v, (True, False, "auto")),
    "MODEL.VGG.OUT_FEATURES": lambda w, v: check_sequence(w, v, lambda w2, f: check_choice(w2, f, _vgg_features()),
                                                          nonempty=True),
    "MODEL.VGG.FREEZE_AT": lambda w, v: v if v is None else check_int(w, v, 0, len(_vgg_features())),
    "MODEL.VGG.DROPOUT": _RATE,
    "MODEL.RB_DEPLOY.FUSE_BN": _BOOL,
    "MODEL.RB_DEPLOY.CHANNELS_LAST": _BOOL,
    "MODEL.RB_DEPLOY.ONEDNN": _BOOL,
    "MODEL.RB_DEPLOY.WINOGRAD": _BOOL,
    "MODEL.RB_DEPLOY.KERNELS": lambda w, v: check_choice(w, v, _choices(".deploy.kernels", "MODES")),
    "MODEL.RB_DEPLOY.COMPILE": _BOOL,
    "MODEL.RB_DEPLOY.PRECISION": lambda w, v: check_choice(w, v, _choices(".deploy.precision", "PRECISIONS")),
    "MODEL.RB_DEPLOY.RUNTIME": lambda w, v: check_choice(w, v, _choices(".deploy.openvino_parts", "RUNTIMES")),
    "MODEL.RB_WEIGHTS.ALLOW_PARTIAL": _BOOL,
    "MODEL.RB_WEIGHTS.CHECK_PREPROCESSING": _BOOL,
    "MODEL.RB_WEIGHTS.ALLOW_RANDOM_FROZEN": _BOOL,
    "RB_TRAIN.LOG_PERIOD": _positive_int,
    "RB_TRAIN.SKIP_UNREADABLE_IMAGES": _BOOL,
    "PRETRAIN.MODEL": _model_name,
    "PRETRAIN.NUM_CLASSES": _count,
    "PRETRAIN.SHORTCUT": lambda w, v: check_choice(w, v, ("", "A", "B", "C")),
    "PRETRAIN.NORM": lambda w, v: check_choice(w, v, tuple(n for n in NORM_OPTIONS if n)),
    "PRETRAIN.AMP": _BOOL,
    "PRETRAIN.ZERO_INIT_LAST": _BOOL,
    "PRETRAIN.DATASET.NAME": lambda w, v: check_choice(w, v, tuple(_choices(".data.classification_sets",
                                                                            "DATASETS"))),
    "PRETRAIN.DATASET.ROOT": check_path,
    "PRETRAIN.DATASET.VAL_SIZE": _count,
    "PRETRAIN.DATASET.SKIP_CORRUPT": _BOOL,
    "PRETRAIN.DATASET.GENERATED_NUM_CLASSES": lambda w, v: check_int(
        w, v, 2, _choices(".data.synthetic_classification", "MAX_CLASSES")),
    "PRETRAIN.DATASET.GENERATED_TRAIN_PER_CLASS": _positive_int,
    "PRETRAIN.DATASET.GENERATED_VAL_PER_CLASS": _positive_int,
    "PRETRAIN.DATASET.GENERATED_SEED": lambda w, v: check_int(w, v, 0, 2**32 - 1),  # numpy's 32-bit seeds
    "PRETRAIN.INPUT.SCALE": lambda w, v: check_sequence(w, v, lambda w2, s: check_int(w2, s, 1), 2),
    "PRETRAIN.INPUT.CROP_SIZE": _positive_int,
    "PRETRAIN.INPUT.TEST_RESIZE": _positive_int,
    "PRETRAIN.INPUT.LIGHTING_STD": lambda w, v: check_number(w, v, 0),
    "PRETRAIN.INPUT.CIFAR_PADDING": _count,
    "PRETRAIN.INPUT.FLIP": _BOOL,
    "PRETRAIN.INPUT.PIXEL_MEAN": lambda w, v: check_sequence(w, v, check_number, 3),
    "PRETRAIN.INPUT.PIXEL_STD": lambda w, v: check_sequence(w, v, lambda w2, s: check_number(w2, s, 0, above=True), 3),
    "PRETRAIN.INPUT.FORMAT": lambda w, v: check_choice(w, v, ("BGR", "RGB")),
    "PRETRAIN.SOLVER.IMS_PER_BATCH": _positive_int,
    "PRETRAIN.SOLVER.BASE_LR": lambda w, v: check_number(w, v, 0, above=True),
    "PRETRAIN.SOLVER.REFERENCE_BATCH": _positive_int,
    "PRETRAIN.SOLVER.MOMENTUM": _RATE,
    "PRETRAIN.SOLVER.WEIGHT_DECAY": lambda w, v: check_number(w, v, 0),
    "PRETRAIN.SOLVER.NESTEROV": _BOOL,
    "PRETRAIN.SOLVER.LR_SCHEDULER": lambda w, v: check_choice(w, v, _choices(".engine.pretrain.schedule",
                                                                             "SCHEDULERS")),
    "PRETRAIN.SOLVER.STEPS": lambda w, v: check_sequence(w, v, lambda w2, s: check_int(w2, s, 1), increasing=True),
    "PRETRAIN.SOLVER.GAMMA": lambda w, v: check_number(w, v, 0, 1, above=True),
    "PRETRAIN.SOLVER.MAX_ITER": _positive_int,
    "PRETRAIN.SOLVER.PLATEAU_PATIENCE": _positive_int,
    "PRETRAIN.SOLVER.PLATEAU_THRESHOLD": lambda w, v: check_number(w, v, 0),
    "PRETRAIN.SOLVER.PLATEAU_MAX_DROPS": _count,
    "PRETRAIN.SOLVER.WARMUP_ITERS": _count,
    "PRETRAIN.SOLVER.WARMUP_FACTOR": lambda w, v: check_number(w, v, 0, 1, above=True),
    "PRETRAIN.SOLVER.WARMUP_UNTIL_ERROR": lambda w, v: check_number(w, v, 0, 1),
    "PRETRAIN.NUM_WORKERS": _count,
    "PRETRAIN.LOG_PERIOD": _positive_int,
    "PRETRAIN.CHECKPOINT_PERIOD": _positive_int,
    "PRETRAIN.KEEP_CHECKPOINTS": _count,
    "PRETRAIN.EVAL_PERIOD": _count,
    "PRETRAIN.TEST.IMS_PER_BATCH": _positive_int,
    "PRETRAIN.TEST.TEN_CROP": _BOOL,
    "PRETRAIN.PRECISE_BN.ENABLED": _BOOL,
    "PRETRAIN.PRECISE_BN.NUM_ITER": _positive_int,
    "PRETRAIN.EXPORT": _BOOL,
}


def _value(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def backbone_freeze_at(cfg) -> int:
    """MODEL.BACKBONE.FREEZE_AT, the one freeze key: the number of the backbone's stages frozen (d2/specs.py's
    freeze_stages: stem, res2..res5 for ResNets; conv1..conv5 for VGG-16). MODEL.VGG.FREEZE_AT, its older VGG-16
    spelling, may only repeat it."""
    from .d2.specs import backbone_spec  # d2/ imports this module

    freeze_at, alias = cfg.MODEL.BACKBONE.FREEZE_AT, cfg.MODEL.VGG.FREEZE_AT
    spec = backbone_spec(cfg)
    if spec is not None:
        what = f"MODEL.BACKBONE.FREEZE_AT (frozen stages of {spec.label_for(cfg)}: {', '.join(spec.freeze_stages)})"
        check_int(what, freeze_at, 0, len(spec.freeze_stages))
    if alias is not None and alias != freeze_at:
        raise ValueError(f"MODEL.VGG.FREEZE_AT is {alias!r} but MODEL.BACKBONE.FREEZE_AT is {freeze_at!r}: "
                         f"MODEL.VGG.FREEZE_AT is an older name of MODEL.BACKBONE.FREEZE_AT (for VGG-16 the number of "
                         f"conv blocks frozen); allowed: None or {freeze_at!r}. Set MODEL.BACKBONE.FREEZE_AT only.")
    return freeze_at


def check_resnet_backbone_config(cfg, spelled=None):
    """Check every key of add_resnet_backbone_config in ``cfg`` (KEY_CHECKS) and the freeze key against the
    backbone's stages; ValueError names the key, the value and what is allowed. ``spelled``: {key: the name the
    user wrote it under}, for configs of another form (a LazyConfig's train.log_period)."""
    spelled = spelled or {}
    for key, check in KEY_CHECKS.items():
        check(spelled.get(key, key), _value(cfg, key))
    backbone_freeze_at(cfg)
    return cfg
