#!/usr/bin/env bash
# One command per study: run its spec, write its report, copy the small outputs into the
# study folder.
#
#   bash studies/run.sh STUDY            # local run: studies/STUDY/spec.yaml (e5-small, CPU)
#   bash studies/run.sh STUDY --full     # full scale: studies/STUDY/full.yaml (XLM-R Large, GPUs);
#                                        # extra arguments after --full go to `xstilts run`
#                                        # (e.g. --workers 8, or --launcher slurm)
#
# Outputs go to runs/studies/STUDY (git-ignored); the results table (results.csv), the
# Markdown report (report.md) and its PNG figures are copied into studies/STUDY/ (local run)
# or studies/STUDY/full/ (full run). Every stage is content-hashed and every subsample is
# seeded, so a rerun from scratch reproduces the table (up to CPU floating-point noise).
#
# Local runs share one stage folder (runs/studies/_stages): a stage with exactly the same
# settings and upstream stages in two studies (e.g. the baseline's PAN-X fine-tuning) has
# the same id and is trained once; the other study finds it finished (train_stage skips a
# stage whose DONE file exists). Set XSTILTS_STUDIES_SHARE=0 to give each study its own.
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

if [[ -x "$root/.venv/bin/xstilts" ]]; then xs="$root/.venv/bin/xstilts"; else xs=xstilts; fi

if [[ $mode == local ]]; then
  spec="$here/$study/spec.yaml"; out="$root/runs/studies/$study"; dest="$here/$study"
  mkdir -p "$out"
  if [[ "${XSTILTS_STUDIES_SHARE:-1}" == 1 && ! -e "$out/stages" ]]; then
    mkdir -p "$root/runs/studies/_stages"
    ln -s ../_stages "$out/stages"
  fi
else
  spec="$here/$study/full.yaml"; out="$root/runs/studies/${study}_full"; dest="$here/$study/full"
fi

"$xs" run "$spec" -o "$out" "$@"
# a finished stage keeps model/ (what downstream stages and the report read); its resumable
# checkpoints/ (hundreds of MB each) are dropped unless XSTILTS_STUDIES_KEEP_CHECKPOINTS=1
if [[ "${XSTILTS_STUDIES_KEEP_CHECKPOINTS:-0}" != 1 ]]; then
  for d in "$out"/stages/*/; do
    [[ -f "$d/DONE" && -d "$d/checkpoints" ]] && rm -rf "$d/checkpoints"
  done
fi
"$xs" report "$out" --out "$out/report/report.html"
"$xs" results "$spec" -o "$out" --format csv --out "$out/results.csv"

mkdir -p "$dest/figures"
rm -f "$dest"/figures/*.png
cp "$out/results.csv" "$dest/results.csv"
cp "$out/report/report.md" "$dest/report.md"
if compgen -G "$out/report/figures/*.png" > /dev/null; then cp "$out"/report/figures/*.png "$dest/figures/"; fi
du -sh "$dest"
