"""The README opens with exactly two commands, and CI runs the second one verbatim."""
import re

from support import REPO


def readme_commands():
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_readme_opens_with_two_commands():
    commands = readme_commands()
    assert len(commands) == 2
    run, tests = commands
    assert "python -m sctrain.synth" in run and "python -m sctrain --config" in run
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command():
    assert readme_commands()[1] in (REPO / ".ci/run").read_text()


def test_readme_is_short():
    # A README for users (issue 20): measurements and the module catalogue live in docs/.
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


def test_readme_links_point_at_files():
    text = (REPO / "README.md").read_text()
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t]
    assert targets, "the README links to its docs"
    missing = [t for t in targets if not (REPO / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
