"""Vector search with concept filters and concept editing: the where-language, indexes, the table handle, the
searcher, embedding edits and the plain-LanceDB registration."""
