"""Training: the detection Trainer (detectron2's DefaultTrainer), config loading, launch checks, LazyConfig support,
detector export; the pretraining stage (engine/pretrain/) and the CIFAR depth study built on it."""
