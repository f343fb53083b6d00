import pytest

from engine.core.grid import geometric_levels, level_sparsity, nm_levels, parse_nm, sort_levels

ORIGINAL_42 = (
    "0.0000 0.4000 0.4584 0.5111 0.5586 0.6016 0.6403 0.6753 0.7069 0.7354 0.7612 0.7844 0.8054 0.8243 "
    "0.8414 0.8568 0.8708 0.8833 0.8947 0.9049 0.9142 0.9225 0.9301 0.9369 0.9430 0.9486 0.9536 0.9581 "
    "0.9622 0.9658 0.9692 0.9722 0.9749 0.9773 0.9795 0.9815 0.9833 0.9849 0.9864 0.9877 0.9889 0.9900"
).split()


def test_default_grid_is_the_original_42_levels():
    assert geometric_levels() == ORIGINAL_42


def test_grid_matches_every_shipped_unstructured_table(shipped_tables):
    for name, table in shipped_tables.items():
        if "unstr" in name:
            for layer in table.layers:
                assert set(layer.levels) <= set(ORIGINAL_42), (name, layer.name)


def test_block_grid_endpoints():
    levels = geometric_levels(0.4, 0.935, 40)
    assert levels[:3] == ["0.0000", "0.4000", "0.4324"] and levels[-1] == "0.9350" and len(levels) == 42


def test_configurable_grid():
    assert geometric_levels(0.5, 0.9, 2, include_dense=False) == ["0.5000", "0.7764", "0.9000"]
    with pytest.raises(ValueError):
        geometric_levels(0.9, 0.5, 4)


def test_nm_levels():
    assert nm_levels() == ["0.0000", "2:4"]
    assert parse_nm("4:8").sparsity == 0.5 and parse_nm("0.5") is None
    assert level_sparsity("2:4") == 0.5 and level_sparsity("0.9000") == 0.9
    assert sort_levels(["0.9000", "2:4", "0.0000"]) == ["0.0000", "2:4", "0.9000"]
    with pytest.raises(ValueError):
        parse_nm("4:2")
