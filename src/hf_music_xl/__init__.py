"""hf_music_xl: a TransformerXL music language model as a Hugging Face citizen."""

__version__ = "0.1.0"
