"""A local web explorer over a lance-concepts database (``lance-concepts serve``).

Downstream of :mod:`lance_concepts.query` and :mod:`lance_concepts.retrieval`: every page is a view
of what those modules already compute (the where-language, the search planner, drift, spurious, the
named queries); this room only adds HTTP, thumbnails and the read-only SQL guard.
"""
