"""transformers' own common tests (ModelTesterMixin, ConfigTester) run against MusicXLModel / MusicXLForCausalLM, as
for a model added to the library. The mixins come from the source distribution of the installed transformers
(``transformers_common.py``); only the tester below is ours. Skipped, with the reason, where that distribution
cannot be downloaded."""

import unittest

import pytest
import torch
from helpers import BOS, PAD
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_MAPPING_NAMES
from transformers_common import common_tests_package

from hf_music_xl import MusicXLConfig, MusicXLForCausalLM, MusicXLModel

try:
    modeling_common, configuration_common = common_tests_package()
except Exception as error:  # noqa: BLE001 - no network to the registry, no sdist: say so and skip
    pytest.skip(f"transformers' common tests are not available: {error}", allow_module_level=True)

ModelTesterMixin, ConfigTester = modeling_common.ModelTesterMixin, configuration_common.ConfigTester

# Listed as a model added to the library would be: the mixin reads these to know the base model (no loss to train)
# from the causal LM (labels to add).
MODEL_MAPPING_NAMES.setdefault("music_xl", "MusicXLModel")
MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.setdefault("music_xl", "MusicXLForCausalLM")


class MusicXLModelTester:
    """Tiny dims and grammatical inputs (`xxbos xxpad` then note/duration pairs), as the GPT-2 tester does for its
    model. A sequence of 7 tokens fits one segment and the memory, so every token sees every earlier one."""

    def __init__(self, parent, batch_size=3, seq_length=7, is_training=True):
        self.parent = parent
        self.batch_size, self.seq_length, self.is_training = batch_size, seq_length, is_training
        self.vocab_size = 299
        self.hidden_size, self.num_hidden_layers, self.num_attention_heads = 32, 2, 4

    def get_config(self):
        return MusicXLConfig(
            d_model=self.hidden_size,
            n_layer=self.num_hidden_layers,
            n_head=self.num_attention_heads,
            d_inner=37,
            segment_len=16,
            mem_len=16,
            dropout=0.1,
            mask_p=0.0,
        )

    def prepare_config_and_inputs(self):
        generator = torch.Generator().manual_seed(0)
        pairs = (self.seq_length - 1) // 2 + 1
        notes = torch.randint(9 + 40, 9 + 90, (self.batch_size, pairs), generator=generator)
        durations = torch.randint(137 + 1, 137 + 17, (self.batch_size, pairs), generator=generator)
        body = torch.stack([notes, durations], dim=2).view(self.batch_size, -1)
        input_ids = torch.cat([torch.tensor([[BOS, PAD]]).expand(self.batch_size, 2), body], dim=1)[
            :, : self.seq_length
        ]
        attention_mask = torch.ones_like(input_ids)
        return self.get_config(), input_ids, attention_mask

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, attention_mask = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": attention_mask}


class MusicXLModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (MusicXLModel, MusicXLForCausalLM)
    test_resize_embeddings = False  # the vocabulary is the encoding's: a note or duration id has one meaning
    test_torch_exportable = False  # the memory is a Python object updated in place (generation's cache)

    def setUp(self):
        self.model_tester = MusicXLModelTester(self)
        self.config_tester = ConfigTester(self, config_class=MusicXLConfig, d_model=32, n_head=4)

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip(
        "the generation mixin is not in transformers' source distribution; tests/test_generation.py covers it"
    )
    def test_generation_tester_mixin_inheritance(self):
        pass

    @unittest.skip("positions come from the token ids (beat positions), so there is no inputs_embeds path")
    def test_inputs_embeds(self):
        pass

    @unittest.skip("positions come from the token ids (beat positions), so there is no inputs_embeds path")
    def test_inputs_embeds_matches_input_ids(self):
        pass
