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

# Model
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM  # noqa: E402

from .generation_music_xl import MaxBarsCriteria, MusicGrammarProcessor  # noqa: E402
from .modeling_music_xl import MusicXLCache, MusicXLForCausalLM, MusicXLModel  # noqa: E402

AutoConfig.register("music_xl", MusicXLConfig, exist_ok=True)
AutoModel.register(MusicXLConfig, MusicXLModel, exist_ok=True)
AutoModelForCausalLM.register(MusicXLConfig, MusicXLForCausalLM, exist_ok=True)
# save_pretrained writes the modeling code and `auto_map`, so trust_remote_code loads without this package
MusicXLConfig.register_for_auto_class()
MusicXLModel.register_for_auto_class("AutoModel")
MusicXLForCausalLM.register_for_auto_class("AutoModelForCausalLM")
