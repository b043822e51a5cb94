"""archspec: declarative CNN specs, per-stage profiling and local-learning training.

    import archspec
    prof = archspec.profile(my_module, input_size=(3, 224, 224), stages=["layer1", "layer2"])
    prof.to_frame()                       # pandas, one row per stage
    archspec.balance(prof); archspec.split(prof, 2)
    archspec.profile("presnet50")         # a shipped spec (or a Spec, or a YAML path)

Importing the package is cheap: torch is imported only when one of these is used (docs/api.md).
"""
__version__ = "0.1.0"

__all__ = ["Profile", "SplitResult", "balance", "compile", "load", "profile", "split"]


def __getattr__(name: str):
    if name in ("balance", "compile", "load", "profile", "split", "SplitResult"):
        from archspec import api

        return getattr(api, name)
    if name == "Profile":
        from archspec.profiling.profiler import Profile

        return Profile
    raise AttributeError(f"module 'archspec' has no attribute {name!r}")
