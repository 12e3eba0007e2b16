"""The README's commands are the ones CI runs and the CLIs accept."""

from __future__ import annotations

from pathlib import Path
import re

ROOT = Path(__file__).resolve().parent.parent


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_ci_runs_exactly_the_readme_test_command():
    blocks = _bash_blocks((ROOT / "README.md").read_text())
    test_commands = [b.strip() for b in blocks if "pytest" in b]
    assert test_commands, "README has no test command"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_commands[0] in ci


def test_readme_main_command_is_the_demo():
    first = _bash_blocks((ROOT / "README.md").read_text())[0].strip()
    assert first.endswith("tuner demo")


def test_only_benchmark_smoke_runs_are_left_out_of_ci():
    # CI's command deselects `long`; a product test carrying it would silently stop running.
    marked = {path.name for path in (ROOT / "tests").glob("test_*.py") if "mark.long" in path.read_text()}
    assert marked == {"test_bench.py", "test_readme.py"}
    assert '-m "not long"' in (ROOT / ".ci" / "run").read_text()
