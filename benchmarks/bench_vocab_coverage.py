"""How well do concept vocabularies cover the class names of ImageNet-1k?

    python benchmarks/bench_vocab_coverage.py [--shared ../shared] [--vocab PATH ...]

Compares the project's default vocabulary (``lance_concepts/data/default_vocab.txt``) with the SpLiCE authors'
``laion_bigrams.txt`` (all lines, and its top 10,000 = its LAST 10,000 lines: the file is sorted by ascending
frequency). The 1,000 class names come from the file names of ``<shared>/datasets/imagenet-sample``
(``<wnid>_<class name>.JPEG``; underscores -> spaces, lower case). Files under ``shared`` are only read.

Names and vocabulary entries are compared after the same normalisation: lower case, apostrophes dropped,
hyphens and underscores as spaces (``jack-o'-lantern`` -> ``jack o lantern``). Reported per vocabulary:

* exact: the whole class name is a vocabulary entry ("golden retriever", "tench");
* head: the class name's last word is an entry ("retriever" for "golden retriever"); "any number" also
  accepts its simple singular/plural variants ("bars" for "parallel bars" matches "bar");
* any word: at least one word of the class name (not a stopword) is an entry;
* size, two-word entries, and the shares of entries that are stopwords, contain a digit, or contain
  punctuation (anything but letters and spaces).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tools.build_vocabulary import STOPWORDS

DEFAULT_VOCAB = REPO / "lance_concepts" / "data" / "default_vocab.txt"


def normalise(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower().replace("'", "").replace("\u2019", "")))


def read_vocab(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def imagenet_class_names(shared: Path) -> list[str]:
    folder = shared / "datasets" / "imagenet-sample"
    names = []
    for f in sorted(folder.iterdir()):
        match = re.match(r"^n\d+_(.+)\.jpe?g$", f.name, flags=re.IGNORECASE)
        if match:
            names.append(match.group(1).replace("_", " ").lower())
    return names


def number_variants(word: str) -> set[str]:
    """The word with simple English singular/plural variants ("bars" -> "bar", "bear" -> "bears")."""
    out = {word, word + "s", word + "es"}
    if word.endswith("ies"):
        out.add(word[:-3] + "y")
    if word.endswith("es"):
        out.add(word[:-2])
    if word.endswith("s"):
        out.add(word[:-1])
    if word.endswith("y"):
        out.add(word[:-1] + "ies")
    return out


def coverage(names: list[str], vocab: list[str]) -> dict:
    entries = {normalise(v) for v in vocab}
    exact = head = head_number = any_word = 0
    missed_head = []
    for name in names:
        norm = normalise(name)
        words = norm.split()
        exact += norm in entries
        head += words[-1] in entries
        head_number += any(v in entries for v in number_variants(words[-1]))
        any_word += any(w in entries for w in words if w not in STOPWORDS)
        if words[-1] not in entries:
            missed_head.append(name)
    n = len(names)
    stop = sum(v.lower() in STOPWORDS for v in vocab)
    digit = sum(bool(re.search(r"\d", v)) for v in vocab)
    punct = sum(bool(re.search(r"[^A-Za-z ]", v)) and not re.search(r"\d", v) for v in vocab)
    dirty = sum(v.lower() in STOPWORDS or bool(re.search(r"[^A-Za-z ]", v)) for v in vocab)
    return {
        "size": len(vocab), "two_word": sum(" " in v.strip() for v in vocab),
        "exact": exact / n, "head": head / n, "head_number": head_number / n, "any": any_word / n,
        "stop": stop / len(vocab), "digit": digit / len(vocab), "punct": punct / len(vocab),
        "dirty": dirty / len(vocab), "missed_head": missed_head,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", default=os.environ.get("LANCE_CONCEPTS_SHARED", str(REPO.parent / "shared")))
    parser.add_argument("--vocab", action="append", default=[], help="extra vocabulary files to compare")
    parser.add_argument("--examples", type=int, default=25, help="class names to list whose head word is missing")
    args = parser.parse_args(argv)
    shared = Path(args.shared)
    names = imagenet_class_names(shared)
    if len(names) != 1000:
        print(f"warning: found {len(names)} ImageNet class names, expected 1000", file=sys.stderr)
    laion = read_vocab(shared / "reference" / "splice" / "laion_bigrams.txt")
    vocabs = [("lance-concepts default", read_vocab(DEFAULT_VOCAB)),
              ("SpLiCE laion_bigrams.txt, all lines", laion),
              ("SpLiCE laion_bigrams.txt, top 10k (last 10,000 lines)", laion[-10000:])]
    vocabs += [(p, read_vocab(Path(p))) for p in args.vocab]
    results = [(label, coverage(names, vocab)) for label, vocab in vocabs]
    print(f"ImageNet-1k class names: {len(names)} ({len(set(names))} distinct)\n")
    print("| vocabulary | entries | two-word | exact name | head word | head word, any number | any word | "
          "stopwords | with digits | with punctuation |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, r in results:
        print(f"| {label} | {r['size']:,} | {r['two_word']:,} | {r['exact']:.1%} | {r['head']:.1%} | "
              f"{r['head_number']:.1%} | {r['any']:.1%} | {r['stop']:.1%} | {r['digit']:.1%} | {r['punct']:.1%} |")
    ours, laion_all = results[0][1], results[1][1]
    only_ours = sorted(set(laion_all["missed_head"]) - set(ours["missed_head"]))
    only_laion = sorted(set(ours["missed_head"]) - set(laion_all["missed_head"]))
    print(f"\nhead word covered only by the default vocabulary ({len(only_ours)}): "
          f"{', '.join(only_ours[:args.examples])}")
    print(f"head word covered only by laion_bigrams.txt ({len(only_laion)}): "
          f"{', '.join(only_laion[:args.examples])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
