"""The root typer app, error handling and logging set-up shared by every command."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from xstilts import __version__
from xstilts.errors import XStiltsError

# OpenMP threads that spin while waiting burn the CPU another process needs: with two
# training processes on two cores (``--workers 2``, or a shared machine) spinning made steps
# ~10x slower here. Sleeping waiters cost little on a dedicated machine. Export
# OMP_WAIT_POLICY=ACTIVE to override. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# transformers' and huggingface_hub's own bars ("Loading weights", downloads) and transformers'
# own stderr handler would draw beside ours; their warnings still show (set before they import).
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

app = typer.Typer(
    name="xstilts",
    help="Intermediate-task training for zero-shot cross-lingual transfer (X-STILTs).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


#: third-party loggers kept one level above the user's (INFO noise shows only with --verbose)
NOISY_LOGGERS = ("urllib3", "filelock", "fsspec", "datasets", "huggingface_hub", "transformers", "accelerate",
                 "faiss", "torch", "matplotlib", "PIL", "numexpr", "h5py", "tensorboard", "wandb", "mlflow",
                 "sentence_transformers", "httpx", "git")


def _progress_safe_handler() -> logging.Handler:
    """A rich log handler that writes through tqdm's lock: every progress bar is cleared, the
    record printed and the bars redrawn, so a log line never lands inside a bar's line."""
    from rich.logging import RichHandler

    class ProgressSafeHandler(RichHandler):
        def emit(self, record: logging.LogRecord) -> None:
            with write_lock():
                super().emit(record)

    return ProgressSafeHandler(console=err_console, show_path=False, rich_tracebacks=False,
                               log_time_format="[%X]")


def write_lock() -> Any:
    """Context manager: progress bars (tqdm) cleared while the block writes to the terminal."""
    if "tqdm" not in sys.modules:  # no bar can be on screen
        import contextlib

        return contextlib.nullcontext()
    from tqdm import tqdm

    return tqdm.external_write_mode(file=sys.stderr)


def say(message: str, *, out: Console | None = None) -> None:
    """Print one line (rich markup) without colliding with a progress bar."""
    with write_lock():
        (out or console).print(message, highlight=False, soft_wrap=True)


def setup_logging(verbose: bool = False) -> None:
    """One handler for every log line (through the progress bars' lock); third-party loggers
    one level above the user's (``-v``: DEBUG for xstilts, INFO for the rest)."""
    level = logging.DEBUG if verbose else getattr(logging, os.environ.get("XSTILTS_LOG", "INFO").upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(message)s", handlers=[_progress_safe_handler()], force=True)
    third_party = min(logging.ERROR, max(level + 10, logging.INFO))
    if verbose:  # transformers reads its verbosity when it is first imported (after this)
        os.environ["TRANSFORMERS_VERBOSITY"] = "info"
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(third_party)
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(max(level, logging.WARNING))


def phase_status(description: str) -> Any:
    """Context manager: a spinner with the elapsed time on stderr (transient) for a phase whose
    length is not known in advance; log lines print above it."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err_console,
                        transient=True, disable=not err_console.is_terminal)
    progress.add_task(description, total=None)
    return progress


def task_progress(description: str, *, enabled: bool = True) -> Any:
    """Context manager yielding ``on_task(index, total, name)``: a progress bar with an ETA on
    stderr (transient; nothing when ``enabled`` is false or stderr is not a terminal)."""
    import contextlib

    @contextlib.contextmanager
    def _cm() -> Any:
        if not enabled or not err_console.is_terminal:
            yield lambda i, n, name: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("eta"), TimeRemainingColumn(), console=err_console, transient=True) as bar:
            tid = bar.add_task(description, total=None)

            def on_task(index: int, total: int, name: str) -> None:
                bar.update(tid, total=total, completed=index, description=f"{description}: {name}")

            yield on_task

    return _cm()


def handle_errors(func: F) -> F:
    """Decorator for commands: user errors print one clear line and exit 2, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except XStiltsError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            what = "terminated" if type(exc).__name__ == "Terminated" else "interrupted"
            err_console.print(f"[yellow]{what}[/]: every worker stopped and gave its stage back; progress up to the "
                              "last checkpoint is kept; run the same command again to resume.")
            raise typer.Exit(143 if what == "terminated" else 130) from None
        except Exception as exc:
            friendly = _user_error(exc)
            if friendly is None:
                raise
            err_console.print(f"[bold red]error:[/] {escape(str(friendly))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _user_error(exc: BaseException) -> XStiltsError | None:
    """A full disk that escaped as a library error (OSError ENOSPC, torch's "unexpected pos",
    safetensors' "os error 28", ...), as one clear error naming the file system; None otherwise."""
    from xstilts.experiments.faults import disk_full_error, is_disk_full

    if not is_disk_full(exc):
        return None
    import tempfile

    from xstilts.paths import xstilts_home

    return disk_full_error(exc, [os.getcwd(), xstilts_home(), tempfile.gettempdir()])


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    setup_logging(verbose)


@app.command()
def version() -> None:
    """Print the xstilts version and those of its main dependencies."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    console.print(f"xstilts {__version__}")
    for dep in ("torch", "transformers", "datasets", "accelerate"):
        try:
            console.print(f"  {dep} {v(dep)}", highlight=False)
        except PackageNotFoundError:
            console.print(f"  {dep} (not installed)")
    console.print(f"  python {sys.version.split()[0]}")


def main() -> None:
    ok = False
    try:
        app()
        ok = True
    except SystemExit as exc:  # typer ends every command, a successful one too, with sys.exit
        ok = exc.code in (None, 0)
        raise
    finally:
        if ok:  # finished without error: end a launched process's process group (xstilts.distributed)
            from xstilts.distributed import release_process_group

            release_process_group()
