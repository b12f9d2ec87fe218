"""detectron2's DatasetMapper with a clear error naming an unreadable image (or skip-with-warning, if asked)."""
import logging

from detectron2.config import configurable
from detectron2.data import DatasetMapper

logger = logging.getLogger(__name__)


class UnreadableImageError(RuntimeError):
    pass


class CheckedDatasetMapper(DatasetMapper):
    """Reading or decoding an image fails with UnreadableImageError naming the file. With `skip_unreadable=True`
    the sample is skipped with a warning naming the file (detectron2's MapDataset then draws another one).

    Built like detectron2's DatasetMapper: from a cfg (`CheckedDatasetMapper(cfg, is_train, skip_unreadable)`) or
    from its keyword arguments (is_train, augmentations, image_format, ...; LazyConfig) plus `skip_unreadable`."""

    @configurable
    def __init__(self, *, skip_unreadable=False, **kwargs):
        super().__init__(**kwargs)
        self.skip_unreadable = skip_unreadable

    @classmethod
    def from_config(cls, cfg, is_train=True, skip_unreadable=False):
        return dict(super().from_config(cfg, is_train), skip_unreadable=skip_unreadable)

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except (OSError, SyntaxError, ValueError) as e:  # PIL: truncated, not an image, bad header; missing file
            name = dataset_dict.get("file_name", "<no file_name>")
            if self.skip_unreadable:
                logger.warning("skipping unreadable image %s: %s", name, e)
                return None
            raise UnreadableImageError(
                f"cannot read image {name}: {e}. Fix or remove the file, or set "
                f"RB_TRAIN.SKIP_UNREADABLE_IMAGES True to skip such images with a warning") from e
