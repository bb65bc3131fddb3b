"""The README's command-line reference names commands and options the installed CLI has: each command's `--help`
answers and lists every option the README shows for it (what each command does is tested where it is used:
test_cli.py, test_medallion.py, test_replay.py and the others)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streamrag_assets.cli import app

README = Path(__file__).resolve().parents[2] / "README.md"


def reference() -> dict[tuple[str, ...], set[str]]:
    """``(command words) -> options`` of the "Command line" section's block (continuation lines included)."""
    section = README.read_text().split("## Command line", 1)[1]
    block = section.split("```", 2)[1]
    commands: dict[tuple[str, ...], set[str]] = {}
    current: list[tuple[str, ...]] = []
    for line in block.splitlines():
        if line.startswith("streamrag "):
            words = []
            for word in re.split(r"\s{2,}", line)[0].split()[1:]:  # the description is two spaces or more away
                if not re.fullmatch(r"[a-z][a-z-]*(\|[a-z-]+)*", word):
                    break
                words.append(word)
            # "spark master|worker": both commands
            heads, last = words[:-1], words[-1].split("|")
            current = [(*heads, alternative) for alternative in last]
            for command in current:
                commands.setdefault(command, set())
        for command in current:
            commands[command] |= set(re.findall(r"--[a-z][a-z-]+", line))
    return commands


COMMANDS = reference()


def test_the_reference_lists_the_commands() -> None:
    assert len(COMMANDS) >= 15 and ("replay", "reprocess") in COMMANDS and ("spark", "worker") in COMMANDS


@pytest.mark.parametrize("command", sorted(COMMANDS), ids=" ".join)
def test_each_command_in_the_readme_exists_with_the_options_it_shows(command: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    missing = {option for option in COMMANDS[command] if option not in result.output}
    assert not missing, f"`streamrag {' '.join(command)}` has no {sorted(missing)}:\n{result.output}"
