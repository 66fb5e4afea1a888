"""The docs cannot drift: every fenced snippet of README.md and docs/*.md is run, or is marked
illustrative, and a new fence with neither mark fails.

A fence's info string says what it is:
  ```yaml params   a params.yaml fragment: merged into a copy of params.yaml and validated with
                   the project's loader (`auglab.params.check`); the page's `sh` fences then run
                   with all its fragments merged
  ```sh            commands: each runs in a scratch copy of the project, in its cheap form
                   (`cheap` below: `--dry`, `make -n`, dvc's own argument parser, a script's
                   `--help`); an unknown command fails until it is given one
  ```text          illustrative (diagrams, layouts, example output): not run
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from auglab import params

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
KINDS = {"yaml params": "params fragment", "sh": "commands", "text": "illustrative, not run"}
README_MAX_LINES = 250

# dvc subcommands cheap enough to run as written in a scratch copy without data (`exp show` is
# parsed only: it walks every queued experiment, 6-11 s of CPU on a shared 2-core host)
DVC_RUN = {("metrics", "show"), ("metrics", "diff"), ("params", "diff"), ("queue", "status"),
           ("remote", "add"), ("remote", "modify"), ("stage", "list"), ("status",)}


@dataclass(frozen=True)
class Fence:
    page: Path
    line: int  # 1-based line of the opening ```
    info: str
    body: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def fences(page: Path) -> list[Fence]:
    """Every fenced block of a markdown page, in order (fences may be indented in lists)."""
    found, opening, info, body = [], None, "", []
    for number, line in enumerate(page.read_text().splitlines(), 1):
        match = re.match(r"^\s*```(.*)$", line)
        if opening is None and match:
            opening, info, body = number, match.group(1).strip(), []
        elif opening is not None and match and not match.group(1).strip():
            found.append(Fence(page, opening, info, "\n".join(body) + "\n"))
            opening = None
        elif opening is not None:
            body.append(line)
    assert opening is None, f"{page.relative_to(ROOT)}:{opening}: fence never closed"
    return found


ALL = [fence for page in PAGES for fence in fences(page)]


def of_kind(kind: str) -> list[Fence]:
    return [fence for fence in ALL if fence.info == kind]


def merge(base: dict, fragment: dict) -> dict:
    """`fragment` over `base`: mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in fragment.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = merge(merged[key], value) if both else value
    return merged


def fragment(fence: Fence) -> dict:
    data = YAML(typ="safe", pure=True).load(fence.body)
    assert isinstance(data, dict), f"{fence}: a params fragment must be a mapping of sections"
    return data


def write_params(path: Path, data: dict) -> None:
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    with open(path, "w") as f:
        yaml.dump(data, f)


def commands(fence: Fence) -> list[list[str]]:
    """The commands of a `sh` fence as argv lists: `\\` continues a line, `#` starts a comment,
    `&&` separates commands."""
    text = re.sub(r"\\\n", " ", fence.body)
    found = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            found.append(words[:cut])
            words = words[cut + 1:]
    return found


# --- the scratch copy -------------------------------------------------------------------------


def environment(copy: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(copy),
            "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1"}


def run(argv: list[str], copy: Path, what: str) -> str:
    done = subprocess.run(argv, check=False, cwd=copy, env=environment(copy), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, (f"{what}: `{shlex.join(argv)}` exited {done.returncode}:\n"
                                  f"{done.stdout}{done.stderr}")
    return done.stdout + done.stderr


def placeholders(copy: Path) -> None:
    """An empty file or folder at every missing local dependency (DVC hashes the dependencies of
    every stage it would run, even with --dry), committed so that `dvc exp run`'s temporary
    checkout has them too."""
    from dvc.repo import Repo

    with Repo(str(copy)) as repo:
        paths = {Path(dep.def_path) for stage in repo.index.stages for dep in stage.deps
                 if dep.protocol == "local" and not (copy / dep.def_path).exists()}
    for path in paths:
        target = copy / path
        if path.suffix:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
        else:
            target.mkdir(parents=True, exist_ok=True)
            (target / ".placeholder").touch()


_COPIES: dict[tuple[str, ...], Path] = {}


@pytest.fixture(scope="session")
def scratch(tmp_path_factory):
    """scratch(page): a copy of this checkout (ci/tour.py's clone, so uncommitted edits count) with
    every params fragment of `page` merged into params.yaml and placeholders for the data. Pages
    with the same fragments (most have none) share one copy."""
    sys.path.insert(0, str(ROOT / "ci"))
    try:
        import tour
    finally:
        sys.path.remove(str(ROOT / "ci"))

    def make(page: Path) -> Path:
        found = [fence for fence in fences(page) if fence.info == "yaml params"]
        fragments = tuple(fence.body for fence in found)
        if fragments not in _COPIES:
            copy = tmp_path_factory.mktemp(page.stem)
            tour.clone(ROOT, copy)
            data = params.read_yaml(copy / "params.yaml")
            for fence in found:
                data = merge(data, fragment(fence))
            write_params(copy / "params.yaml", data)
            placeholders(copy)
            run([*tour.GIT, "add", "-A"], copy, "scratch copy")
            run([*tour.GIT, "add", "--force", "data", "artifacts"], copy, "scratch copy")
            run([*tour.GIT, "commit", "-qm", "docs fragments and placeholders"], copy, "scratch copy")
            _COPIES[fragments] = copy
        return _COPIES[fragments]

    return make


# --- how each command is checked ------------------------------------------------------------


def parse_dvc(argv: list[str], what: str) -> None:
    """dvc's own argument parser: the subcommand and every option must exist."""
    from dvc.cli import DvcParserError, parse_args

    try:
        parse_args(argv[1:])
    except (DvcParserError, SystemExit) as error:
        pytest.fail(f"{what}: dvc does not parse `{shlex.join(argv)}` ({error!r})")


def check_overrides(argv: list[str], copy: Path, tmp_path: Path, what: str) -> None:
    """Apply the `-S` overrides as `dvc exp run` does (DVC's own Hydra code) to a copy of the
    page's params.yaml and validate the result with the project's loader."""
    from dvc.utils.hydra import apply_overrides

    overrides = experiment_args(argv).set_param
    if not overrides:
        return
    path = tmp_path / "params.yaml"
    path.write_text((copy / "params.yaml").read_text())
    apply_overrides(path, overrides)
    try:
        params.check(path)
    except params.ParamsError as error:
        pytest.fail(f"{what}: `{shlex.join(argv)}` leaves params.yaml invalid: {error}")


def experiment_args(argv: list[str]):
    """A `dvc exp run ...` command as dvc's own parser reads it (`set_param`, `targets`)."""
    from dvc.cli import parse_args

    return parse_args(argv[1:])


def resolve(copy: Path, targets: list[str], what: str) -> None:
    """What `dvc repro --dry` of `targets` (every stage when none) proves of the pipeline, by DVC's
    own loader in this process (a `dvc repro --dry` of the whole graph took 5-8 s a command, most
    of it start-up and per-stage status): every stage of dvc.yaml interpolated with the copy's
    params, the graph built (no cycle, no output of two stages), each target found, and each key a
    stage's params dependencies name present in its params file."""
    from dvc.dependency.param import ParamsDependency
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    with Repo(str(copy)) as repo:
        try:
            index = repo.index
            index.graph  # noqa: B018 (builds and checks the graph)
            stages = ({stage for target in targets for stage in repo.stage.collect(target, with_deps=True)}
                      if targets else set(index.stages))
        except DvcException as error:
            pytest.fail(f"{what}: DVC cannot resolve the pipeline: {error}")
        files: dict[str, dict] = {}
        for stage in stages:
            for dep in stage.deps:
                if isinstance(dep, ParamsDependency):
                    if dep.def_path not in files:
                        files[dep.def_path] = params.read_yaml(copy / dep.def_path)
                    values = files[dep.def_path]
                    missing = [key for key in dep.params if not has_key(values, key)]
                    assert not missing, f"{what}: {stage.addressing} depends on params {missing}, not in {dep.def_path}"


def has_key(data: dict, dotted: str) -> bool:
    """Whether a dotted key is in parsed params (the walk of `params.load_key`, on data read once)."""
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def dry_experiment(argv: list[str], copy: Path, what: str) -> None:
    """`dvc exp run -S ...` without the experiment machinery, which tests/test_pipeline.py runs for
    real: the overrides applied to the copy's params.yaml by DVC's own Hydra code, as `dvc exp run`
    applies them, then the command's targets (or every stage) resolved on the changed params;
    params.yaml is restored after."""
    from dvc.utils.hydra import apply_overrides

    args = experiment_args(argv)
    path = copy / "params.yaml"
    before = path.read_bytes()
    try:
        if args.set_param:
            apply_overrides(path, args.set_param)
        resolve(copy, args.targets, what)
    finally:
        path.write_bytes(before)


def options(script: Path) -> set[str]:
    """The option strings a script's argparse parser declares (read from its source: running
    `--help` would import torch, seconds per command)."""
    tree = ast.parse(script.read_text())
    return {arg.value for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"
            for arg in node.args if isinstance(arg, ast.Constant) and str(arg.value).startswith("-")}


def check_flags(script: Path, flags: list[str], what: str) -> None:
    assert script.is_file(), f"{what}: no script {script}"
    missing = sorted(set(flags) - options(script))
    assert not missing, f"{what}: {script.name} declares no option(s) {missing}"


def long_flags(words: list[str]) -> list[str]:
    return [word.split("=")[0] for word in words if word.startswith("--")]


def cheap(argv: list[str], copy: Path, tmp_path: Path, what: str, dry: bool) -> str:
    """Check one documented command in its cheap form; return how. With `dry`, the forms that
    resolve the whole graph, in a separate slow test (`dvc exp run`'s overrides, then its stages
    resolved; a whole-graph `dvc repro`), run instead; other commands return "" then."""
    head, rest = argv[0], argv[1:]
    if head == "make":
        if dry:
            return ""
        run(["make", "-n", *rest], copy, what)
        return "make -n"
    if head == "dvc":
        sub = tuple(word for word in rest[:2] if not word.startswith("-"))
        if sub[:2] == ("exp", "run"):
            if dry:
                if "--queue" in rest:
                    return ""
                dry_experiment(argv, copy, what)
                return "overrides applied, then the stages resolved by DVC's loader"
            parse_dvc(argv, what)
            if "--queue" in rest:
                run(argv, copy, what)
                return "run (queued only)"
            check_overrides(argv, copy, tmp_path, what)
            return "-S applied by dvc's Hydra code, params validated"
        if sub[:1] == ("repro",):
            whole = not [word for word in rest[1:] if not word.startswith("-")]
            if whole and not dry:
                parse_dvc(argv, what)
                return "parsed (the whole graph is resolved in the slow test)"
            if dry and not whole:
                return ""
            if dry:
                parse_dvc(argv, what)
                resolve(copy, [], what)
                return "parsed, every stage resolved by DVC's loader"
            run(["dvc", "repro", "--dry", *rest[1:]], copy, what)
            return "--dry"
        if dry:
            return ""
        if sub in DVC_RUN or sub[:1] in DVC_RUN:
            run(argv, copy, what)
            return "run"
        parse_dvc(argv, what)
        return "parsed by dvc"
    if dry:
        return ""
    if head == "python" and rest[:1] == ["-c"]:
        run([sys.executable, *rest], copy, what)
        return "run"
    if head == "python" and rest and rest[0].endswith(".py"):
        check_flags(copy / rest[0], long_flags(rest[1:]), what)
        return "its parser declares every option used"
    if head == "torchrun":
        script = next(i for i, word in enumerate(rest) if word.endswith(".py"))
        launcher = Path(importlib.util.find_spec("torch.distributed.run").origin)
        check_flags(launcher, long_flags(rest[:script]), what)
        check_flags(copy / rest[script], long_flags(rest[script + 1:]), what)
        return "torchrun's and the script's parsers declare every option used"
    pytest.fail(f"{what}: no cheap form for `{shlex.join(argv)}`: add one to tests/test_docs.py:cheap, "
                "or make the fence ```text if it is not meant to be run")


# --- the tests --------------------------------------------------------------------------------


def test_every_fence_is_run_or_illustrative():
    unmarked = [f"{fence}: ```{fence.info}" for fence in ALL if fence.info not in KINDS]
    assert not unmarked, f"fences must be one of {sorted(KINDS)}: {unmarked}"
    assert of_kind("yaml params") and of_kind("sh")


def test_readme_is_a_guide():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; measurements and reference go to docs/"


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces -> '-'."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL),
                          flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_docs_stay_inside_the_repository():
    """Links resolve to files of the repository, and nothing points at the shared folder outside it."""
    for page in PAGES:
        text = page.read_text()
        outside = "../shared" in text or "shared/DESIGN" in text
        assert not outside, f"{page.name} points at the shared folder outside the repository"
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", text):
            if re.match(r"^[a-z]+:", target):
                continue
            resolved = (page.parent / target).resolve() if target else page
            assert resolved.is_relative_to(ROOT), f"{page.name}: link {target} leaves the repository"
            assert resolved.exists(), f"{page.name}: link {target} does not exist"
            if anchor and resolved.suffix == ".md":
                assert anchor in anchors(resolved), f"{page.name}: {target} has no heading #{anchor}"


@pytest.mark.parametrize("fence", of_kind("yaml params"), ids=str)
def test_params_fragment_validates(fence, tmp_path):
    path = tmp_path / "params.yaml"
    write_params(path, merge(params.read_yaml(ROOT / "params.yaml"), fragment(fence)))
    try:
        params.check(path)
    except params.ParamsError as error:
        pytest.fail(f"{fence}: merged into params.yaml: {error}")


@pytest.mark.parametrize("fence", of_kind("sh"), ids=str)
def test_commands_run_in_their_cheap_form(fence, scratch, tmp_path):
    copy = scratch(fence.page)
    for argv in commands(fence):
        cheap(argv, copy, tmp_path, f"{fence}", dry=False)


DRY = [fence for fence in of_kind("sh") if any(
    argv[:3] == ["dvc", "exp", "run"] and "--queue" not in argv
    or argv[:2] == ["dvc", "repro"] and not [word for word in argv[2:] if not word.startswith("-")]
    for argv in commands(fence))]


@pytest.mark.slow
@pytest.mark.parametrize("fence", DRY, ids=str)
def test_commands_dry_run(fence, scratch, tmp_path):
    """`dvc exp run` (its overrides, then its stages resolved) and whole-graph `dvc repro`: DVC's
    loader resolves every stage on the page's params (1-2 s a command)."""
    copy = scratch(fence.page)
    for argv in commands(fence):
        cheap(argv, copy, tmp_path, f"{fence}", dry=True)
