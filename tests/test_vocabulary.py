"""Concept vocabularies: sources, cleaning, bad input, and the text-embedding cache."""
import warnings

import numpy as np
import pytest

from lance_concepts.errors import VocabularyError
from lance_concepts.concepts.vocabulary import Vocabulary, load_vocabulary


def test_text_file_with_comments_blank_lines_and_duplicates(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("# my concepts\ndesert\n\n  sand   dune \ndesert\ncafé\n", encoding="utf-8")
    with pytest.warns(UserWarning, match=r"1 empty entry and 1 duplicate \('desert'\)"):
        vocab = load_vocabulary(path)
    assert list(vocab) == ["desert", "sand dune", "café"]
    assert vocab.index("sand dune") == 1


def test_non_utf8_file_is_a_clear_error(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("desert\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(VocabularyError, match="not UTF-8.*line 2"):
        load_vocabulary(path)


def test_empty_vocabulary_is_an_error(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("# nothing here\n\n   \n")
    with pytest.raises(VocabularyError, match="empty"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_vocabulary(path)


def test_unknown_spec_and_unknown_concept():
    with pytest.raises(VocabularyError, match="not a file, a built-in"):
        load_vocabulary("no-such-vocabulary")
    vocab = Vocabulary(["desert", "dessert", "forest"])
    with pytest.raises(VocabularyError, match="closest in the vocabulary: .desert."):
        vocab.index("desertt")


def test_digest_depends_on_content_and_order():
    a, b, c = Vocabulary(["x", "y"]), Vocabulary(["x", "y"]), Vocabulary(["y", "x"])
    assert a.digest == b.digest != c.digest


def test_builtin_vocabularies():
    demo = load_vocabulary("demo")
    assert {"red", "circle", "grass"} <= set(demo)
    default = load_vocabulary("default")
    assert 9_000 <= len(default) <= 11_000
    assert {"dog", "desert"} <= set(default)


def test_vocabulary_from_captions_counts_words_and_bigrams():
    captions = ["A red car in the desert.", "red car parked", "the desert at night 2021", "a blue car"]
    vocab = Vocabulary.from_texts(captions, top_n=10)
    assert vocab.concepts[0] == "car"  # 3 occurrences
    assert "red car" in vocab and "desert" in vocab and "red" in vocab
    assert "the" not in vocab and "2021" not in vocab and "blue" not in vocab  # stopword, digit, count 1


def test_text_embeddings_are_cached_and_reused(demo_encoder, tmp_path, monkeypatch):
    vocab = load_vocabulary("demo")
    first = vocab.embed(demo_encoder, cache=tmp_path)
    assert first.shape == (len(vocab), demo_encoder.embed_dim)
    assert len(list(tmp_path.glob("*.npy"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("the second call re-encoded the vocabulary")

    monkeypatch.setattr(demo_encoder, "encode_text", refuse)
    second = vocab.embed(demo_encoder, cache=tmp_path)
    assert np.array_equal(first, second)
    # another template is another cache entry
    monkeypatch.undo()
    templated = vocab.embed(demo_encoder, template="a photo of {}", cache=tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 2
    assert not np.allclose(templated, first)


def test_embedding_matches_direct_encoding(demo_encoder):
    vocab = Vocabulary(["red", "sand dune", "star"])
    assert np.allclose(vocab.embed(demo_encoder, cache=False), demo_encoder.encode_text(list(vocab)), atol=1e-6)


def test_splice_lists_are_downloaded_once_and_cached(monkeypatch, tmp_path):
    """The authors' lists are fetched at run time (never shipped) and read from the cache afterwards;
    their files are in ascending frequency, so 'top 10k' is the last lines, most frequent first."""
    import io
    import urllib.request

    from lance_concepts.concepts import vocabulary as V

    monkeypatch.setenv("LANCE_CONCEPTS_CACHE", str(tmp_path))
    monkeypatch.setitem(V.REMOTE_VOCABULARIES, "splice-laion-10k", (V._SPLICE_BASE + "laion.txt", 3))
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append(url)
        return io.BytesIO("rare\nmedium\ncommon\nvery common\n".encode())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    vocab = load_vocabulary("splice-laion-10k")
    assert list(vocab) == ["very common", "common", "medium"]
    assert load_vocabulary("splice-laion-10k").digest == vocab.digest
    assert len(calls) == 1 and calls[0].endswith("laion.txt")


def test_offline_download_is_a_clear_error(monkeypatch, tmp_path):
    import urllib.request

    monkeypatch.setenv("LANCE_CONCEPTS_CACHE", str(tmp_path))

    def offline(url, timeout=None):
        raise OSError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(VocabularyError, match="could not download.*vocab='/path/to/laion_bigrams.txt'"):
        load_vocabulary("splice-laion-bigrams")
