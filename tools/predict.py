#!/usr/bin/env python
"""Run a trained detector on images: each image drawn with its boxes, class names and scores (and masks for
Mask R-CNN), and one COCO-style JSON with every prediction.

    python tools/predict.py --config configs/coco/frcnn_r101.yaml --input photos/ --output predictions/ \\
        MODEL.WEIGHTS output/coco/frcnn_r101/model_final.pth
    python tools/predict.py --config configs/voc/frcnn_vgg16.yaml --input 'photos/*.jpg' street.png \\
        --output out --confidence 0.7 MODEL.WEIGHTS output/voc/frcnn_vgg16/model_final.pth MODEL.DEVICE cpu

--input: image files, folders (the images directly in them) or glob patterns, as many as wanted. An input that is
missing or not a readable image is named and skipped; the others are still predicted (exit status 1 only when no
image could be read). Writes OUTPUT/<image name> (PNG or JPEG as the input, PNG for other formats) and
OUTPUT/predictions.json: "images" (id, file_name, height, width), "categories" (id, name), "annotations" (one per
detection: image_id, category_id, category_name, bbox [x, y, width, height] in pixels, score, and an RLE
"segmentation" for Mask R-CNN), "skipped" (file, reason) and "info" (config, weights, confidence). Class names and
category ids come from the metadata of DATASETS.TEST[0] (COCO's ids for the COCO configs).

--config is a YAML config (trailing KEY VALUE overrides) or a LazyConfig (configs/lazy/*.py, trailing key=value:
train.init_checkpoint=... train.device=cpu). The model comes from engine/run_config.py as in evaluation: the weights
read through the project's safe loader (no code stored in the file runs) and covering the whole detector (an
ImageNet backbone alone would predict noise), each image read and resized by the config's test-time mapper;
detectron2's Visualizer draws.
"""
import argparse
import glob
import json
import os
import sys


import resnet_backbone  # noqa: F401  (registers the plugin's backbones and heads)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# drawn pictures keep the input's format where it is one of these, else become PNG
OUTPUT_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}
PREDICTIONS_JSON = "predictions.json"
# where a LazyConfig sets the score a detection needs (RetinaNet's; the R-CNN box predictor's)
_LAZY_SCORE_THRESHOLDS = ("model.test_score_thresh", "model.roi_heads.box_predictor.test_score_thresh")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", "--config", dest="config_file", required=True,
                        help="detection config: configs/coco/*.yaml, configs/voc/*.yaml or configs/lazy/*.py")
    parser.add_argument("--input", nargs="+", required=True, help="image files, folders or glob patterns")
    parser.add_argument("--output", required=True, help="folder for the drawn images and predictions.json")
    parser.add_argument("--confidence", type=float, default=0.5,
                        help="smallest score of a prediction that is drawn and written (default 0.5)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE for YAML (MODEL.WEIGHTS "
                        "...), key=value for a LazyConfig (train.init_checkpoint=...)")
    return parser


def collect_images(inputs):
    """Expand files / folders / glob patterns into an ordered list of files and a list of (input, reason) for
    inputs that name nothing."""
    files, problems = [], []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, n) for n in os.listdir(item)
                           if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(item, n)))
            if not found:
                problems.append((item, f"folder holds no images ({', '.join(IMAGE_EXTENSIONS)})"))
        elif any(c in item for c in "*?["):  # a glob pattern
            found = sorted(p for p in glob.glob(item) if os.path.isfile(p))
            if not found:
                problems.append((item, "no file matches this pattern"))
        else:
            found = [item]  # a missing file is named when it is read, in input order
        files += [f for f in found if f not in files]
    return files, problems


def setup_run(args):
    """The checked config of a prediction run (resnet_backbone.engine.run_config.RunConfig: a YAML config or a
    LazyConfig), keeping every detection --confidence asks for."""
    from omegaconf import OmegaConf

    from resnet_backbone.engine.run_config import RunConfig

    if not 0.0 <= args.confidence <= 1.0:
        raise ValueError(f"--confidence must be in [0, 1], got {args.confidence}")
    run = RunConfig.load(args.config_file, args.opts)
    # the models drop detections below their test threshold: keep everything --confidence asks for
    if run.is_lazy:
        for key in _LAZY_SCORE_THRESHOLDS:
            if OmegaConf.select(run.cfg, key) is not None:
                OmegaConf.update(run.cfg, key, args.confidence)
    else:
        run.cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence
        run.cfg.MODEL.RETINANET.SCORE_THRESH_TEST = args.confidence
    example = "train.init_checkpoint=" if run.is_lazy else "MODEL.WEIGHTS "
    return run.check(weights_needed=f"tools/predict.py needs a trained detector, e.g. {example}"
                                    "output/coco/frcnn_r101/model_final.pth")


def _categories(metadata, num_classes):
    names = list(metadata.get("thing_classes", None) or [str(i) for i in range(num_classes)])
    to_dataset = {v: k for k, v in (metadata.get("thing_dataset_id_to_contiguous_id", None) or {}).items()}
    return [{"id": int(to_dataset.get(i, i)), "name": name} for i, name in enumerate(names)], to_dataset


def _output_name(path, taken):
    stem, ext = os.path.splitext(os.path.basename(path))
    ext = ext.lower() if ext.lower() in OUTPUT_FORMATS else ".png"
    name, k = stem + ext, 1
    while name in taken:  # the same file name from two folders
        name, k = f"{stem}_{k}{ext}", k + 1
    taken.add(name)
    return name


def _write_image(rgb, path):
    from PIL import Image

    from resnet_backbone.utils.atomic import atomic_write

    with atomic_write(path, "wb") as f:
        Image.fromarray(rgb).save(f, format=OUTPUT_FORMATS[os.path.splitext(path)[1]])


def predict_images(run, files, output, *, confidence, problems=(), config_file=""):
    """Predict every readable image of ``files`` with the detector of ``run`` (a checked RunConfig) into ``output``;
    returns the JSON payload (also written)."""
    import numpy as np
    import torch
    from detectron2.data import Metadata, MetadataCatalog
    from detectron2.data.detection_utils import read_image
    from detectron2.evaluation.coco_evaluation import instances_to_coco_json
    from detectron2.utils.visualizer import ColorMode, Visualizer
    from tqdm import tqdm

    from resnet_backbone.utils.atomic import atomic_write_text

    model = run.build_model()
    num_classes = getattr(model, "roi_heads", model).num_classes  # RetinaNet has its own
    run.load_weights(model, complete=True)  # the whole detector trained: an ImageNet backbone alone predicts noise
    model = run.deploy(model.eval())  # MODEL.RB_DEPLOY.*, as tools/train_net.py --eval-only
    mapper = run.test_mapper()  # reads and resizes each image as evaluation does
    view = run.view
    metadata = MetadataCatalog.get(view.DATASETS.TEST[0]) if view.DATASETS.TEST else Metadata()
    categories, to_dataset = _categories(metadata, num_classes)
    names = {c["id"]: c["name"] for c in categories}
    os.makedirs(output, exist_ok=True)
    images, annotations = [], []
    skipped = [{"file": item, "reason": reason} for item, reason in problems]
    taken = {PREDICTIONS_JSON}
    for path in tqdm(files, desc="predicting", unit="image", dynamic_ncols=True):
        try:
            bgr = np.ascontiguousarray(read_image(path, format="BGR"))  # to draw on; the mapper reads its own
        except Exception as e:  # missing, unreadable, truncated, not an image: name it and go on
            reason = f"{type(e).__name__}: {e}"
            tqdm.write(f"skipped {path}: {reason}")
            skipped.append({"file": path, "reason": reason})
            continue
        with torch.no_grad():
            instances = model([mapper({"file_name": path})])[0]["instances"].to("cpu")
        instances = instances[instances.scores >= confidence]
        image_id = len(images) + 1
        name = _output_name(path, taken)
        drawn = Visualizer(bgr[:, :, ::-1], metadata=metadata, instance_mode=ColorMode.IMAGE)
        _write_image(drawn.draw_instance_predictions(instances).get_image(), os.path.join(output, name))
        images.append({"id": image_id, "file_name": path, "output": name, "height": int(bgr.shape[0]),
                       "width": int(bgr.shape[1])})
        for result in instances_to_coco_json(instances, image_id):
            result["category_id"] = int(to_dataset.get(result["category_id"], result["category_id"]))
            result["category_name"] = names.get(result["category_id"], str(result["category_id"]))
            result["id"] = len(annotations) + 1
            x, y, w, h = result["bbox"]
            result["area"], result["iscrowd"] = float(w * h), 0
            annotations.append(result)
    payload = {
        "info": {"config": config_file, "weights": view.MODEL.WEIGHTS, "confidence": confidence},
        "images": images, "categories": categories, "annotations": annotations, "skipped": skipped,
    }
    atomic_write_text(os.path.join(output, PREDICTIONS_JSON), json.dumps(payload, indent=1))
    return payload


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    run = setup_run(args)
    files, problems = collect_images(args.input)
    payload = predict_images(run, files, args.output, confidence=args.confidence, problems=problems,
                             config_file=args.config_file)
    done, skipped = len(payload["images"]), len(payload["skipped"])
    print(f"{done} images predicted ({len(payload['annotations'])} detections with score >= {args.confidence}), "
          f"{skipped} skipped; written to {args.output} ({PREDICTIONS_JSON} and the drawn images)")
    for entry in payload["skipped"]:
        print(f"  skipped {entry['file']}: {entry['reason']}")
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
