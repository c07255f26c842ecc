"""transformers' own conformance tests for a model: `ModelTesterMixin` and `ConfigTester` from the source distribution
of the installed transformers (see tests/transformers_common.py), on a tiny dense and a tiny MoE MiniMind.

These are the checks every model in transformers passes (save / load, output contracts, attention backends, masks,
caches under both names, router logits, resizing embeddings, initialisation, ...), run at whatever version is
installed, so a conformance break shows here, not at a user's. The few that cannot apply are skipped by name below,
each with its reason.
"""

import unittest

from transformers.models.auto import modeling_auto

from minimind_hf import MiniMindConfig, MiniMindForCausalLM, MiniMindForSequenceClassification, MiniMindModel
from tests.transformers_common import load

ModelTesterMixin, ConfigTester, ids_tensor, random_attention_mask = load()

# transformers' tester shape: tiny and fast (vocab 99, hidden 32, 2 layers, 4 query / 2 key-value heads of 8).
SHAPE = {
    "vocab_size": 99,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}
MOE = {"num_experts": 4, "num_experts_per_tok": 2, "num_shared_experts": 1, "moe_intermediate_size": 16}

SKIPS = {
    # The sdist ships no tests/generation/; generate is tested in tests/test_modeling.py (cached == uncached, greedy
    # and sampled, left-padded batches) and tests/test_chat.py.
    "test_generation_tester_mixin_inheritance": "the generation tester is not in transformers' sdist",
}


class MiniMindModelTester:
    """What `ModelTesterMixin` asks of a model tester: the shape, a config and its inputs."""

    def __init__(self, parent, moe: bool, batch_size: int = 2, seq_length: int = 7):
        self.parent = parent
        self.moe = moe
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.is_training = True
        self.vocab_size = SHAPE["vocab_size"]
        self.hidden_size = SHAPE["hidden_size"]
        self.num_hidden_layers = SHAPE["num_hidden_layers"]
        self.num_attention_heads = SHAPE["num_attention_heads"]

    def get_config(self) -> MiniMindConfig:
        return MiniMindConfig(**SHAPE, **(MOE if self.moe else {}))

    def prepare_config_and_inputs_for_common(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        attention_mask = random_attention_mask([self.batch_size, self.seq_length])
        return self.get_config(), {"input_ids": input_ids, "attention_mask": attention_mask}


# The mixin decides which classes are backbones, causal LMs and classifiers (which labels to give, which outputs to
# expect) from transformers' name tables, where a model inside transformers is listed; a registered plugin is not.
# While the tests run, MiniMind is listed there too.
NAME_TABLES = {
    "MODEL_MAPPING_NAMES": "MiniMindModel",
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES": "MiniMindForCausalLM",
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES": "MiniMindForSequenceClassification",
}


class MiniMindCommonTests(ModelTesterMixin):
    all_model_classes = (MiniMindModel, MiniMindForCausalLM, MiniMindForSequenceClassification)
    moe = False

    @classmethod
    def setUpClass(cls):
        for table, name in NAME_TABLES.items():
            getattr(modeling_auto, table)["minimind"] = name

    @classmethod
    def tearDownClass(cls):
        for table in NAME_TABLES:
            getattr(modeling_auto, table).pop("minimind", None)

    def setUp(self):
        skip = SKIPS.get(self._testMethodName)
        if skip:
            self.skipTest(skip)
        self.model_tester = MiniMindModelTester(self, moe=self.moe)
        self.config_tester = ConfigTester(self, config_class=MiniMindConfig, **SHAPE)

    def test_config(self):
        self.config_tester.run_common_tests()


class TestMiniMindDense(MiniMindCommonTests, unittest.TestCase):
    moe = False


class TestMiniMindMoE(MiniMindCommonTests, unittest.TestCase):
    moe = True
    # transformers' own MoE testers say the same: with top-k routing on a few tokens, some experts get no token and
    # no gradient in a step.
    test_all_params_have_gradient = False


def test_the_common_tests_ran():
    """The mixin is the real one (hundreds of tests), not an empty stand-in."""
    names = [name for name in dir(ModelTesterMixin) if name.startswith("test_")]
    assert len(names) > 100, names
    assert {"test_training", "test_save_load", "test_attention_outputs", "test_eager_matches_sdpa_inference"} <= {
        name.split("_0")[0] for name in names
    }, names
