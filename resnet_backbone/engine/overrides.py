"""Config overrides kept as YAML data (e.g. configs/demo/shapes_small_scale.yaml) turned into KEY VALUE lists."""
import yaml


def load_override_sections(path):
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected sections of KEY: VALUE overrides, got {type(data).__name__}")
    return data


def overrides_to_opts(*sections):
    """[{KEY: VALUE}, ...] -> ["KEY", "VALUE", ...] in yacs' merge_from_list syntax (later sections win)."""
    merged = {}
    for section in sections:
        merged.update(section or {})
    opts = []
    for key, value in merged.items():
        opts += [key, _literal(value)]
    return opts


def _literal(value):
    # merge_from_list literal-evaluates strings: lists become tuples where the default is a tuple
    if isinstance(value, str):
        return value
    return repr(value)
