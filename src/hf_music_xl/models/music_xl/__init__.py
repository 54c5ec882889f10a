"""MusicXL, exactly the files saved next to its weights for ``trust_remote_code`` loading.

Every file here may import only torch, transformers, numpy, symusic and its sibling files (relative imports), and
does nothing at import time beyond defining things (``tests/test_safety.py`` checks both): a model directory holds
copies of them, flat, and runs them where this package is not installed. Nothing here imports from outside this
folder; the rest of the package (data, training, hub, the commands) builds on it.
"""
