"""The procedurally drawn demo world and the ``lance-concepts demo`` job built on it."""
