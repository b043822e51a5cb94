"""Find specs by name (``presnet50``) or by path; the named ones ship with the package."""
from __future__ import annotations

from pathlib import Path

from archspec.errors import SpecError, did_you_mean


def spec_dirs() -> list[Path]:
    """Where named specs live: the installed package data, then a checkout's specs/."""
    dirs = []
    try:
        import archspec.specs as packaged  # setup.py maps specs/ to this package

        dirs.extend(Path(p) for p in packaged.__path__)
    except ImportError:
        pass
    checkout = Path(__file__).resolve().parents[2] / "specs"
    if checkout.is_dir() and checkout not in dirs:
        dirs.append(checkout)
    return dirs


def available() -> list[str]:
    names = {p.stem for d in spec_dirs() for p in d.glob("*.yaml")}
    return sorted(names)


def resolve(name_or_path: str) -> Path:
    """A spec name from specs/ or a path to a YAML file."""
    path = Path(name_or_path)
    from archspec.commands.targets import is_module_ref

    if is_module_ref(name_or_path) and not path.exists():
        raise SpecError(f"'{name_or_path}' is a module:callable, and this needs a spec",
                        hint="module:callable works with archspec profile, compare, balance and split, and "
                             "archspec.profile() in Python; here give a spec name or a .yaml path")
    if path.suffix in (".yaml", ".yml") or path.parent != Path(".") or path.exists():
        from archspec.limits import file_kind

        kind = file_kind(path) if path.exists() else None
        if kind is not None:  # /dev/zero, a FIFO, a folder: refused by name, never read
            raise SpecError(f"{name_or_path} is {kind}, not a spec file", hint="give a path to a .yaml spec")
        if not path.is_file():
            raise SpecError(f"no such spec file: {name_or_path}",
                            hint=f"give an existing .yaml path or one of: {', '.join(available())}")
        return path
    for d in spec_dirs():
        candidate = d / f"{name_or_path}.yaml"
        if candidate.is_file():
            return candidate
    names = available()
    hint = did_you_mean(name_or_path, names, f"known specs: {', '.join(names)}; or give a path")
    raise SpecError(f"unknown spec '{name_or_path}'", hint=hint)


def load_spec(name_or_path: str):
    from archspec.spec.loader import load

    return load(resolve(name_or_path))
