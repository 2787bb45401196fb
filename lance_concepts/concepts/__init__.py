"""Concept methods that need no database: the vocabulary, the one concept-name resolver, SpLiCE, FALCON, GradCAM."""
