# Training settings read by tools/lazy_train_net.py: detectron2's configs/common/train.py keys plus the plugin's
# weight checks. Leaf configs set max_iter, init_checkpoint, output_dir and the checkpoint period.
train = dict(
    output_dir="./output",
    # MODEL.WEIGHTS: a detectron2:// path, URL or file (read by the plugin's SafeDetectionCheckpointer)
    init_checkpoint="",
    max_iter=90000,
    amp=dict(enabled=False),
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    # max_to_keep None keeps every checkpoint, as the YAML configs' SOLVER.CHECKPOINT_PERIOD
    checkpointer=dict(period=20000, max_to_keep=None),
    # 0: evaluate only after training
    eval_period=0,
    # iterations between log lines / metrics.json records (RB_TRAIN.LOG_PERIOD)
    log_period=20,
    device="cuda",
    seed=-1,
    # MODEL.RB_WEIGHTS.ALLOW_PARTIAL: load init_checkpoint even when it leaves most of the backbone uninitialised
    allow_partial=False,
    # MODEL.RB_WEIGHTS.ALLOW_RANDOM_FROZEN: train even when frozen layers got no weights from init_checkpoint
    allow_random_frozen=False,
    # MODEL.RB_WEIGHTS.CHECK_PREPROCESSING: check model.pixel_mean / pixel_std / input_format against the weights
    check_preprocessing=True,
)
