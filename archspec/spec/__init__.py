"""Specs: the YAML architecture format, its dataclasses, loading, validation and writing."""
from archspec.spec.loader import load, loads
from archspec.spec.registry import available, load_spec, resolve
from archspec.spec.schema import BlockGroup, Conv, Downsample, Head, Spec, Stage
from archspec.spec.validate import StageShape, infer_shapes
from archspec.spec.writer import dumps

__all__ = ["BlockGroup", "Conv", "Downsample", "Head", "Spec", "Stage", "StageShape", "available",
           "dumps", "infer_shapes", "load", "load_spec", "loads", "resolve"]
