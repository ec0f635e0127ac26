"""Every `<package> fit|validate|test|predict ...` command in a package README's code blocks parses against that
package's CLI: the config names, keys and values a README tells users to type exist (checked with
`--print_config`, which parses every argument and instantiates nothing)."""

import contextlib
import importlib
import io
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = sorted(p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists())
SUBCOMMANDS = ("fit", "validate", "test", "predict")


def readme_commands(package: str) -> list[list[str]]:
    """The Lightning commands of ``packages/<package>/README.md``'s fenced code blocks, as argument lists (line
    continuations joined, `<placeholders>` kept as one word, `# comments` and `...` elisions dropped, a leading
    `uv run` removed)."""
    text = (ROOT / "packages" / package / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```[^\n]*\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"<[^<>]*>", lambda m: m.group(0).replace(" ", "_"), line)  # <that run> is one word
            words = shlex.split(line, comments=True)
            if words[:2] == ["uv", "run"]:
                words = words[2:]
            if len(words) >= 2 and words[0] == package and words[1] in SUBCOMMANDS:
                commands.append([w for w in words[1:] if not (w.startswith("...") or w.endswith("..."))])
    return commands


CASES = [(p, c) for p in PACKAGES for c in readme_commands(p)]


def test_every_package_readme_shows_commands():
    found = {p for p, _ in CASES}
    assert found == set(PACKAGES), sorted(set(PACKAGES) - found)


def test_readme_commands_are_found_whole():
    # continuation lines, comments and elisions handled: no stray shell syntax reaches the CLI
    for package, args in CASES:
        assert not any(w in ("\\", "#", "|", "&&") for w in args), (package, args)
        assert "--config" in args, (package, args)


@pytest.mark.parametrize(("package", "args"), CASES, ids=[f"{p}:{' '.join(c[:3])}" for p, c in CASES])
def test_readme_command_parses(package, args):
    main = importlib.import_module(f"{package}.cli").main
    argv = args if "--print_config" in args else [*args, "--print_config"]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        main(args=argv)
    assert exc.value.code in (0, None), f"{package} {' '.join(args)}\n{err.getvalue()[-2000:]}"
    assert "model:" in out.getvalue() and "data:" in out.getvalue()
