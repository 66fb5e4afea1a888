#!/usr/bin/env bash
# Scheduled full rerun: `dvc repro` of the checked-out pipeline from nothing (a fresh checkout holds
# no outputs, so every stage runs), `dvc push` of the outputs to the DVC remote, the new dvc.lock
# committed on top of HEAD and force-pushed as branch BRANCH of GIT_REMOTE (the record of this
# run), and `dvc metrics diff` against the previous run's commit (the branch's old tip), as
# Markdown, appended to OUT (the job summary in GitHub Actions).
# Usage: CI=1 ci/full_rerun.sh [OUT=/dev/stdout]. Environment:
#   DVC_REMOTE_URL  where outputs go (s3://..., ssh://..., /shared/dir); unset: the default remote
#   GIT_REMOTE      git remote that keeps the branch (origin)     BRANCH  its name (full-rerun)
#   TARGETS         stages to reproduce (all of them)
# Needs dvc on PATH (make install). Commits in the working tree: run it in CI or a scratch clone.
set -euo pipefail
if [ -z "${CI:-}" ]; then
    echo "error: ci/full_rerun.sh reruns dvc repro and commits dvc.lock here;" \
         "run it in CI or in a scratch clone with CI=1" >&2
    exit 2
fi
out=${1:-/dev/stdout}
git_remote=${GIT_REMOTE:-origin}
branch=${BRANCH:-full-rerun}
cd "$(git rev-parse --show-toplevel)"
if [ -n "${DVC_REMOTE_URL:-}" ]; then
    dvc remote add --local --force --default scheduled "$DVC_REMOTE_URL"
    if [ -n "${AWS_ENDPOINT_URL:-}" ]; then  # S3-compatible (MinIO, Ceph, R2): their endpoint
        dvc remote modify --local scheduled endpointurl "$AWS_ENDPOINT_URL"
    fi
elif [ -z "$(dvc remote default 2>/dev/null)" ]; then
    echo "error: no DVC remote: DVC_REMOTE_URL is unset and the project has no default remote;" \
         "expected one of them (see README, Outputs on a shared remote)" >&2
    exit 2
fi

baseline=""  # the previous scheduled run: the branch's tip on the git remote, if there is one
if git fetch -q "$git_remote" "+refs/heads/$branch:refs/remotes/$git_remote/$branch" 2>/dev/null; then
    baseline=$(git rev-parse "refs/remotes/$git_remote/$branch")
fi
started=$(git rev-parse HEAD)

echo "== dvc repro ${TARGETS:-(every stage)} on $started"
# shellcheck disable=SC2086  # TARGETS is a list of stage names
dvc repro ${TARGETS:-}
echo "== dvc push"
# shellcheck disable=SC2086
dvc push ${TARGETS:-}
git add dvc.lock
git -c user.name=auglab-ci -c user.email=ci@localhost commit -q --allow-empty \
    -m "Full rerun of $(git rev-parse --short "$started"): dvc.lock" -m "Outputs pushed to the DVC remote."
git push -q -f "$git_remote" "HEAD:refs/heads/$branch"
echo "== recorded as $(git rev-parse --short HEAD) on $git_remote/$branch"

{
    echo "### Full rerun of $(git rev-parse --short "$started"): dvc metrics diff against the previous scheduled run"
    echo
    if [ -n "$baseline" ]; then
        echo "Previous run: \`$(git rev-parse --short "$baseline")\` (\`$(git log -1 --format=%cs "$baseline")\`)."
        echo
        dvc metrics diff --md --all "$baseline" HEAD
    else
        echo "(first scheduled run: no previous one on $git_remote/$branch to compare with)"
        echo
        dvc metrics show --md
    fi
} >> "$out"
