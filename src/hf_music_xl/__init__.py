"""hf_music_xl: a TransformerXL music language model as a Hugging Face citizen.

Importing the package registers its classes with the transformers Auto classes, so saved tokenizers and models
load with `AutoTokenizer` / `AutoModelForCausalLM` without `trust_remote_code`; and it marks them for
`save_pretrained` to write their code and `auto_map`, so the saved directories also load where this package is
not installed (`trust_remote_code=True`). It also registers the `music-generation` pipeline (`MusicXLPipeline`).
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
from transformers.pipelines import PIPELINE_REGISTRY

from .models.music_xl.cache_music_xl import MusicXLCache
from .models.music_xl.configuration_music_xl import MusicXLConfig
from .models.music_xl.encoding import InvalidTokenError, MidiReadError
from .models.music_xl.generation_music_xl import MaxBarsCriteria, MusicGrammarProcessor
from .models.music_xl.modeling_music_xl import MusicXLForCausalLM, MusicXLModel
from .models.music_xl.pipeline_music_xl import TASK as PIPELINE_TASK
from .models.music_xl.pipeline_music_xl import MusicXLPipeline
from .models.music_xl.tokenization_music_xl import MusicXLTokenizer
from .models.music_xl.tokenization_music_xl_fast import MusicXLTokenizerFast

__version__ = "0.1.0"

AutoConfig.register("music_xl", MusicXLConfig, exist_ok=True)
AutoModel.register(MusicXLConfig, MusicXLModel, exist_ok=True)
AutoModelForCausalLM.register(MusicXLConfig, MusicXLForCausalLM, exist_ok=True)
# A slow and fast pair: AutoTokenizer then picks the fast one.
AutoTokenizer.register(
    MusicXLConfig, slow_tokenizer_class=MusicXLTokenizer, fast_tokenizer_class=MusicXLTokenizerFast, exist_ok=True
)

MusicXLConfig.register_for_auto_class()
MusicXLModel.register_for_auto_class("AutoModel")
MusicXLForCausalLM.register_for_auto_class("AutoModelForCausalLM")
MusicXLTokenizer.register_for_auto_class("AutoTokenizer")
MusicXLTokenizerFast.register_for_auto_class("AutoTokenizer")
# pipeline("music-generation", model=...) with the package; MusicXLPipeline(model, tokenizer).save_pretrained(dir)
# also writes config.json's custom_pipelines and pipeline_music_xl.py, so that pipeline(model=dir,
# trust_remote_code=True) works without it.
PIPELINE_REGISTRY.register_pipeline(PIPELINE_TASK, pipeline_class=MusicXLPipeline, pt_model=AutoModelForCausalLM)

__all__ = [
    "InvalidTokenError",
    "MaxBarsCriteria",
    "MidiReadError",
    "MusicGrammarProcessor",
    "MusicXLCache",
    "MusicXLConfig",
    "MusicXLForCausalLM",
    "MusicXLModel",
    "MusicXLPipeline",
    "PIPELINE_TASK",
    "MusicXLTokenizer",
    "MusicXLTokenizerFast",
]
