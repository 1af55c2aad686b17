"""Checks run before anything trains: every file the plan's unfinished stages will read.

``xstilts run`` calls :func:`preflight` first, so a missing extra training file, a missing MLM
file, fp16 asked for on a CPU-only machine or a malformed evaluation file is reported in
seconds, not when its stage starts after hours of training. The quick check (default) looks
at every file: it exists, it is UTF-8, and it parses with the task's own reader (the whole
file when it is small, else its first records); :func:`preflight` with ``full=True``
(``xstilts run --check-data``) parses every file completely. Files are read through the tasks
layer (:mod:`xstilts.tasks.loading`, :mod:`xstilts.tasks.readers`): no reader of its own.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xstilts.errors import ConfigError, XStiltsError
from xstilts.experiments.plan import Plan, Stage

logger = logging.getLogger(__name__)

#: files of a layout that cannot be cut into records are parsed completely by the quick check up to this size
QUICK_PARSE_BYTES = 4 * 1024 * 1024
#: how much of a file the quick check decodes and parses (the complete records in it)
HEAD_BYTES = 64 * 1024
#: readers whose files can be cut after a line (``"line"``) or a blank line (``"block"``) and still parse
_HEAD_CUT = {"token_tsv": "block", "conllu": "block", "nli_tsv": "line", "pawsx_tsv": "line",
             "xcopa_jsonl": "line", "commonsenseqa_jsonl": "line"}


@dataclass(frozen=True)
class _FileCheck:
    """One file to check with one reader (deduplicated across stages)."""

    path: Path
    reader: str | None  # None: raw text (MLM)
    language: str | None = None
    label_list: tuple[str, ...] | None = None
    options: tuple[tuple[str, Any], ...] = field(default=(), compare=False)  # values may be mappings
    options_key: str = field(default="", init=False)  # what options compare and hash by

    def __post_init__(self) -> None:
        object.__setattr__(self, "options_key", repr(self.options))


@dataclass
class PreflightReport:
    """What :func:`check_plan` found: problems (each names the stage input and file) and what it read."""

    problems: list[str] = field(default_factory=list)
    files_checked: int = 0
    stages_checked: int = 0

    def add(self, stage: Stage | None, message: str) -> None:
        where = f"{stage.kind} stage {stage.id[:12]} ({stage.description}): " if stage is not None else ""
        if where + message not in self.problems:
            self.problems.append(where + message)


class _Checker:
    """Collects the files of the stages, then checks each once."""

    def __init__(self, plan: Plan, report: PreflightReport, cuda: bool | None):
        self.plan, self.report, self.cuda = plan, report, cuda
        self.files: dict[_FileCheck, list[Stage]] = {}
        self.missing: dict[str, list[Stage]] = {}
        self._hub_reason: str | None | bool = False

    # ------------------------------------------------------------------ collecting

    def hub_reason(self) -> str | None:
        if self._hub_reason is False:
            from xstilts.hub import hub_offline_reason

            self._hub_reason = hub_offline_reason()
        return self._hub_reason  # type: ignore[return-value]

    def task_files(self, stage: Stage, task_name: str, language: str, split: str) -> None:
        """Files of one (task, language, split) a stage reads, or a problem when there are none."""
        from xstilts.tasks.catalog import check_language, check_split, get_task
        from xstilts.tasks.loading import local_files

        try:
            spec = get_task(task_name)
            language = check_language(spec, language)
            split = check_split(spec, split)
        except XStiltsError as exc:
            self.report.add(stage, str(exc))
            return
        files = local_files(spec, language, split, self.plan.data_dir)
        if files and all(f.is_file() for f in files):
            assert spec.local is not None
            for f in files:
                key = _FileCheck(f, spec.local.reader, language, tuple(spec.label_list) if spec.label_list else None,
                                 tuple(sorted(spec.local.options.items())))
                self.files.setdefault(key, []).append(stage)
            return
        reason = self.hub_reason() if spec.hub is not None else "the task has no hub source"
        if reason is None:
            return  # not local, but the hub is reachable: loaded from there when the stage runs
        missing = [str(f) for f in files if not f.is_file()] or ["(no local file layout for this split)"]
        message = (f"no data for {spec.name}/{language}/{split}: missing {', '.join(missing)} (data dir "
                   f"{self.plan.data_dir}) and the hub cannot be used ({reason}). Fix data_dir / --data-dir or "
                   f"the {'target' if stage.kind != 'intermediate' else 'intermediate entry'}'s languages.")
        self.missing.setdefault(message, []).append(stage)

    def report_missing(self) -> None:
        """One problem per missing (task, language, split), however many stages need it."""
        for message, stages in self.missing.items():
            if len(stages) == 1:
                self.report.add(stages[0], message)
            else:
                self.report.add(None, f"{message} (needed by {len(stages)} stages, e.g. {stages[0].kind} stage "
                                      f"{stages[0].id[:12]} ({stages[0].description}))")

    def train_stage(self, stage: Stage) -> None:
        s = stage.settings
        for i, mix in enumerate(s.get("tasks") or []):
            for language in mix.get("languages") or ["en"]:
                self.task_files(stage, mix["task"], language, mix.get("split", "train"))
            for extra in mix.get("extra_files") or []:
                self.extra_file(stage, mix["task"], extra, i)
        for f in (s.get("mlm") or {}).get("files") or []:
            path = Path(f).expanduser()
            if not path.is_file():
                self.report.add(stage, f"mlm.files: MLM text file not found: {path}")
            else:
                self.files.setdefault(_FileCheck(path, None), []).append(stage)
        self.precision(stage, s.get("precision"), "precision")

    def extra_file(self, stage: Stage, task_name: str, extra: dict[str, Any], index: int) -> None:
        from xstilts.tasks.catalog import get_task

        path = Path(extra["path"]).expanduser()
        if not path.is_file():
            self.report.add(stage, f"tasks.{index}.extra_files: extra training file not found: {path}")
            return
        spec = get_task(task_name)
        if spec.local is None:
            self.report.add(stage, f"tasks.{index}.extra_files: task '{spec.name}' has no local file reader, so "
                                   f"{path} cannot be read")
            return
        key = _FileCheck(path, spec.local.reader, extra.get("language", "xx"),
                         tuple(spec.label_list) if spec.label_list else None, tuple(sorted(spec.local.options.items())))
        self.files.setdefault(key, []).append(stage)

    def eval_stage(self, stage: Stage) -> None:
        s = stage.settings
        for language in s.get("languages") or []:
            self.task_files(stage, s["task"], language, s["split"])
        self.precision(stage, s.get("precision"), "hyperparameters.eval.precision")

    def precision(self, stage: Stage, precision: str | None, key: str) -> None:
        if precision != "fp16":
            return
        if self.cuda is None:
            import torch

            self.cuda = bool(torch.cuda.is_available())
        if not self.cuda:
            from xstilts.models.predict import CPU_PRECISION_ADVICE

            self.report.add(stage, f"{key}: fp16 mixed precision needs a GPU and none is visible; {CPU_PRECISION_ADVICE}")

    # ------------------------------------------------------------------ checking

    def check_files(self, full: bool) -> None:
        for check, stages in self.files.items():
            self.report.files_checked += 1
            try:
                _check_file(check, full)
            except XStiltsError as exc:
                self.report.add(None, f"{exc} (read by {len(stages)} stage(s), e.g. {stages[0].kind} stage "
                                      f"{stages[0].id[:12]} ({stages[0].description}))")
            except Exception as exc:  # noqa: BLE001 - a reader's bug must not hide the other files
                self.report.add(None, f"{check.path}: cannot be read ({type(exc).__name__}: {exc})")


def _decode_head(path: Path, size: int = HEAD_BYTES) -> str:
    """The first ``size`` bytes of ``path`` as text; :class:`DataError` when it is empty or not UTF-8."""
    import codecs

    from xstilts.errors import DataError

    try:
        with path.open("rb") as fh:
            raw = fh.read(size)
    except OSError as exc:
        raise DataError(path, f"cannot read file ({exc.strerror})") from None
    try:
        text = codecs.getincrementaldecoder("utf-8-sig")().decode(raw, final=False)
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not valid UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise DataError(path, "file is empty")
    return text


def _head_copy(check: _FileCheck, text: str, directory: Path) -> Path | None:
    """A copy of the first complete records of ``check.path`` (same file name) in ``directory``."""
    cut = _HEAD_CUT.get(check.reader or "") or ("line" if (check.reader or "").startswith("jsonl_") else None)
    if cut is None:
        return None
    sep = "\n\n" if cut == "block" else "\n"
    end = text.replace("\r\n", "\n").rfind(sep)
    if end <= 0:
        return None
    head = directory / check.path.name
    try:
        head.write_text(text.replace("\r\n", "\n")[:end + 1], encoding="utf-8")
    except OSError:  # e.g. a full temp dir: the UTF-8 check stands alone
        return None
    return head


def _check_file(check: _FileCheck, full: bool) -> None:
    """Decode the head of one file and parse it (all of it when small or ``full``) with its reader."""
    text = _decode_head(check.path)
    if check.reader is None:
        if full:
            from xstilts.train.mlm import read_mlm_lines

            read_mlm_lines([check.path])
        return
    from xstilts.tasks.readers import read_file

    def parse(path: Path) -> None:
        read_file(check.reader or "", path, label_list=list(check.label_list) if check.label_list else None,
                  language=check.language, **dict(check.options))

    size = check.path.stat().st_size
    if full or size <= HEAD_BYTES:
        parse(check.path)
        return
    tmp = Path(tempfile.mkdtemp(prefix="xstilts-preflight-"))
    try:
        head = _head_copy(check, text, tmp)
        if head is not None:
            try:
                parse(head)
            except XStiltsError as exc:  # name the real file, not the copy of its head
                raise XStiltsError(str(exc).replace(str(head), f"{check.path} (first records)")) from None
        elif size <= QUICK_PARSE_BYTES:
            parse(check.path)
        else:
            logger.info("%s: large file, checked for UTF-8 only; `xstilts run --check-data` parses it all", check.path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_plan(plan: Plan, *, stage_ids: Iterable[str] | None = None, full: bool = False,
               cuda: bool | None = None) -> PreflightReport:
    """Check every input of the given stages (default: all of ``plan``); never raises for a bad input.

    ``cuda``: whether a GPU will be there (None: ask torch, only if a stage wants fp16)."""
    report = PreflightReport()
    checker = _Checker(plan, report, cuda)
    handlers: dict[str, Callable[[Stage], None]] = {"intermediate": checker.train_stage, "target": checker.train_stage,
                                                    "eval": checker.eval_stage}
    for sid in stage_ids if stage_ids is not None else plan.stages:
        stage = plan.stages[sid]
        report.stages_checked += 1
        handlers[stage.kind](stage)
    checker.report_missing()
    checker.check_files(full)
    return report


def preflight(plan: Plan, *, states: dict[str, str] | None = None, full: bool = False,
              cuda: bool | None = None) -> PreflightReport:
    """Check the inputs of every stage of ``plan`` not yet done (``states``: from the store) and
    raise one :class:`~xstilts.errors.ConfigError` listing every problem, before anything trains."""
    todo = [sid for sid in plan.stages if (states or {}).get(sid) != "done"]
    report = check_plan(plan, stage_ids=todo, full=full, cuda=cuda)
    logger.info("checked the inputs of %d stage(s): %d file(s)%s", report.stages_checked, report.files_checked,
                " (full parse)" if full else "")
    if report.problems:
        lines = "\n".join(f"  - {p}" for p in report.problems)
        raise ConfigError(f"{len(report.problems)} problem(s) with the inputs of the plan; nothing was trained:\n{lines}",
                          file=plan.spec_file)
    return report
