# COCO data for the plugin's detectors, the LazyConfig form of the INPUT / DATASETS / DATALOADER part of the YAML
# configs. `single_scale(600, 1000)`: the ResNet paper's Faster R-CNN (shorter side 600, longer side at most 1000,
# Sec 4.3); `multi_scale((640, ..., 800), 800, 1333)`: detectron2's 3x recipe of the FPN detectors. Images are read
# by the plugin's CheckedDatasetMapper (an unreadable image is an error naming the file) and scored by the plugin's
# evaluator choice (COCO or VOC metric, from the dataset's metadata).
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, build_detection_train_loader, get_detection_dataset_dicts
from omegaconf import OmegaConf

from resnet_backbone.data.checked_mapper import CheckedDatasetMapper
from resnet_backbone.engine.lazy import detection_evaluator


def make_dataloader(train_sizes, test_size, max_size, *, images_per_batch, masks=False):
    """train / test loaders and the evaluator: random horizontal flips in training, shorter side from
    `train_sizes` (one drawn per image), `test_size` to test, longer side at most `max_size`."""
    dataloader = OmegaConf.create()
    # the paper trains on COCO train (80k) and evaluates on val (40k); detectron2's 2017 split is the closest
    # registered pair (train2017 = train2014 + val minus minival)
    dataloader.train = L(build_detection_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names=["coco_2017_train"]),
        mapper=L(CheckedDatasetMapper)(
            is_train=True,
            augmentations=[
                L(T.ResizeShortestEdge)(short_edge_length=tuple(train_sizes), max_size=max_size,
                                        sample_style="choice"),
                L(T.RandomFlip)(horizontal=True),
            ],
            # the channel order the model was built for (model.input_format)
            image_format="${model.input_format}",
            use_instance_mask=masks,
            # True: skip unreadable training images with a warning (RB_TRAIN.SKIP_UNREADABLE_IMAGES)
            skip_unreadable=False,
        ),
        total_batch_size=images_per_batch,
        num_workers=4,
    )
    dataloader.test = L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names=["coco_2017_val"], filter_empty=False),
        mapper=L(CheckedDatasetMapper)(
            is_train=False,
            augmentations=[
                L(T.ResizeShortestEdge)(short_edge_length=test_size, max_size=max_size, sample_style="choice"),
            ],
            image_format="${...train.mapper.image_format}",
            use_instance_mask=masks,
        ),
        num_workers=4,
    )
    # one evaluator per test dataset (tools/lazy_train_net.py sets dataset_name to each of dataloader.test's names)
    dataloader.evaluator = L(detection_evaluator)(dataset_name="${..test.dataset.names}", mask_on=masks,
                                                  output_dir="${train.output_dir}")
    return dataloader


def single_scale(size, max_size, *, images_per_batch=8):
    return make_dataloader((size,), size, max_size, images_per_batch=images_per_batch)


def multi_scale(train_sizes, test_size, max_size, *, images_per_batch=16, masks=False):
    return make_dataloader(train_sizes, test_size, max_size, images_per_batch=images_per_batch, masks=masks)
