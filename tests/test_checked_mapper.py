"""An unreadable detection image: an error naming the file, or a skip with a warning when asked."""
import logging

import pytest

from resnet_backbone.data.checked_mapper import CheckedDatasetMapper, UnreadableImageError
from resnet_backbone.engine.config_io import load_config


@pytest.fixture
def truncated_jpeg(tmp_path):
    from PIL import Image

    path = tmp_path / "broken.jpg"
    Image.new("RGB", (64, 48), (200, 10, 10)).save(path)
    path.write_bytes(path.read_bytes()[:100])
    return path


def _dict(path):
    return {"file_name": str(path), "height": 48, "width": 64, "image_id": 1,
            "annotations": [{"bbox": [1, 1, 10, 10], "bbox_mode": 1, "category_id": 0}]}


def test_unreadable_image_is_named(truncated_jpeg):
    mapper = CheckedDatasetMapper(load_config(""), is_train=True)
    with pytest.raises(UnreadableImageError, match="broken.jpg"):
        mapper(_dict(truncated_jpeg))


def test_missing_image_is_named(tmp_path):
    mapper = CheckedDatasetMapper(load_config(""), is_train=False)
    with pytest.raises(UnreadableImageError, match="gone.jpg"):
        mapper(_dict(tmp_path / "gone.jpg"))


def test_skip_unreadable_warns(truncated_jpeg, caplog):
    mapper = CheckedDatasetMapper(load_config(""), is_train=True, skip_unreadable=True)
    with caplog.at_level(logging.WARNING):
        assert mapper(_dict(truncated_jpeg)) is None
    assert "broken.jpg" in caplog.text
