"""What a SPEC argument names: a shipped spec, a YAML path, or ``package.module:callable`` (an
nn.Module, or a zero-argument callable returning one) from the user's own code. Profiling
commands turn either into a profile document the same way."""
from __future__ import annotations

from archspec.api import is_module_ref, load_module  # one parser of module:callable for the API and the CLI
from archspec.errors import UserError

DEFAULT_MODULE_SIZE = (224, 224)


def profile_doc(target: str, *, batch: int, size, dtype: str, ops, training: bool = True, stages=None,
                optimizer: str = "sgd", channels: int | None = None) -> dict:
    """The profile document of a spec name/path or of ``module:callable`` (by ``stages``; its
    input: ``channels`` (default 3) x ``size`` (default 224x224))."""
    if is_module_ref(target):
        from archspec.profiling.module_profile import profile_module

        model = load_module(target)
        shape = (channels or 3, *(size or DEFAULT_MODULE_SIZE))
        return profile_module(model, shape, stages=stages, batch=batch, dtype=dtype,
                              ops=ops, optimizer=optimizer, name=target).to_dict()
    if stages is not None:
        raise UserError("--stages is for module:callable targets; a spec's stages are its own "
                        "(hint: write local_stage labels in the spec)")
    if channels is not None:
        raise UserError("--channels is for module:callable targets; a spec declares its own input channels")
    from archspec.profiling.profiler import profile
    from archspec.spec import load_spec

    return profile(load_spec(target), batch=batch, size=size, dtype=dtype, optimizer=optimizer, ops=ops,
                   training=training).to_dict()


def channels_option():
    import click

    return click.option("--channels", type=click.IntRange(min=1), default=None,
                        help="For a module:callable SPEC: input channels (default 3; e.g. 1 for grayscale).")


def stages_option_callback(ctx, param, value):
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        import click

        raise click.BadParameter("give submodule names, e.g. --stages layer1,layer2,layer3,layer4")
    return names
