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


def check_bool(what, value):
    """Raise ValueError unless ``value`` is True or False (not 0 / 1, not a string); returns it."""
    return check_choice(what, value, (True, False))


def check_number(what, value, minimum=None, maximum=None, *, above=False, below=False):
    """Raise ValueError unless ``value`` is a real number (not a bool) within the bounds: ``minimum`` / ``maximum``
    inclusive, or exclusive with ``above`` / ``below``; returns it as a float."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value  # NaN fails
    if ok and minimum is not None:
        ok = value > minimum if above else value >= minimum
    if ok and maximum is not None:
        ok = value < maximum if below else value <= maximum
    if not ok:
        low = "" if minimum is None else f"{'>' if above else '>='} {minimum}"
        high = "" if maximum is None else f"{'<' if below else '<='} {maximum}"
        bounds = " and ".join(b for b in (low, high) if b)
        raise ValueError(f"{what} must be a number{' ' + bounds if bounds else ''}, got {value!r}")
    return float(value)


def check_sequence(what, value, check_item, length=None, *, increasing=False, nonempty=False):
    """Raise ValueError unless ``value`` is a list / tuple (of ``length`` items, if given; non-empty with
    ``nonempty``; strictly increasing with ``increasing``) whose items pass ``check_item(name, item)``; returns a
    list of the checked items."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{what} must be a list, got {value!r}")
    if (length is not None and len(value) != length) or (nonempty and not value):
        size = f"of {length} items" if length is not None else "with at least one item"
        raise ValueError(f"{what} must be a list {size}, got {list(value)!r}")
    items = [check_item(f"{what}[{i}]", v) for i, v in enumerate(value)]
    if increasing and any(b <= a for a, b in zip(items, items[1:])):
        raise ValueError(f"{what} must be increasing, got {list(value)!r}")
    return items


def check_path(what, value):
    """Raise ValueError unless ``value`` is a non-empty path string; returns it."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty path, got {value!r}")
    return value
