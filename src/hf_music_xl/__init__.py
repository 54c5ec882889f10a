"""hf_music_xl: a TransformerXL music language model as a Hugging Face citizen.

Importing the package registers its classes with the transformers Auto classes, so saved tokenizers and models
load with `AutoTokenizer` / `AutoModelForCausalLM` without `trust_remote_code`.
"""

from transformers import AutoTokenizer

from .configuration_music_xl import MusicXLConfig
from .encoding import InvalidTokenError, MidiReadError
from .tokenization_music_xl import MusicXLTokenizer
from .tokenization_music_xl_fast import MusicXLTokenizerFast

__version__ = "0.1.0"

# Tokenizer (the model's classes register below theirs). A slow and fast pair makes AutoTokenizer pick the fast one.
AutoTokenizer.register(
    MusicXLConfig, slow_tokenizer_class=MusicXLTokenizer, fast_tokenizer_class=MusicXLTokenizerFast, exist_ok=True
)
