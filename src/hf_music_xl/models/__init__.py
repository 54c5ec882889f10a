"""The models this package defines, one folder each, as transformers keeps them (``models/<name>/``)."""
