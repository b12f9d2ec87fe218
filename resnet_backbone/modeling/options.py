"""Allowed values of the model options, as data, and the project's checks that name a bad value and what is allowed
(used for model options, config keys and function arguments alike)."""
import numbers

SHORTCUT_OPTIONS = ("A", "B", "C", "none")  # paper Sec 3.3; "none" = plain net
NORM_OPTIONS = ("BN", "SyncBN", "FrozenBN", "GN", "naiveSyncBN", "nnSyncBN", "")  # detectron2's get_norm


def _same_kind(value, allowed) -> bool:
    # 1 == True and 0 == False in Python: a bool matches only a bool, so 1 is not accepted for True (nor True for 1).
    return isinstance(value, bool) == isinstance(allowed, bool)


def check_choice(what, value, allowed):
    """Raise ValueError naming the bad value and the allowed ones; returns ``value``."""
    if not any(value == a and _same_kind(value, a) for a in allowed):
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(map(repr, allowed))}")
    return value


def check_int(what, value, minimum, maximum=None):
    """Raise ValueError unless ``value`` is an integer (not a bool; numpy integers count) in [minimum, maximum];
    returns it as an int."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum
            or (maximum is not None and value > maximum)):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{what} must be an integer {bounds}, got {value!r}")
    return int(value)


def check_rate(what, value):
    """Raise ValueError unless ``value`` is a number in [0, 1); returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{what} must be a number in [0, 1), got {value!r}")
    return float(value)
