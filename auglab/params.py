"""params.yaml and report.yaml, parsed as DVC parses them (ruamel, YAML 1.2) and validated into the
typed sections of auglab/schema.py.

A stage asks for the sections it declares in dvc.yaml and gets only those, so a stage cannot
quietly depend on params DVC does not track for it. The schema's types are re-exported here, so
callers write `params.Experiment` beside `params.load_key`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from auglab.schema import (  # noqa: F401  (re-exported: the types callers name as params.<Type>)
    SECTIONS,
    DatasetSplit,
    Dimension,
    Experiment,
    GanConfig,
    Optimizer,
    ParamsError,
    Penalty,
    ReportConfig,
    Schedule,
    Section,
    Source,
    Study,
    TuneSection,
    View,
    deep_merge,
    describe,
    experiment,
    gan_config,
    member,
)


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a YAML file the way DVC does (ruamel's safe loader, with its C parser as DVC gets it:
    10x faster than the pure-Python one on params.yaml) into plain dicts."""
    try:
        with open(path) as f:
            data = YAML(typ="safe").load(f)
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such params file") from None
    except YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def validate(name: str, data: Any) -> Any:
    """Validate one section's raw data into its model; raise ParamsError naming field paths."""
    if name not in SECTIONS:
        raise ParamsError(f"unknown params section {name!r}; known: {', '.join(SECTIONS)}")
    try:
        return TypeAdapter(SECTIONS[name], config=None if _is_model(SECTIONS[name]) else ConfigDict(strict=True)
                           ).validate_python(data)
    except ValidationError as e:
        raise ParamsError("; ".join(describe(err, name) for err in e.errors())) from None


def _is_model(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, BaseModel)


def load(path: Path, *names: str) -> tuple[Section, ...]:
    """Read params.yaml and return the validated sections `names`, in that order.

    Unknown top-level sections are refused (a typo must not be silently ignored); sections not
    asked for are not validated, so a stage runs with only the params it declares.
    """
    data = read_yaml(path)
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ParamsError(f"{path}: unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    missing = [name for name in names if name not in data]
    if missing:
        raise ParamsError(f"{path}: missing section(s) {missing}")
    return tuple(validate(name, data[name]) for name in names)


def _key_type(dotted: str) -> Any:
    """The declared type at a dotted params key, walking section models and dict values."""
    name, *rest = dotted.split(".")
    if name not in SECTIONS:
        raise ParamsError(f"unknown params section {name!r}; known: {', '.join(SECTIONS)}")
    kind: Any = SECTIONS[name]
    constraints: list = []
    for part in rest:
        if isinstance(kind, type) and issubclass(kind, BaseModel) and part in kind.model_fields:
            field = kind.model_fields[part]
            kind, constraints = field.annotation, field.metadata  # Field(gt=0) and the like
        elif get_origin(kind) is dict:
            kind, constraints = get_args(kind)[1], []
        else:
            raise ParamsError(f"{dotted}: no such key in the params schema")
    return Annotated[kind, *constraints] if constraints else kind


def load_key(path: Path, dotted: str) -> Any:
    """Validate one dotted key (e.g. `augment.recipes.s2_expand`) against its declared type.

    For stages that declare a single entry of a section in dvc.yaml: the rest of the section
    need not exist, and is not read.
    """
    kind = _key_type(dotted)
    data: Any = read_yaml(path)
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ParamsError(f"{path}: unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            present = f"; present: {', '.join(map(str, data))}" if isinstance(data, dict) and data else ""
            raise ParamsError(f"{dotted}: missing required key{present}")
        data = data[part]
    strict = None if _is_model(kind) else ConfigDict(strict=True)
    try:
        return TypeAdapter(kind, config=strict).validate_python(data)
    except ValidationError as e:
        raise ParamsError("; ".join(describe(err, dotted) for err in e.errors())) from None


def load_experiment(path: Path, group: str, name: str) -> Experiment:
    """train.<group>.<name> merged over train.defaults, validated (what train stages declare); a
    member (group `members`) over its recipe too, reading only that recipe, as member@ declares."""
    defaults = load_key(path, "train.defaults")
    entry = load_key(path, f"train.{group}.{name}")
    if group != "members":
        return experiment(defaults, entry, f"train.{group}.{name}")
    recipe = entry.get("recipe") if isinstance(entry, dict) else None
    recipes = {recipe: load_key(path, f"train.recipes.{recipe}")} if isinstance(recipe, str) else {}
    return member(defaults, recipes, entry, f"train.members.{name}")


def check(path: Path) -> None:
    """Validate every section present in a params file; raise ParamsError on the first bad one."""
    data = read_yaml(path)
    load(path, *data)


def load_gan(path: Path, name: str) -> GanConfig:
    """gan.builds.<name> merged over gan.defaults, validated (what gan stages declare)."""
    return gan_config(load_key(path, "gan.defaults"), load_key(path, f"gan.builds.{name}"), f"gan.builds.{name}")


def load_report(path: Path) -> ReportConfig:
    """Read report.yaml (the report's tables, reference numbers and figures) and validate it whole;
    errors name the file and the field path, e.g. `report.yaml: headline.speed: missing required key`."""
    data = read_yaml(path)
    try:
        return ReportConfig.model_validate(data)
    except ValidationError as e:
        raise ParamsError(f"{path.name}: " + "; ".join(describe(err, "") for err in e.errors())) from None
