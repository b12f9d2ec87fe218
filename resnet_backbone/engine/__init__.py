"""Training: the detection Trainer (detectron2's DefaultTrainer), config loading, launch checks, pretraining loop."""
