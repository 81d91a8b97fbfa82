"""Every command and option of `illustrator` has a help text that names its default."""

from __future__ import annotations

import argparse
import re
import subprocess
from typing import Any

import pytest
from conftest import ROOT, SCRIPT

from cli import build_parser

pytestmark = pytest.mark.timeout(120)


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[Any]:
    """(command path, its parser) of every command and subcommand."""
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += commands(sub, (*path, name))
    return found


def entries(text: str, section: str) -> list[str]:
    """The entries of one section of an argparse help text, each joined into one line."""
    if f"\n{section}:\n" not in text:
        return []
    lines = text.split(f"\n{section}:\n", 1)[1].splitlines()
    found: list[list[str]] = []
    for line in lines:
        if not line.strip() or not line.startswith("  "):
            break
        if re.match(r"^  \S", line):
            found.append([line])
        else:
            found[-1].append(line)
    return [" ".join(" ".join(entry).split()) for entry in found]


def test_every_option_of_every_command_has_a_help_text_with_its_default() -> None:
    walked = commands(build_parser())
    assert len(walked) >= 18  # serve, process, watch, manuscripts, sessions x 10, loadtest...
    missing: list[str] = []
    for path, parser in walked:
        done = subprocess.run(
            [str(SCRIPT), *path, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        options = entries(done.stdout, "options")
        declared = [a for a in parser._actions if a.option_strings and a.dest != "help"]
        for action in declared:
            flags = ", ".join(action.option_strings)
            entry = next((e for e in options if e.startswith(action.option_strings[0])), None)
            if entry is None:
                missing.append(f"{' '.join(path)} {flags}: not in --help")
            elif "(default" not in entry and "default:" not in entry:
                missing.append(f"{' '.join(path)} {flags}: no default in {entry!r}")
        for entry in entries(done.stdout, "positional arguments"):
            if entry.startswith("{"):
                continue  # the list of subcommands: each is walked on its own
            if len(entry.split()) < 2:
                missing.append(f"{' '.join(path)} {entry}: no help text")
    assert not missing, "\n".join(missing)
