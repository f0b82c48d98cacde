"""`osma-router new-plugin NAME [--dir D]`: writes a handler plugin package whose tests
pass at once (README, "Writing a handler plugin").

The package holds a `pyproject.toml` that publishes the handlers under the entry-point
group `osma_router.handlers`, one handler (`<package>.kpi`) that posts a KPI measurement
through `ctx.ogsm`, a routes file, a README, and tests that use the `deliver` and
`fake_ogsm` fixtures. The files are the templates in `scaffold_templates/`.
"""

from __future__ import annotations

import argparse
import keyword
import re
import shlex
import string
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from ..dev.runner import typed_command
from .common import add_command, fail

# Template -> the file it becomes; paths are templates too ($package).
FILES = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "osma-router.toml.tmpl": "osma-router.toml",
    "plugin.py.tmpl": "$package/__init__.py",
    "test_plugin.py.tmpl": "tests/test_$package.py",
}
# A distribution name (PEP 508: letters, digits, `-`, `_`; a letter first, no separator last)
# that is a Python package name once `-` becomes `_`.
NAME = re.compile(r"[A-Za-z](?:[A-Za-z0-9_-]*[A-Za-z0-9])?")
# Package names a plugin must not take: the standard library's, ours, and the usual test folders.
TAKEN = frozenset(sys.stdlib_module_names) | {"receiver", "handlers", "tests", "test"}


def package_name(name: str) -> str:
    """The Python package of plugin NAME (`care-kpi` -> `care_kpi`); ValueError if there is none."""
    package = name.replace("-", "_")
    if not NAME.fullmatch(name) or not package.isidentifier() or keyword.iskeyword(package):
        raise ValueError(
            f"{name!r} is not a valid plugin name: use letters, digits, '-' and '_', "
            "starting with a letter (e.g. care-kpi)"
        )
    if package in TAKEN:
        raise ValueError(f"{name!r} is not a valid plugin name: the package {package!r} would shadow another")
    return package


def render(name: str) -> dict[str, str]:
    """Relative path -> text of each file of the plugin NAME."""
    package = package_name(name)
    values = {"name": name, "package": package, "handler": f"{package}.kpi"}
    templates = resources.files("receiver.cli") / "scaffold_templates"
    return {
        string.Template(path).substitute(values): string.Template(
            (templates / template).read_text(encoding="utf-8")
        ).substitute(values)
        for template, path in FILES.items()
    }


def write_plugin(name: str, target: Path) -> list[Path]:
    """Write the plugin NAME into `target`, which must not exist or be an empty directory.
    Returns the files written; ValueError for a bad name or a target in the way."""
    files = render(name)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ValueError(f"{target}: already exists and is not an empty directory; choose another --dir")
    written = []
    for relative, text in files.items():
        path = target / relative
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"{path}: cannot write: {exc.strerror}") from None
        written.append(path)
    return written


def shown(directory: str) -> str:
    """`directory` as the next-steps commands should spell it: `pip install -e NAME` would
    read a bare name as a project on PyPI, so a relative path starts with `./`."""
    if not directory.startswith(("/", "./", "../")) and directory not in (".", ".."):
        directory = f"./{directory}"
    return shlex.quote(directory)


def cmd_new_plugin(args: argparse.Namespace) -> int:
    directory = args.dir or f"./{args.name}"
    try:
        write_plugin(args.name, Path(directory))
    except ValueError as exc:
        return fail(str(exc))
    where = shown(directory)
    print(f"wrote the plugin {args.name} (handler {package_name(args.name)}.kpi) to {where}")
    print("next steps:")
    print(f"  {typed_command('pip')} install -e {where}")
    print(f"  {typed_command('pytest')} {where}")
    print(f"  OSMA_ROUTER_CONFIG={where}/osma-router.toml {typed_command('osma-router')} dev")
    return 0


def add_commands(sub: Any) -> None:
    """`osma-router new-plugin`."""
    p = add_command(
        sub,
        "new-plugin",
        cmd_new_plugin,
        "write a handler plugin package (entry point, a KPI handler, a routes file, tests) "
        "whose tests pass at once",
    )
    p.add_argument("name", metavar="NAME", help="the plugin's name, e.g. care-kpi (package care_kpi)")
    p.add_argument("--dir", metavar="D", help="where to write it (default: ./NAME); must be new or empty")
