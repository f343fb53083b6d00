import pytest

from spdy_tui.names import elide_middle, legend, short_form, short_names

MINILM_BLOCK = [
    "encoder.layer.0.attention.self.query",
    "encoder.layer.0.attention.self.key",
    "encoder.layer.0.attention.self.value",
    "encoder.layer.0.attention.output.dense",
    "encoder.layer.0.intermediate.dense",
    "encoder.layer.0.output.dense",
]


def test_a_bert_block_gets_its_roles():
    assert short_names(MINILM_BLOCK) == ["L0.attn.q", "L0.attn.k", "L0.attn.v", "L0.attn.out", "L0.ffn.in", "L0.ffn.out"]
    assert short_form("encoder.layer.11.attention.self.query") == "L11.attn.q"


def test_decoder_spellings_and_unknown_parts_of_a_block():
    assert short_form("model.layers.3.self_attn.o_proj") == "L3.attn.out"
    assert short_form("model.layers.3.mlp.down_proj") == "L3.ffn.down"
    assert short_form("transformer.h.2.attn.c_attn") == "L2.attn.c_attn"


def test_conv_net_names_stay_as_they_are():
    names = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.downsample.0", "fc"]
    assert short_names(names) == names
    assert legend(names) == ""


def test_long_names_are_elided_in_the_middle_with_the_tail_favoured():
    assert elide_middle("abcdefghij", 6) == "ab…hij"
    assert elide_middle("abcdefghij", 10) == "abcdefghij"
    assert elide_middle("abcdefghij", 1) == "…"
    assert short_form("backbone.stage4.block7.depthwise.pointwise_conv", 20) == "backbone.…twise_conv"
    with pytest.raises(ValueError):
        elide_middle("abc", 0)


def test_colliding_short_forms_fall_back_to_middle_elision():
    names = ["encoder.layer.0.output.dense", "decoder.layer.0.output.dense", "fc"]
    assert short_form(names[0]) == short_form(names[1]) == "L0.ffn.out"
    assert short_names(names, 20) == ["encoder.l…tput.dense", "decoder.l…tput.dense", "fc"]


def test_names_that_still_collide_are_shown_in_full():
    names = ["a.very.long.prefix.one.same.tail.x", "a.very.long.prefix.two.same.tail.x"]
    assert short_names(names, 12) == names
    assert legend(MINILM_BLOCK[:2]) == "L0.attn.q = encoder.layer.0.attention.self.query\nL0.attn.k = encoder.layer.0.attention.self.key"
