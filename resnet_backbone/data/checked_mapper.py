"""detectron2's DatasetMapper with a clear error naming an unreadable image (or skip-with-warning, if asked)."""
import logging

from detectron2.data import DatasetMapper

logger = logging.getLogger(__name__)


class UnreadableImageError(RuntimeError):
    pass


class CheckedDatasetMapper(DatasetMapper):
    """Reading or decoding an image fails with UnreadableImageError naming the file. With `skip_unreadable=True`
    the sample is skipped with a warning naming the file (detectron2's MapDataset then draws another one)."""

    def __init__(self, cfg, is_train=True, skip_unreadable=False):
        super().__init__(cfg, is_train=is_train)
        self.skip_unreadable = skip_unreadable

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
