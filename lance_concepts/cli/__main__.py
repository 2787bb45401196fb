"""``python -m lance_concepts.cli`` runs the same command line as ``lance-concepts``."""
from . import main

main()
