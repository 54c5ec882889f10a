"""Corpora and training examples: build and cache encoded corpora (``corpus``, with ``music21_source`` for the
music21 package's pieces), deal whole pieces to streams for stream training (``streams``), draw random windows
(``windows``) and whole pieces for evaluation (``pieces``)."""
