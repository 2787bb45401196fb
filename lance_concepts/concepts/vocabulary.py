"""Concept vocabularies: the words SpLiCE decomposes into and FALCON labels with.

A vocabulary is an ordered list of short strings. Its *digest* identifies it in every table
computed from it (the concept ids are positions in this list), so two vocabularies with the same
words in another order are different vocabularies. Text embeddings of a vocabulary are cached on
disk keyed by (model fingerprint, vocabulary digest, prompt template): the second run does not
re-encode.
"""
from __future__ import annotations

import collections
import hashlib
import os
import re
import unicodedata
import urllib.request
import warnings
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..errors import VocabularyError
from .names import ConceptNames

__all__ = ["Vocabulary", "load_vocabulary", "BUILTIN_VOCABULARIES", "REMOTE_VOCABULARIES"]

BUILTIN_VOCABULARIES = {
    "default": "default_vocab.txt",  # ~10k visual English concepts built by tools.build_vocabulary
    "demo": "demo_vocab.txt",  # the demo world's words plus distractors
}

# The SpLiCE authors' published lists (Apache-2.0), fetched at run time and cached, never shipped.
# Their files are sorted by ascending frequency: "top k" means the LAST k lines.
_SPLICE_BASE = "https://raw.githubusercontent.com/AI4LIFE-GROUP/SpLiCE/main/data/vocab/"
REMOTE_VOCABULARIES = {
    "splice-laion-10k": (_SPLICE_BASE + "laion.txt", 10_000),
    "splice-laion-bigrams": (_SPLICE_BASE + "laion_bigrams.txt", None),
    "splice-mscoco": (_SPLICE_BASE + "mscoco.txt", None),
}

# Function words that never name a visual concept; used when building a vocabulary from captions.
STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just me more most
my myself no nor not now of off on once only or other our ours ourselves out over own same she
should so some such than that the their theirs them themselves then there these they this those
through to too under until up very was we were what when where which while who whom why will with
would you your yours yourself yourselves image images photo photos picture pictures stock free
new one two three via get also like use used using may might must shall us its
""".split())

_WORD = re.compile(r"[^\W\d_]+(?:['-][^\W\d_]+)*", re.UNICODE)


def cache_dir() -> Path:
    """Where downloaded vocabularies and text embeddings are cached (``$LANCE_CONCEPTS_CACHE``)."""
    root = os.environ.get("LANCE_CONCEPTS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lance_concepts"
    )
    return Path(root)


def _clean(concepts: Iterable[str], origin: str) -> list[str]:
    """Normalise whitespace and unicode; drop empties and duplicates with one warning saying what went."""
    kept: list[str] = []
    seen: set[str] = set()
    empty, dupes = 0, []
    for raw in concepts:
        text = " ".join(unicodedata.normalize("NFC", str(raw)).split())
        if not text:
            empty += 1
            continue
        if text in seen:
            dupes.append(text)
            continue
        seen.add(text)
        kept.append(text)
    if empty or dupes:
        parts = []
        if empty:
            parts.append(f"{empty} empty entr{'y' if empty == 1 else 'ies'}")
        if dupes:
            shown = ", ".join(repr(d) for d in dupes[:5]) + (" ..." if len(dupes) > 5 else "")
            parts.append(f"{len(dupes)} duplicate{'s' if len(dupes) > 1 else ''} ({shown})")
        warnings.warn(f"vocabulary {origin}: dropped {' and '.join(parts)}", stacklevel=3)
    if not kept:
        raise VocabularyError(f"vocabulary {origin} is empty (no concepts left after cleaning)")
    return kept


def _read_lines(path: Path) -> list[str]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise VocabularyError(f"vocabulary file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise VocabularyError(f"vocabulary file {str(path)!r} cannot be read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise VocabularyError(
            f"vocabulary file {str(path)!r} is not UTF-8 (invalid byte at line {line}); "
            "re-encode it, e.g. `iconv -f latin1 -t utf-8`"
        ) from None
    return [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]


class Vocabulary:
    """An ordered, cleaned list of concepts with a name, a source description and a digest."""

    def __init__(self, concepts: Sequence[str], name: str = "custom", source: str = "in-memory list"):
        self.concepts: list[str] = _clean(concepts, repr(name))
        self.name = name
        self.source = source
        self.digest = hashlib.sha256("\n".join(self.concepts).encode()).hexdigest()[:20]
        self.names = ConceptNames(range(len(self.concepts)), self.concepts)

    # -- constructors ---------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path, name: str | None = None) -> "Vocabulary":
        """One concept per line, UTF-8; lines starting with '#' are comments."""
        path = Path(path)
        return cls(_read_lines(path), name=name or path.stem, source=f"file:{path}")

    @classmethod
    def builtin(cls, name: str) -> "Vocabulary":
        if name not in BUILTIN_VOCABULARIES:
            raise VocabularyError(f"unknown built-in vocabulary {name!r}; choose from {sorted(BUILTIN_VOCABULARIES)}")
        res = resources.files("lance_concepts").joinpath("data", BUILTIN_VOCABULARIES[name])
        with resources.as_file(res) as p:
            if not Path(p).is_file():
                raise VocabularyError(f"built-in vocabulary {name!r} is missing from the installed package ({p})")
            return cls(_read_lines(Path(p)), name=name, source=f"builtin:{name}")

    @classmethod
    def download(cls, name: str) -> "Vocabulary":
        """The SpLiCE authors' published lists, downloaded once and cached (their files are not shipped)."""
        url, top = REMOTE_VOCABULARIES[name]
        target = cache_dir() / "vocabularies" / os.path.basename(url)
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with urllib.request.urlopen(url, timeout=20) as resp:
                    payload = resp.read()
            except OSError as exc:
                raise VocabularyError(
                    f"could not download vocabulary {name!r} from {url} ({exc}). Offline, download the file "
                    f"elsewhere and pass its path (vocab='/path/to/{os.path.basename(url)}'), or put it at {target}"
                ) from None
            tmp = target.with_suffix(".part")
            tmp.write_bytes(payload)
            tmp.replace(target)
        lines = _read_lines(target)
        if top is not None:  # ascending frequency: the most frequent words are the last lines
            lines = lines[-top:][::-1]
        return cls(lines, name=name, source=url)

    @classmethod
    def from_texts(cls, texts: Iterable[str], top_n: int = 10_000, min_count: int = 2,
                   bigrams: bool = True, name: str = "captions") -> "Vocabulary":
        """Top-N words and adjacent-word bigrams of a caption corpus, most frequent first.

        Cleaning: lowercase, letters only (no digits or punctuation), stopwords dropped, and a bigram
        never spans a stopword. Ties are broken alphabetically so the result is deterministic.
        """
        if top_n < 1:
            raise VocabularyError("top_n must be at least 1")
        counts: collections.Counter = collections.Counter()
        for text in texts:
            if text is None:
                continue
            words = [w for w in _WORD.findall(str(text).lower())]
            prev = None
            for w in words:
                if w in STOPWORDS or len(w) < 2:
                    prev = None
                    continue
                counts[w] += 1
                if bigrams and prev is not None:
                    counts[f"{prev} {w}"] += 1
                prev = w
        ranked = sorted((c for c in counts.items() if c[1] >= min_count), key=lambda kv: (-kv[1], kv[0]))
        if not ranked:
            raise VocabularyError(f"no word occurs at least {min_count} times in the captions")
        return cls([w for w, _ in ranked[:top_n]], name=name, source=f"captions(top_n={top_n}, min_count={min_count})")

    # -- container protocol ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.concepts)

    def __iter__(self) -> Iterator[str]:
        return iter(self.concepts)

    def __getitem__(self, i: int) -> str:
        return self.concepts[i]

    def __contains__(self, concept: str) -> bool:
        return concept in self.names

    def __repr__(self) -> str:
        return f"Vocabulary(name={self.name!r}, size={len(self)}, digest={self.digest!r})"

    def index(self, concept: str) -> int:
        """Position of ``concept``; an unknown concept raises with the closest matches."""
        return self.names.id(concept)

    def save(self, path) -> Path:
        path = Path(path)
        path.write_text("\n".join(self.concepts) + "\n", encoding="utf-8")
        return path

    # -- embeddings -----------------------------------------------------------------------------
    def embed(self, encoder, template: str | None = None, cache: bool | str | Path = True) -> np.ndarray:
        """RAW text embeddings ``(len(self), d)`` of the concepts (SpLiCE: no template by default).

        ``template`` such as ``"a photo of {}"`` is applied to each concept when given. Results are
        cached under ``cache_dir()/text_embeddings`` (or the given directory); ``cache=False`` disables it.
        """
        if template is not None and "{}" not in template:
            raise VocabularyError(f"prompt template {template!r} must contain '{{}}'")
        key = hashlib.sha256(f"{encoder.fingerprint}|{self.digest}|{template}".encode()).hexdigest()[:24]
        path = None
        if cache:
            root = Path(cache) if isinstance(cache, (str, Path)) else cache_dir() / "text_embeddings"
            path = root / f"{key}.npy"
            if path.is_file():
                emb = np.load(path)
                if emb.shape == (len(self), encoder.embed_dim):
                    return emb
        texts = self.concepts if template is None else [template.format(c) for c in self.concepts]
        chunk = 2048  # a 10k vocabulary takes minutes on a CPU: show progress between chunks
        starts = range(0, len(texts), chunk)
        if len(texts) > chunk:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"encode {len(texts)} concepts", unit="chunk", leave=False)
        emb = np.concatenate([np.asarray(encoder.encode_text(texts[i:i + chunk]), dtype=np.float32)
                              for i in starts], axis=0)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
            np.save(tmp, emb)
            tmp.replace(path)
        return emb


def load_vocabulary(spec) -> Vocabulary:
    """Resolve a vocabulary: a ``Vocabulary``, a built-in name (``default``, ``demo``), a SpLiCE list
    name (``splice-laion-10k``, ``splice-laion-bigrams``, ``splice-mscoco``), or a text file path."""
    if isinstance(spec, Vocabulary):
        return spec
    if spec is None:
        spec = "default"
    if isinstance(spec, (list, tuple)):
        return Vocabulary(spec)
    spec = str(spec)
    if spec in BUILTIN_VOCABULARIES:
        return Vocabulary.builtin(spec)
    if spec in REMOTE_VOCABULARIES:
        return Vocabulary.download(spec)
    path = Path(spec).expanduser()
    if path.exists():
        return Vocabulary.from_file(path)
    raise VocabularyError(
        f"vocabulary {spec!r} is not a file, a built-in ({', '.join(BUILTIN_VOCABULARIES)}) "
        f"or a SpLiCE list ({', '.join(REMOTE_VOCABULARIES)})"
    )


def _read_text_column(source, column: str, table: str = "images") -> list:
    """The values of one text column of a CSV/Parquet/JSONL file, a Lance dataset or a LanceDB table."""
    path = Path(str(source)).expanduser()
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        import pyarrow.csv as pacsv

        opts = pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
        data = pacsv.read_csv(path, parse_options=opts, convert_options=pacsv.ConvertOptions(include_columns=[column]))
    elif suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        data = pq.read_table(path, columns=[column])
    elif suffix in (".jsonl", ".ndjson", ".json"):
        import pyarrow.json as pajson

        data = pajson.read_json(path).select([column])
    elif suffix == ".lance":
        import lance

        data = lance.dataset(str(path)).to_table(columns=[column])
    else:  # a LanceDB database (directory or URI)
        import lancedb

        data = lancedb.connect(str(source)).open_table(table).to_lance().to_table(columns=[column])
    return data.column(column).to_pylist()


def build_vocabulary(source, column: str = "caption", table: str = "images", top_n: int = 10_000,
                     min_count: int = 2, bigrams: bool = True) -> Vocabulary:
    """A vocabulary from a caption column: top-N words and bigrams by frequency (see ``Vocabulary.from_texts``)."""
    try:
        texts = _read_text_column(source, column, table)
    except KeyError:
        raise VocabularyError(f"{source} has no column {column!r}") from None
    except (FileNotFoundError, ValueError) as exc:
        raise VocabularyError(f"cannot read column {column!r} from {source}: {exc}") from None
    return Vocabulary.from_texts(texts, top_n=top_n, min_count=min_count, bigrams=bigrams,
                                 name=f"captions:{Path(str(source)).stem}.{column}")
