"""Classification data: ImageNet folder / CIFAR readers, paper transforms, the generated set, the loader helpers."""
import io
import json
import os
import pickle
import struct
import warnings

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from resnet_backbone.checkpoint.safe_load import restricted_load
from resnet_backbone.data.classification import (
    CIFAR10Dataset,
    CorruptImageError,
    ImageNetFolder,
    build_classification_loader,
    measure_loader_throughput,
    read_cifar_batch,
    set_loader_epoch,
)
from resnet_backbone.data.synthetic_classification import (
    MAX_CLASSES,
    class_attributes,
    class_names,
    generate_classification_set,
)
from resnet_backbone.data.transforms import (
    CIFAR10_PAPER,
    IMAGENET_PAPER,
    IMAGENET_PCA_EIGVAL,
    IMAGENET_PCA_EIGVEC,
    IMAGENET_TORCHVISION,
    Lighting,
    Normalize,
    Preprocessing,
    RandomShorterSideResize,
    TenCrop,
    average_crop_logits,
    cifar_eval_transform,
    cifar_train_transform,
    imagenet_eval_transform,
    imagenet_train_transform,
)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    return generate_classification_set(root, num_classes=4, train_per_class=3, val_per_class=2, image_size=40)


# --------------------------------------------------------------------------------------------- CIFAR format


class _Python2StylePickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` opcodes (BINSTRING), as the official CIFAR files (made by Python 2) do."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + struct.pack("<B", n) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _write_pickle(path, obj, style):
    with open(path, "wb") as f:
        if style == "py2":
            _Python2StylePickler(f, protocol=2).dump(obj)
        else:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)


def _write_tiny_cifar(root, style, per_batch=3, num_classes=10, seed=0):
    """The official layout with ``per_batch`` random images per file; returns the expected train/test arrays."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    expected = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, size=(per_batch, 32, 32, 3), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, num_classes, per_batch)]
        # Row layout from the CIFAR page: 1024 red values, then green, then blue, each plane row-major.
        data = np.concatenate([images[..., c].reshape(per_batch, 1024) for c in range(3)], axis=1)
        _write_pickle(folder / name, {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                                      b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)]}, style)
        expected[name] = (images, labels)
    names = [f"class{i}".encode() for i in range(num_classes)]
    _write_pickle(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": per_batch,
                                            b"num_vis": 3072}, style)
    train = [expected[f"data_batch_{i}"] for i in range(1, 6)]
    return (np.concatenate([t[0] for t in train]), sum((t[1] for t in train), []), *expected["test_batch"])


class _TorchvisionCIFAR10(torchvision.datasets.CIFAR10):
    """torchvision's reader as the reference, without the md5 checks of the official files."""

    train_list = [[f"data_batch_{i}", None] for i in range(1, 6)]
    test_list = [["test_batch", None]]
    meta = {"filename": "batches.meta", "key": "label_names", "md5": None}


@pytest.mark.parametrize("style", ["py2", "py3"])
def test_cifar_reader_reads_the_standard_batches(tmp_path, style):
    train_images, train_labels, test_images, test_labels = _write_tiny_cifar(tmp_path, style)
    train = CIFAR10Dataset(tmp_path, "train")
    test = CIFAR10Dataset(tmp_path / "cifar-10-batches-py", "test")  # the batches folder itself works too
    np.testing.assert_array_equal(train.images, train_images)
    assert train.targets.tolist() == train_labels
    np.testing.assert_array_equal(test.images, test_images)
    assert test.targets.tolist() == test_labels
    assert train.classes == [f"class{i}" for i in range(10)]
    img, label = train[4]
    assert isinstance(img, Image.Image) and img.size == (32, 32) and label == train_labels[4]
    np.testing.assert_array_equal(np.asarray(img), train_images[4])
    if style == "py2":  # Python-2 style file: torchvision's own reader agrees
        ref = _TorchvisionCIFAR10(str(tmp_path), train=True)
        np.testing.assert_array_equal(ref.data, train.images)
        assert ref.targets == train.targets.tolist()
        assert ref.classes == train.classes


class _Evil:
    def __init__(self, reduce):
        self._reduce = reduce

    def __reduce__(self):
        return self._reduce


def test_cifar_reader_refuses_a_malicious_pickle(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "data_batch_1"
    for reduce, named in [((open, (str(marker), "w")), r"io\.open"),
                          ((os.system, (f"touch {marker}",)), "system"),
                          ((eval, ("1",)), r"builtins\.eval")]:
        with open(bad, "wb") as f:
            pickle.dump({b"data": _Evil(reduce), b"labels": []}, f, protocol=2)
        with pytest.raises(pickle.UnpicklingError, match=named) as info:
            read_cifar_batch(bad)
        assert str(bad) in str(info.value)
        assert not marker.exists()
    # Arbitrary classes are refused as well, not only callables.
    buf = pickle.dumps(torch.nn.Identity())
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        restricted_load(io.BytesIO(buf), encoding="bytes")


def test_restricted_unpickler_admits_arrays_and_builtins():
    value = {b"a": np.arange(6, dtype=np.int16).reshape(2, 3), "b": [1, 2.5, 3j, {4}, frozenset({5}), bytearray(b"x")],
             "c": np.float32(1.5), "d": (None, True, b"bytes")}
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        out = restricted_load(io.BytesIO(pickle.dumps(value, protocol=protocol)), encoding="bytes")
        np.testing.assert_array_equal(out[b"a"], value[b"a"])
        assert out[b"a"].dtype == np.int16
        assert out["b"] == value["b"] and out["c"] == value["c"] and out["d"] == value["d"]


def test_cifar_bad_batches_name_the_file(tmp_path):
    _write_tiny_cifar(tmp_path, "py3")
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    _write_pickle(path, {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "py3")
    with pytest.raises(ValueError, match="data_batch_3"):
        CIFAR10Dataset(tmp_path, "train")
    os.remove(path)
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        CIFAR10Dataset(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="batches.meta"):
        CIFAR10Dataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="split"):
        CIFAR10Dataset(tmp_path, "validation")


def test_cifar_train_val_split_is_deterministic_and_disjoint(tmp_path):
    train_images, _, _, _ = _write_tiny_cifar(tmp_path, "py3", per_batch=4)  # 20 training images
    keys = lambda ds: {img.tobytes() for img in ds.images}  # noqa: E731 - random images are unique
    train = CIFAR10Dataset(tmp_path, "train", val_size=5, split_seed=3)
    val = CIFAR10Dataset(tmp_path, "val", val_size=5, split_seed=3)
    assert (len(train), len(val)) == (15, 5)
    assert not keys(train) & keys(val)
    assert keys(train) | keys(val) == {img.tobytes() for img in train_images}
    assert keys(CIFAR10Dataset(tmp_path, "val", val_size=5, split_seed=3)) == keys(val)
    assert keys(CIFAR10Dataset(tmp_path, "val", val_size=5, split_seed=4)) != keys(val)
    assert len(CIFAR10Dataset(tmp_path, "train")) == 20  # no split: all training images
    with pytest.raises(ValueError, match="val_size"):
        CIFAR10Dataset(tmp_path, "val")


# --------------------------------------------------------------------------------------------- ImageNet folders


def test_imagenet_folder_matches_torchvision_imagefolder(generated):
    ds = ImageNetFolder(generated.root, "train")
    ref = torchvision.datasets.ImageFolder(str(generated.root / "train"))
    assert ds.classes == ref.classes == sorted(generated.classes)
    assert ds.class_to_idx == ref.class_to_idx
    assert ds.samples == [(p, t) for p, t in ref.samples]
    img, target = ds[len(ds) - 1]
    assert img.mode == "RGB" and img.size == (40, 40) and target == len(ds.classes) - 1
    assert len(ImageNetFolder(generated.root, "val")) == generated.num_val


def test_imagenet_folder_errors_name_the_path(tmp_path, generated):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "train")):
        ImageNetFolder(tmp_path, "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match=str(tmp_path / "train")):
        ImageNetFolder(tmp_path, "train")
    (tmp_path / "train" / "n0001").mkdir()
    (tmp_path / "train" / "n0001" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="n0001"):
        ImageNetFolder(tmp_path, "train")


def _tree_with_corrupt_image(tmp_path):
    for i, cls in enumerate(["n01", "n02"]):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for j in range(2):
            Image.new("RGB", (12, 10), (40 * i, 80 * j, 10)).save(tmp_path / "train" / cls / f"im{j}.JPEG")
    good = (tmp_path / "train" / "n01" / "im0.JPEG").read_bytes()
    bad = tmp_path / "train" / "n01" / "im1.JPEG"
    bad.write_bytes(good[: len(good) // 2])  # truncated
    return bad


def test_corrupt_image_raises_naming_the_file(tmp_path):
    bad = _tree_with_corrupt_image(tmp_path)
    ds = ImageNetFolder(tmp_path, "train")
    assert len(ds) == 4
    ds[0]
    with pytest.raises(CorruptImageError, match=str(bad)):
        ds[1]
    with pytest.raises(CorruptImageError, match=str(bad)):
        ImageNetFolder(tmp_path, "train", verify=True)


def test_skip_corrupt_warns_instead(tmp_path):
    bad = _tree_with_corrupt_image(tmp_path)
    ds = ImageNetFolder(tmp_path, "train", skip_corrupt=True)
    with pytest.warns(UserWarning, match=str(bad)):
        img, target = ds[1]
    assert target == 1 and img.getpixel((0, 0))[0] > 20  # the next readable image (class n02) in its place
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # already known: no second read, no second warning
        assert ds[1][1] == 1
    with pytest.warns(UserWarning, match=str(bad)):
        verified = ImageNetFolder(tmp_path, "train", skip_corrupt=True, verify=True)
    assert len(verified) == 3 and str(bad) not in [p for p, _ in verified.samples]


# --------------------------------------------------------------------------------------------- transforms


def _random_pil(h, w, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_normalize_matches_torchvision_and_respects_order_and_range():
    x = torch.rand(2, 3, 5, 4)
    ref = T.Normalize(IMAGENET_TORCHVISION.pixel_mean, IMAGENET_TORCHVISION.pixel_std)(x)
    torch.testing.assert_close(Normalize(IMAGENET_TORCHVISION)(x), ref)
    # The same normalisation expressed in [0, 255] BGR, as detectron2 / Caffe would.
    d2 = IMAGENET_TORCHVISION.as_detectron2()
    bgr = Preprocessing(d2["MODEL.PIXEL_MEAN"][::-1], d2["MODEL.PIXEL_STD"][::-1], "BGR", 255)
    torch.testing.assert_close(Normalize(bgr)(x), ref.flip(-3))
    torch.testing.assert_close(Normalize(IMAGENET_PAPER)(x),
                               x * 255 - torch.tensor(IMAGENET_PAPER.pixel_mean).view(3, 1, 1))


def test_preprocessing_is_data():
    p = Preprocessing((1, 2, 3), (4, 5, 6), "BGR", 1)
    assert Preprocessing.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    np.testing.assert_allclose(IMAGENET_TORCHVISION.as_detectron2()["MODEL.PIXEL_MEAN"], [123.675, 116.28, 103.53])
    np.testing.assert_allclose(IMAGENET_TORCHVISION.as_detectron2()["MODEL.PIXEL_STD"], [58.395, 57.12, 57.375])
    for bad in [dict(pixel_mean=(1, 2)), dict(pixel_mean=(1, 2, 3), pixel_std=(1, 0, 1)),
                dict(pixel_mean=(1, 2, 3), channel_order="RBG"), dict(pixel_mean=(1, 2, 3), input_range=100)]:
        with pytest.raises(ValueError):
            Preprocessing(**bad)
    with pytest.raises(ValueError, match="unknown"):
        Preprocessing.from_dict({"pixel_mean": (1, 2, 3), "mean": 1})
    images = np.random.default_rng(0).integers(0, 256, (7, 5, 6, 3), dtype=np.uint8)
    stats = Preprocessing.from_images(images, with_std=True, input_range=1, chunk=3)
    flat = images.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(stats.pixel_mean, flat.mean(0))
    np.testing.assert_allclose(stats.pixel_std, flat.std(0))


def test_scale_augmentation_shorter_side_in_range():
    resize = RandomShorterSideResize(20, 24)
    seen = set()
    for i in range(60):
        h, w = [(30, 50), (61, 33), (40, 40)][i % 3]
        out = resize(_random_pil(h, w))
        short, long_ = min(out.size), max(out.size)
        assert 20 <= short <= 24
        assert abs(long_ / short - max(h, w) / min(h, w)) < 0.1  # aspect ratio kept
        seen.add(short)
    assert seen == set(range(20, 25))  # both ends of the closed range are drawn
    with pytest.raises(ValueError):
        RandomShorterSideResize(30, 20)


def test_imagenet_train_transform_shapes_and_ranges():
    tf = imagenet_train_transform(IMAGENET_TORCHVISION, scale=(24, 30), crop_size=20, lighting_std=0.0)
    lo = (0 - torch.tensor(IMAGENET_TORCHVISION.pixel_mean)) / torch.tensor(IMAGENET_TORCHVISION.pixel_std)
    hi = (1 - torch.tensor(IMAGENET_TORCHVISION.pixel_mean)) / torch.tensor(IMAGENET_TORCHVISION.pixel_std)
    for seed in range(5):
        out = tf(_random_pil(26 + seed, 40, seed))
        assert out.shape == (3, 20, 20) and out.dtype == torch.float32
        assert (out.amin((1, 2)) >= lo - 1e-5).all() and (out.amax((1, 2)) <= hi + 1e-5).all()
    paper = imagenet_train_transform(IMAGENET_PAPER, scale=(24, 30), crop_size=20)
    out = paper(_random_pil(40, 40)) + torch.tensor(IMAGENET_PAPER.pixel_mean).view(3, 1, 1)
    assert out.shape == (3, 20, 20) and out.min() > -20 and out.max() < 275  # [0, 255] plus a small lighting shift
    with pytest.raises(ValueError, match="crop_size"):
        imagenet_train_transform(scale=(200, 480), crop_size=224)


def test_pca_lighting_shifts_colours_and_keeps_shape():
    img = torch.rand(3, 6, 7)
    g = torch.Generator().manual_seed(5)
    out = Lighting(0.1, generator=g)(img)
    assert out.shape == img.shape
    shift = out - img
    assert shift.abs().max() > 1e-4  # colours changed ...
    torch.testing.assert_close(shift, shift[:, :1, :1].expand_as(shift))  # ... by one RGB offset for the image
    # Krizhevsky et al.'s formula: [p1 p2 p3] [a1 l1, a2 l2, a3 l3]^T with a ~ N(0, 0.1), same draw.
    alpha = torch.randn(3, generator=torch.Generator().manual_seed(5)) * 0.1
    expected = sum(alpha[i] * IMAGENET_PCA_EIGVAL[i] * torch.tensor([row[i] for row in IMAGENET_PCA_EIGVEC])
                   for i in range(3))
    torch.testing.assert_close(shift[:, 0, 0], expected)
    assert torch.equal(Lighting(0.0)(img), img)


def test_imagenet_eval_center_crop_matches_torchvision():
    img = _random_pil(30, 45)
    ours = imagenet_eval_transform(IMAGENET_TORCHVISION, resize_size=24, crop_size=20)(img)
    ref = T.Compose([T.Resize(24), T.CenterCrop(20), T.ToTensor(),
                     T.Normalize(IMAGENET_TORCHVISION.pixel_mean, IMAGENET_TORCHVISION.pixel_std)])(img)
    torch.testing.assert_close(ours, ref)


def test_ten_crop_corners_center_and_flips():
    img = _random_pil(30, 45)
    crops = imagenet_eval_transform(IMAGENET_TORCHVISION, resize_size=24, crop_size=20, ten_crop=True)(img)
    assert crops.shape == (10, 3, 20, 20)
    full = T.Normalize(IMAGENET_TORCHVISION.pixel_mean, IMAGENET_TORCHVISION.pixel_std)(
        T.ToTensor()(T.Resize(24)(img)))
    h, w = full.shape[-2:]
    assert (h, w) == (24, 36)
    corners = [full[:, :20, :20], full[:, :20, w - 20:], full[:, h - 20:, :20], full[:, h - 20:, w - 20:]]
    for i, ref in enumerate(corners):
        torch.testing.assert_close(crops[i], ref)
    torch.testing.assert_close(crops[4], TF.center_crop(full, [20, 20]))
    for i in range(5):
        torch.testing.assert_close(crops[5 + i], crops[i].flip(-1))
    # The same ten views as torchvision's TenCrop (which orders the flipped corners differently).
    tv = torch.stack(T.TenCrop(20)(full))
    for crop in crops:
        assert any(torch.equal(crop, other) for other in tv)
    with pytest.raises(ValueError):
        TenCrop(40)(full)


def test_average_crop_logits():
    logits = torch.randn(3, 10, 5)
    torch.testing.assert_close(average_crop_logits(logits), logits.mean(1))
    torch.testing.assert_close(average_crop_logits(logits.flatten(0, 1)), logits.mean(1))
    with pytest.raises(ValueError):
        average_crop_logits(torch.randn(7, 5))
    with pytest.raises(ValueError):
        average_crop_logits(torch.randn(2, 5, 5))


def test_cifar_transforms():
    img = _random_pil(32, 32)
    norm = cifar_eval_transform()(img)
    torch.testing.assert_close(norm, T.ToTensor()(img) * 255 - torch.tensor(CIFAR10_PAPER.pixel_mean).view(3, 1, 1))
    # Training views: a shift by at most 4 pixels of the mean-subtracted image (zero = mean colour outside),
    # possibly mirrored.
    padded = torch.nn.functional.pad(norm, (4, 4, 4, 4))
    views = [padded[:, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
    views += [v.flip(-1) for v in views]
    tf = cifar_train_transform()
    outs = [tf(img) for _ in range(12)]
    for out in outs:
        assert out.shape == (3, 32, 32)
        assert any(torch.equal(out, v) for v in views)
    assert len({o.sum().item() for o in outs}) > 1  # random


# --------------------------------------------------------------------------------------------- generator


def _pixels(root, split):
    return {p: np.asarray(Image.open(p)) for p, _ in ImageNetFolder(root, split).samples}


def test_generator_is_deterministic_and_idempotent(tmp_path):
    kw = dict(num_classes=3, train_per_class=2, val_per_class=1, image_size=24, seed=7)
    a = generate_classification_set(tmp_path / "a", **kw)
    b = generate_classification_set(tmp_path / "b", **kw)
    pa, pb = _pixels(a.root, "train"), _pixels(b.root, "train")
    assert [os.path.relpath(p, a.root) for p in pa] == [os.path.relpath(p, b.root) for p in pb]
    assert all(np.array_equal(x, y) for x, y in zip(pa.values(), pb.values()))
    # An image does not depend on how many images per class were asked for.
    more = generate_classification_set(tmp_path / "more", **(kw | {"train_per_class": 3}))
    first = ImageNetFolder(more.root, "train").samples[0][0]
    assert np.array_equal(np.asarray(Image.open(first)), next(iter(pa.values())))
    other = generate_classification_set(tmp_path / "c", **(kw | {"seed": 8}))
    assert not all(np.array_equal(x, y) for x, y in zip(pa.values(), _pixels(other.root, "train").values()))

    mtimes = {p: os.stat(p).st_mtime_ns for p in pa}
    again = generate_classification_set(tmp_path / "a", **kw)
    assert not again.created and a.created
    assert {p: os.stat(p).st_mtime_ns for p in pa} == mtimes
    # other parameters: the set is made again (utils/completion's one rule), with nothing left of the old one
    reseeded = generate_classification_set(tmp_path / "a", **(kw | {"seed": 8, "num_classes": 2}))
    assert reseeded.created and len(ImageNetFolder(reseeded.root, "train").classes) == 2
    assert all(np.array_equal(x, y) for x, y in zip(_pixels(other.root, "train").values(),
                                                    _pixels(reseeded.root, "train").values()))
    generate_classification_set(tmp_path / "a", **kw)
    os.remove(next(iter(pa)))  # a missing file: the set is written again
    assert generate_classification_set(tmp_path / "a", **kw).created
    assert all(np.array_equal(x, y) for x, y in zip(pa.values(), _pixels(a.root, "train").values()))


def test_generator_classes_and_arguments():
    names = class_names(MAX_CLASSES)
    assert len(set(names)) == MAX_CLASSES == len({class_attributes(i) for i in range(MAX_CLASSES)})
    assert names == sorted(names)
    first = [class_attributes(i) for i in range(6)]
    assert len({s for s, _, _ in first}) == 6 and len({t for _, _, t in first}) == 3
    assert len({c for _, c, _ in map(class_attributes, range(8))}) == 8
    for i in range(10):  # two of the first ten classes with one colour differ in shape and texture too
        for j in range(i):
            a, b = class_attributes(i), class_attributes(j)
            assert a[1] != b[1] or (a[0] != b[0] and a[2] != b[2])
    for bad in [dict(num_classes=1), dict(num_classes=MAX_CLASSES + 1), dict(layout="coco"),
                dict(layout="cifar", image_size=40), dict(train_per_class=0)]:
        with pytest.raises(ValueError):
            generate_classification_set("/nonexistent-root-never-written", **bad)


def test_generator_cifar_layout_matches_the_folder_layout(tmp_path):
    kw = dict(num_classes=3, train_per_class=4, val_per_class=2, image_size=32, seed=1)
    folders = generate_classification_set(tmp_path, **kw)
    batches = generate_classification_set(tmp_path, layout="cifar", **kw)  # both layouts can share a root
    assert batches.created and batches.manifest != folders.manifest
    for split, cifar_split in (("train", "train"), ("val", "test")):
        cifar = CIFAR10Dataset(tmp_path, cifar_split)
        assert cifar.classes == list(folders.classes)
        folder = {(t, np.asarray(Image.open(p)).tobytes()) for p, t in ImageNetFolder(tmp_path, split).samples}
        assert {(int(t), img.tobytes()) for img, t in zip(cifar.images, cifar.targets)} == folder
        assert len(cifar) == len(folder)


@pytest.mark.slow
def test_generated_classes_are_learnable_by_a_small_cnn(tmp_path):
    gen = generate_classification_set(tmp_path, num_classes=10, train_per_class=30, val_per_class=10,
                                      layout="cifar", seed=0)
    prep = Preprocessing.from_images(CIFAR10Dataset(tmp_path, "train").images)

    def tensors(split):
        ds = CIFAR10Dataset(tmp_path, split, cifar_eval_transform(prep))
        return torch.stack([ds[i][0] for i in range(len(ds))]) / 64, torch.as_tensor(ds.targets)

    (x, y), (xv, yv) = tensors("train"), tensors("test")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(32, len(gen.classes)))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(15):
        for idx in torch.randperm(len(x)).split(50):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    with torch.no_grad():
        accuracy = (net(xv).argmax(1) == yv).float().mean().item()
    assert accuracy > 0.7, accuracy  # chance: 0.1


# --------------------------------------------------------------------------------------------- loaders


def test_loader_order_seed_and_options(generated):
    ds = ImageNetFolder(generated.root, "train", imagenet_eval_transform(resize_size=32, crop_size=32))
    labels = lambda loader: [t for _, ts in loader for t in ts.tolist()]  # noqa: E731
    a = build_classification_loader(ds, 5, train=True, num_workers=0, seed=1)
    b = build_classification_loader(ds, 5, train=True, num_workers=0, seed=1)
    assert labels(a) == labels(b) and len(labels(a)) == 10  # drop_last while training: 12 -> 10
    assert a.pin_memory == torch.cuda.is_available()
    ev = build_classification_loader(ds, 5, train=False, num_workers=0)
    assert labels(ev) == ds.targets  # evaluation: in order, nothing dropped
    set_loader_epoch(ev, 3)  # no DistributedSampler: a no-op
    with pytest.raises(RuntimeError, match="not initialised"):
        build_classification_loader(ds, 5, train=True, num_workers=0, distributed=True)
    with pytest.raises(ValueError, match="batch_size"):
        build_classification_loader(ds, 0, train=True, num_workers=0)


def test_loader_distributed_sampler(generated, tmp_path):
    import torch.distributed as dist

    ds = ImageNetFolder(generated.root, "val")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        loader = build_classification_loader(ds, 4, train=True, num_workers=0, distributed=True, seed=2)
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
        set_loader_epoch(loader, 1)
        first = list(loader.sampler)
        set_loader_epoch(loader, 2)
        assert sorted(first) == sorted(loader.sampler) == list(range(len(ds)))
        assert first != list(loader.sampler)
    finally:
        dist.destroy_process_group()


def test_loader_workers_and_throughput(generated):
    ds = ImageNetFolder(generated.root, "train",
                        imagenet_train_transform(scale=(32, 40), crop_size=32, lighting_std=0.1))
    loader = build_classification_loader(ds, 4, train=True, num_workers=2, seed=0)
    assert loader.persistent_workers and loader.num_workers == 2
    images, targets = next(iter(loader))
    assert images.shape == (4, 3, 32, 32) and targets.shape == (4,)
    rate = measure_loader_throughput(loader, num_batches=5)  # more than one epoch (3 batches): wraps around
    assert rate > 0
    ten = ImageNetFolder(generated.root, "val", imagenet_eval_transform(resize_size=36, crop_size=32, ten_crop=True))
    ten_loader = build_classification_loader(ten, 4, train=False, num_workers=0)
    assert next(iter(ten_loader))[0].shape == (4, 10, 3, 32, 32)
    assert measure_loader_throughput(ten_loader, 2, warmup_batches=0) > 0
