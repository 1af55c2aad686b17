"""Reading a data file's text with errors that name the file: shared by every reader."""

from __future__ import annotations

from pathlib import Path

from xstilts.errors import DataError


def read_text(path: Path, expected: str) -> str:
    """The file's text (UTF-8, BOM stripped); DataError if unreadable or empty."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(path, f"file not found; expected {expected}") from None
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not valid UTF-8 (byte {exc.start}); expected {expected}") from None
    except OSError as exc:
        raise DataError(path, f"cannot read file ({exc.strerror}); expected {expected}") from None
    if not text.strip():
        raise DataError(path, f"file is empty; expected {expected}")
    return text
