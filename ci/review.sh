#!/usr/bin/env bash
# Review run: the CI profile (ci/profile.py) reproduced on BASE and on the working tree, then
# `dvc metrics diff` between them as Markdown, appended to OUT (the job summary in GitHub Actions).
# Both runs share one DVC cache, so stages the change does not touch are restored, not rerun.
# Usage: CI=1 ci/review.sh [BASE=origin/main] [OUT=/dev/stdout]. Needs dvc on PATH (make install).
# GitHub Actions sets CI; elsewhere set it yourself, in a scratch clone: the working tree is changed.
set -euo pipefail
if [ -z "${CI:-}" ]; then
    echo "error: ci/review.sh rewrites params.yaml into the CI profile and reruns dvc repro here;" \
         "run it in CI or in a scratch clone with CI=1" >&2
    exit 2
fi
base=${1:-origin/main}
out=${2:-/dev/stdout}
root=$(git rev-parse --show-toplevel)
cd "$root"
cache=$(dvc cache dir)
scratch=$(mktemp -d)
trap 'git worktree remove --force "$scratch/base" >/dev/null 2>&1 || true; rm -rf "$scratch"' EXIT

profile_and_repro() {  # $1: a checkout to run the CI profile in
    (cd "$1" && dvc cache dir --local "$cache" && python "$root/ci/profile.py" params.yaml && dvc repro)
}

git worktree add --detach -q "$scratch/base" "$base"
echo "== CI profile on $base"
profile_and_repro "$scratch/base"
git -C "$scratch/base" -c user.name=ci -c user.email=ci@localhost commit -qam "CI profile of $base" --allow-empty
baseline=$(git -C "$scratch/base" rev-parse HEAD)

echo "== CI profile on the working tree"
profile_and_repro "$root"
{
    echo "### dvc metrics diff: CI profile, $base -> this change"
    echo
    dvc metrics diff --md "$baseline" || echo "(no metrics to compare)"
} >> "$out"
