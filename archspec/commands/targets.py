"""What a SPEC argument names: a shipped spec, a YAML path, or ``package.module:callable`` (an
nn.Module, or a zero-argument callable returning one) from the user's own code. Profiling
commands turn either into a profile document the same way."""
from __future__ import annotations

import importlib
import re
import sys

from archspec.errors import UserError

_MODULE_REF = re.compile(r"^([A-Za-z_][\w.]*):([A-Za-z_][\w.]*)$")
DEFAULT_MODULE_SIZE = (224, 224)


def is_module_ref(text: str) -> bool:
    return bool(_MODULE_REF.match(str(text)))


def load_module(ref: str):
    """``mypkg.models:build`` -> the nn.Module it names (the current directory is importable,
    as with ``python -m``)."""
    from torch import nn

    mod_name, attr = _MODULE_REF.match(ref).groups()
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(mod_name)
    except Exception as exc:  # ImportError, or an error inside the user's module: one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot import '{mod_name}' for {ref}: {first} "
                        "(hint: run from the directory that holds it, or put it on PYTHONPATH)") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"'{mod_name}' has no attribute '{attr}' (hint: write MODULE:ATTRIBUTE, e.g. mypkg.models:build)")
        obj = getattr(obj, part)
    if not isinstance(obj, nn.Module):
        if not callable(obj):
            raise UserError(f"{ref} is a {type(obj).__name__}, not an nn.Module or a callable returning one")
        try:
            obj = obj()
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"calling {ref}() failed: {first} (hint: it must take no arguments)") from None
        if not isinstance(obj, nn.Module):
            raise UserError(f"{ref}() returned a {type(obj).__name__}, not an nn.Module")
    return obj


def profile_doc(target: str, *, batch: int, size, dtype: str, ops, training: bool = True, stages=None,
                optimizer: str = "sgd") -> dict:
    """The profile document of a spec name/path or of ``module:callable`` (by ``stages``)."""
    if is_module_ref(target):
        from archspec.profiling.module_profile import profile_module

        model = load_module(target)
        return profile_module(model, (3, *(size or DEFAULT_MODULE_SIZE)), stages=stages, batch=batch, dtype=dtype,
                              ops=ops, optimizer=optimizer, name=target).to_dict()
    if stages is not None:
        raise UserError("--stages is for module:callable targets; a spec's stages are its own "
                        "(hint: write local_stage labels in the spec)")
    from archspec.profiling.profiler import profile
    from archspec.spec import load_spec

    return profile(load_spec(target), batch=batch, size=size, dtype=dtype, optimizer=optimizer, ops=ops,
                   training=training).to_dict()


def stages_option_callback(ctx, param, value):
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        import click

        raise click.BadParameter("give submodule names, e.g. --stages layer1,layer2,layer3,layer4")
    return names
