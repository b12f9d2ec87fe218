"""Allowed values of the model options, as data, and the one check that names a bad value."""

SHORTCUT_OPTIONS = ("A", "B", "C", "none")  # paper Sec 3.3; "none" = plain net
BLOCK_NAMES = ("basic", "bottleneck")
NORM_OPTIONS = ("BN", "SyncBN", "FrozenBN", "GN", "naiveSyncBN", "nnSyncBN", "")  # detectron2's get_norm
STAGE_NAMES = ("stem", "res2", "res3", "res4", "res5")


def check_choice(what, value, allowed):
    """Raise ValueError naming the bad value and the allowed ones."""
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(map(repr, allowed))}")
    return value


def check_int(what, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def check_rate(what, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{what} must be a number in [0, 1), got {value!r}")
    return float(value)
