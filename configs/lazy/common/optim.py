# SGD as detectron2's build_optimizer makes it from SOLVER.* (weight decay on every parameter but the norms'
# scale / shift, SOLVER.WEIGHT_DECAY_NORM 0), and the step schedule of SOLVER.{STEPS, GAMMA, WARMUP_*}.
import torch
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params
from fvcore.common.param_scheduler import MultiStepParamScheduler


def sgd(lr, *, momentum=0.9, weight_decay=1e-4):
    return L(torch.optim.SGD)(
        # params.model is set to the model by tools/lazy_train_net.py before the optimizer is built
        params=L(get_default_optimizer_params)(weight_decay_norm=0.0),
        lr=lr,
        momentum=momentum,
        nesterov=False,
        weight_decay=weight_decay,
    )


def step_schedule(steps, max_iter, *, gamma=0.1, warmup_iters=0, warmup_factor=0.001):
    """lr multiplier: gamma^k after the k-th of `steps`, linear warm-up from `warmup_factor` over `warmup_iters`."""
    steps = [s for s in steps if s <= max_iter]
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[gamma**k for k in range(len(steps) + 1)], milestones=steps, num_updates=max_iter
        ),
        warmup_length=min(warmup_iters / max_iter, 1.0),
        warmup_method="linear",
        warmup_factor=warmup_factor,
    )
