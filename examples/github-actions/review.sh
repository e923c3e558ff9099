#!/usr/bin/env bash
# The recipe review of a pull request, as recipe-review.yml runs it (and as anyone can run it by hand):
#   bash review.sh BASE_REF            e.g. origin/main; run from the root of a recipes repository
# 1. `recipe lock --check` (a base changed without re-locking fails here) and `recipe validate`;
# 2. the recipes whose resolved snapshot (recipes/resolved/NAME.yaml) differs from BASE_REF's: a change to a
#    base shows up in every recipe it touches (REVIEW_RECIPES="a b" names them instead);
# 3. each is trained and evaluated in a quick configuration (REVIEW_OVERRIDES) at BASE_REF (in a git worktree;
#    reused while its runs folder is kept, e.g. in a CI cache keyed by the base commit) and at HEAD;
# 4. `recipe compare BASE HEAD` and `recipe gate NAME --baseline BASE` per recipe, gathered in $REVIEW_OUT/comment.md.
# Exit: 0 every gate passes, 1 a gate fails or the snapshots are stale, 2 bad input (an invalid recipe, no gates).
set -uo pipefail

base_ref=${1:?usage: review.sh BASE_REF (e.g. origin/main)}
out=${REVIEW_OUT:-review}
read -r -a quick <<< "${REVIEW_OVERRIDES:-train.max_steps=20 train.deterministic=true eval.max_items=40}"
recipe=${RECIPE:-recipe}
base_sha=$(git rev-parse --verify "$base_ref^{commit}") || exit 2
head_sha=$(git rev-parse HEAD)
mkdir -p "$out"
out=$(cd "$out" && pwd)
comment="$out/comment.md"
base_runs="$out/runs-base-$base_sha"
head_runs="$out/runs-head-$head_sha"
echo "## Recipe review: ${head_sha:0:12} against $base_ref (${base_sha:0:12})" > "$comment"

if ! "$recipe" lock --check 2> "$out/lock.txt"; then
    cat "$out/lock.txt" >&2
    { echo; echo "**recipes/resolved/ is stale**: run \`recipe lock\` and commit the result."; echo;
      echo '```'; cat "$out/lock.txt"; echo '```'; } >> "$comment"
    exit 1
fi
"$recipe" validate > /dev/null || exit 2

if [ -n "${REVIEW_RECIPES:-}" ]; then
    read -r -a changed <<< "$REVIEW_RECIPES"
else
    mapfile -t changed < <(git diff --name-only "$base_sha" HEAD -- recipes/resolved/ |
                           sed -n 's#^recipes/resolved/\(.*\)\.yaml$#\1#p')
fi
if [ "${#changed[@]}" -eq 0 ]; then
    echo "no recipe's resolved snapshot changed: nothing to train" | tee -a "$comment"
    exit 0
fi

status=0
for name in "${changed[@]}"; do
    [ -f "recipes/resolved/$name.yaml" ] || { echo "$name: removed" | tee -a "$comment"; continue; }
    echo "== $name"
    if [ -e "$base_runs/$name/latest/eval/summary.json" ]; then
        echo "reusing the baseline run $(readlink "$base_runs/$name/latest") of ${base_sha:0:12}"
    elif git cat-file -e "$base_sha:recipes/resolved/$name.yaml" 2> /dev/null; then
        git worktree add --force --detach "$out/base-src" "$base_sha" > /dev/null || exit 2
        (cd "$out/base-src" && export RECIPE_RUNS_DIR="$base_runs" &&
         "$recipe" train "$name" "${quick[@]}" && "$recipe" eval "$name" "${quick[@]}")
        code=$?
        git worktree remove --force "$out/base-src"
        [ "$code" -eq 0 ] || { echo "$name: the baseline failed to train or evaluate" | tee -a "$comment"; exit 2; }
    fi
    RECIPE_RUNS_DIR="$head_runs" "$recipe" train "$name" "${quick[@]}" &&
        RECIPE_RUNS_DIR="$head_runs" "$recipe" eval "$name" "${quick[@]}" ||
        { echo "$name: failed to train or evaluate at HEAD" | tee -a "$comment"; status=2; continue; }
    echo >> "$comment"
    echo "### $name" >> "$comment"
    baseline=()
    if [ -e "$base_runs/$name/latest" ]; then
        baseline=(--baseline "$base_runs/$name/latest")
        RECIPE_RUNS_DIR="$head_runs" "$recipe" compare "$base_runs/$name/latest" "$head_runs/$name/latest" \
            -o "$out/$name" || status=2
    else
        echo "new recipe: no baseline at $base_ref" >> "$comment"
    fi
    RECIPE_RUNS_DIR="$head_runs" "$recipe" gate "$name" "${baseline[@]}" > "$out/$name-gate.txt"
    code=$?
    cat "$out/$name-gate.txt"
    { echo; echo '```'; cat "$out/$name-gate.txt"; echo '```'; echo; } >> "$comment"
    [ -f "$out/$name/compare.md" ] && sed 's/^#/###/' "$out/$name/compare.md" >> "$comment"
    [ "$code" -gt "$status" ] && status=$code
done
exit "$status"
