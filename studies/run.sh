#!/usr/bin/env bash
# One command per study: run its spec, write its report, copy the small outputs into the
# study folder.
#
#   bash studies/run.sh STUDY            # local run: studies/STUDY/spec.yaml (e5-small, CPU)
#   bash studies/run.sh STUDY --full     # full scale: studies/STUDY/full.yaml (XLM-R Large, GPUs);
#                                        # extra arguments after --full go to `xstilts run`
#                                        # (e.g. --workers 8, or --launcher slurm)
#
# Run outputs live outside the checkout, under $XSTILTS_HOME (default ~/.cache/xstilts,
# as xstilts itself resolves it), so an interrupted study resumes where it stopped: run the
# same command again. Local runs share one output dir, $XSTILTS_HOME/studies/local: one
# results store and one stage folder, so a stage that two studies define identically (same
# settings, same upstream stages: e.g. the baseline's PAN-X fine-tuning and its evaluation)
# has the same content-hashed id and runs once. `xstilts report --spec` then restricts the
# report to the stages of this study's plan (without it the report would analyse every study
# in the store). Full runs get their own output dir, $XSTILTS_HOME/studies/STUDY_full.
#
# Copied into studies/STUDY/ (local) or studies/STUDY/full/ (full): results.csv (every
# metric row of the plan, `xstilts results`, with the items behind each score and the
# intermediate tasks' English dev scores), report.md and figures/*.png. Then, where the
# folder has an analysis.yaml, `xstilts summarize --measure --write-readme` rewrites the
# README's generated block from results.csv. Every stage is content-hashed and every
# subsample seeded, so a rerun from scratch reproduces the table (up to CPU floating-point
# noise).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
cd "$root"   # extra_files paths in the specs are relative to the repository root

if [[ $# -lt 1 ]]; then
  echo "usage: bash studies/run.sh STUDY [--full [xstilts run options]]" >&2
  echo "studies: $(cd "$here" && ls -d */ | tr -d / | tr '\n' ' ')" >&2
  exit 2
fi
study="$1"; shift
mode=local
if [[ "${1:-}" == "--full" ]]; then mode=full; shift; fi
[[ -d "$here/$study" ]] || { echo "unknown study '$study'" >&2; exit 2; }

xs="$root/.venv/bin/xstilts"; [[ -x "$xs" ]] || xs=xstilts
home="${XSTILTS_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/xstilts}"

if [[ $mode == local ]]; then
  spec="$here/$study/spec.yaml"; out="$home/studies/local"; rep="$home/studies/reports/$study"
  dest="$here/$study"
else
  spec="$here/$study/full.yaml"; out="$home/studies/${study}_full"; rep="$out"; dest="$here/$study/full"
fi
mkdir -p "$out" "$rep"

"$xs" run "$spec" -o "$out" "$@"
# a finished stage keeps model/ and drops its checkpoints/ (TrainConfig.keep_checkpoints: false)
"$xs" report "$out" --spec "$spec" --out "$rep/report/report.html"
# every metric row, the items behind each score (--counts) and the intermediate tasks' English
# dev scores after each setup (--intermediate-dev: the forgetting measure)
"$xs" results "$spec" --output-dir "$out" --format csv --out "$rep/results.csv" --counts --intermediate-dev

mkdir -p "$dest/figures"
rm -f "$dest"/figures/*.png
cp "$rep/results.csv" "$dest/results.csv"
cp "$rep/report/report.md" "$dest/report.md"
if compgen -G "$rep/report/figures/*.png" > /dev/null; then cp "$rep"/report/figures/*.png "$dest/figures/"; fi
if [[ -f "$dest/analysis.yaml" ]]; then
  "$xs" summarize "$dest" --measure --write-readme
else
  echo "no $dest/analysis.yaml: README summary block not generated" >&2
fi
du -sh "$dest"
