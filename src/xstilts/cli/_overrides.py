"""``KEY=VALUE`` overrides of a spec on the command line (``xstilts run SPEC seeds=[0,1]``)."""

from __future__ import annotations

from typing import Any

from xstilts.errors import ConfigError

#: spec keys holding paths: a relative value is taken from the working directory
_PATH_KEYS = ("data_dir", "output_dir")


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """``["a.b=1", "seeds=[0,1]"]`` -> ``{"a": {"b": 1}, "seeds": [0, 1]}`` (values parsed as YAML).

    The result is deep-merged over the spec file and validated with it, so a wrong key or value
    is reported like one in the file. ConfigError for an assignment without ``=`` or a key given twice.
    """
    import yaml

    out: dict[str, Any] = {}
    for text in assignments:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"expected KEY=VALUE with a dotted KEY (e.g. hyperparameters.target.max_steps=50), "
                              f"got {text!r}", key="KEY=VALUE")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"value {raw!r} is not YAML ({exc.__class__.__name__})", key=key) from None
        if isinstance(value, str):
            value = _number(value)  # YAML 1.1 reads 1e-5 as a string
        if key in _PATH_KEYS and isinstance(value, str):
            from pathlib import Path

            value = str(Path(value).expanduser().resolve())
        _assign(out, key.split("."), value, key)
    return out


def _number(text: str) -> Any:
    """``text`` as a float when it is one (``1e-5``), else unchanged."""
    try:
        return float(text) if any(c.isdigit() for c in text) else text
    except ValueError:
        return text


def _assign(tree: dict[str, Any], parts: list[str], value: Any, key: str) -> None:
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError("given twice (as a value and as a mapping)", key=key)
        node = child
    if parts[-1] in node:
        raise ConfigError("given twice", key=key)
    node[parts[-1]] = value
