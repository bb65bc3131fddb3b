"""Long commands show a progress bar on a terminal (count, rate, time left) and nothing but their lines elsewhere."""

from __future__ import annotations

import io
import re

from streamrag_assets.terminal import progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_with_the_count_the_rate_and_the_time_left() -> None:
    screen = _Terminal()
    with progress_bar("indexing Gold", "rows", screen) as steps:
        assert steps is not None
        for done in range(0, 1001, 250):
            steps(done, 1000)
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())  # the colours and cursor moves
    last = shown.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("indexing Gold") and "1000/1000" in last and re.search(r"[\d,]+ rows/s", last), last
    assert re.search(r"\d:\d\d:\d\d", last), "the time left"


def test_a_pipe_gets_no_bar_and_no_control_characters() -> None:
    pipe = io.StringIO()
    with progress_bar("indexing Gold", "rows", pipe) as steps:
        assert steps is None, "the operation reports in lines instead"
    assert pipe.getvalue() == ""
