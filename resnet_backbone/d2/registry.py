"""Registration that is safe to repeat (a module reloaded re-registers its own objects, never a foreign one)."""


def register_once(registry, obj, name=None):
    name = name or obj.__name__
    if name in registry:
        existing = registry.get(name)
        if getattr(existing, "__module__", None) != obj.__module__:
            raise RuntimeError(f"{registry._name} already holds a foreign {name!r} from {existing.__module__}")
        # same object re-defined by a reload: replace it (fvcore's Registry has no public replace)
        registry._obj_map[name] = obj
    else:
        registry._do_register(name, obj)
    return obj
