"""Write the analysis report of ONE study spec from a results store that may hold others.

``xstilts report OUTPUT_DIR`` analyses every metric in OUTPUT_DIR's store. The local studies
share one output dir (so a stage that two studies define identically, evaluations included,
runs once); this script restricts the store's frames to the stages of one spec's plan and
then calls the analysis layer's ``report_from_frames`` with the same options as
``xstilts report``:

    python studies/report_spec.py studies/task_similarity/spec.yaml -o runs/studies/local \
        --out runs/studies/task_similarity/report/report.html
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger("studies.report_spec")


def report_for_spec(spec_path: Path, output_dir: Path, out: Path, *, task_emb: bool = False) -> Path:
    """Report on the stages of ``spec_path``'s plan found in ``output_dir``'s store; returns report.md."""
    from xstilts.analysis.report import ReportOptions, report_from_frames
    from xstilts.analysis.store import load_frames
    from xstilts.experiments import load_spec, plan_stages

    spec = load_spec(spec_path, overrides={"output_dir": str(output_dir)})
    ids = set(plan_stages(spec).stages)
    metrics, stages = load_frames(output_dir)
    metrics = metrics[metrics["stage_id"].isin(ids)].reset_index(drop=True)
    stages = stages[stages["stage_id"].isin(ids)].reset_index(drop=True)
    # a stage shared by two setups of the plan is stored once per label; keep this spec's setups
    setups = set(spec.intermediate)
    metrics = metrics[metrics["setup"].isin(setups)].reset_index(drop=True)
    stages = stages[stages["setup"].isna() | stages["setup"].isin(setups)].reset_index(drop=True)
    logger.info("%s: %d metric rows from %d of the plan's %d stages", spec_path, len(metrics),
                stages["stage_id"].nunique(), len(ids))
    result = report_from_frames(metrics, stages, out, options=ReportOptions(task_emb=task_emb), output_dir=output_dir)
    return result.markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("-o", "--output-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="HTML path; report.md and figures/ go beside it")
    parser.add_argument("--task-emb", action="store_true", help="also compute Fisher TaskEmb (slow)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    md = report_for_spec(args.spec, args.output_dir, args.out, task_emb=args.task_emb)
    logger.info("wrote %s", md)


if __name__ == "__main__":
    main()
