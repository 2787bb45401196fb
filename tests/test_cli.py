"""The command line: help everywhere, version, vocab commands, and friendly errors."""
import json

import pytest
from click.testing import CliRunner

from lance_concepts import __version__
from lance_concepts.cli import main


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def all_commands(group, prefix=()):
    import click

    for name, cmd in group.commands.items():
        yield prefix + (name,)
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, prefix + (name,))


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and __version__ in result.output


@pytest.mark.parametrize("path", list(all_commands(main)), ids=lambda p: " ".join(p))
def test_every_command_has_help(path):
    result = run(*path, "--help")
    assert result.exit_code == 0
    assert "Usage:" in result.output and len(result.output.splitlines()) > 3


def test_vocab_show_and_build(tmp_path):
    shown = run("vocab", "show", "demo", "--limit", "5")
    assert shown.exit_code == 0 and "size:" in shown.output and "red" in run("vocab", "show", "demo", "--limit", "500").output
    captions = tmp_path / "captions.jsonl"
    captions.write_text("\n".join(json.dumps({"caption": c}) for c in
                                  ["a camel in the desert", "camel on sand", "desert road at dusk", "a red camel"]))
    out = tmp_path / "vocab.txt"
    built = run("vocab", "build", str(captions), "--column", "caption", "--top-n", "5", "--out", str(out))
    assert built.exit_code == 0, built.output
    assert out.read_text().splitlines()[:2] == ["camel", "desert"]


def test_bad_vocabulary_is_one_line_error_not_traceback(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\xfe\n")
    result = CliRunner().invoke(main, ["vocab", "show", str(bad)])
    assert result.exit_code == 2
    assert "not UTF-8" in result.output and "Traceback" not in result.output


def test_missing_column_in_vocab_build(tmp_path):
    f = tmp_path / "c.csv"
    f.write_text("text\nhello world\n")
    result = CliRunner().invoke(main, ["vocab", "build", str(f), "--column", "caption", "--out", str(tmp_path / "v.txt")])
    assert result.exit_code == 2 and "caption" in result.output
