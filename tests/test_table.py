import json

import pytest

from engine.timing.table import TableError, TimingTable, load_table, save_table

from .conftest import TABLES

EXPECTED_LAYERS = {
    "rn18_unstr": 21, "rn34_unstr": 37, "rn50_unstr": 54, "rn101_unstr": 105, "2rn50_unstr": 54,
    "rn50_4block": 52, "yolov5s_unstr": 60, "yolov5m_unstr": 82,
}


def test_all_eight_shipped_tables_load(shipped_tables):
    assert {name: len(t.layers) for name, t in shipped_tables.items()} == EXPECTED_LAYERS


def test_first_entries_and_headers_read_exactly(shipped_tables):
    table = shipped_tables["rn50_unstr"]
    assert table.base == 0.45038264 and table.prunable == 0.44644355
    conv1 = table.layer("conv1")
    assert conv1.levels[:2] == ("0.0000", "0.4000") and conv1.seconds[:2] == (0.013860, 0.014522)


def test_quirks(shipped_tables):
    block = shipped_tables["rn50_4block"]
    assert not any(name.endswith(".weight") for name in block.names)  # header-only layers dropped
    assert sum("no entries" in w for w in block.warnings) == 52
    yolo_m = shipped_tables["yolov5m_unstr"]
    layer = yolo_m.layer("model.8.m.0.cv2.conv")
    assert len(layer.levels) == 41 and "0.9900" not in layer.levels  # a level missing for one layer
    assert layer.seconds_at("0.0000") == 0.024301  # listed twice: the later value is kept
    assert any("listed twice" in w for w in yolo_m.warnings)
    rn50 = shipped_tables["rn50_unstr"]  # non-monotone times are kept as measured
    assert any(b > a for layer in rn50.layers for a, b in zip(layer.seconds[1:], layer.seconds[2:]))


@pytest.mark.parametrize("fmt", ["json", "spdy-txt"])
def test_round_trip_every_shipped_table(shipped_tables, tmp_path, fmt):
    for name, table in shipped_tables.items():
        path = tmp_path / f"{name}.{fmt}"
        save_table(table, path, fmt)
        again = load_table(path)
        assert again.base == table.base and again.prunable == table.prunable, name
        assert again.layers == table.layers, name


def test_json_carries_metadata(tmp_path):
    layer = load_table(TABLES / "rn18_unstr.txt").layers[0]
    table = TimingTable(1.0, layer.dense_seconds, [layer], backend="cpu", dense_baseline="onednn", environment={"cpu": "x"})
    save_table(table, tmp_path / "t.json")
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["format"] == "spdy-tui/timings" and data["version"] == 1 and data["unit"] == "s"
    again = load_table(tmp_path / "t.json")
    assert again.dense_baseline == "onednn" and again.environment == {"cpu": "x"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("base\n1.0\nprunable\n0.5\nconv1\n0.1 0.0000\n0.x 0.4000\n", ":7: expected seconds"),
        ("base\n1.0\nprunable\n0.5\nconv1\n0.1 0.0000 extra\n", ":6: expected '<seconds> <level>'"),
        ("base\n1.0\nconv1\n0.1 0.0000\n", "missing the 'prunable' header"),
        ("base\n1.0\nprunable\n0.5\n", "lists no layer"),
        ("base\n1.0\nprunable\n0.5\n0.1 0.0000\n", ":5: entry"),
        ("base\n1.0\nprunable\n0.5\nconv1\n0.1 1.5\n", ":6: sparsity level"),
    ],
)
def test_malformed_tables_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(TableError, match="bad.txt") as info:
        load_table(path)
    assert message in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(TableError, match="no such timing table"):
        load_table(tmp_path / "absent.txt")


def test_subset_moves_dropped_dense_time_into_the_overhead(shipped_tables):
    table = shipped_tables["rn18_unstr"]
    keep = table.names[1:-1]
    part = table.subset(keep)
    assert part.names == keep and part.base == table.base
    dropped = table.layers[0].dense_seconds + table.layers[-1].dense_seconds
    assert abs(part.overhead - (table.overhead + dropped)) < 1e-12
    levels = ["0.0000"] * len(keep)
    assert abs(part.predicted_time(levels) - table.predicted_time(["0.0000"] * len(table.names))) < 1e-12


def test_layer_notes_round_trip_and_stay_optional(tmp_path):
    """A layer's note (e.g. why it has only its dense level) is an optional key of its JSON entry."""
    from engine.timing.table import LayerTimes

    layers = [
        LayerTimes("fc1", ("0.0000", "2:4"), (2.0, 1.5), "2:4 kernel: cusparselt alg 3"),
        LayerTimes("conv", ("0.0000",), (1.0,), "dense only: Conv2d"),
        LayerTimes("fc2", ("0.0000", "2:4"), (1.0, 1.2)),
    ]
    table = TimingTable(5.0, 4.0, layers, backend="cuda-2:4")
    save_table(table, tmp_path / "t.json")
    data = json.loads((tmp_path / "t.json").read_text())
    assert [entry.get("note") for entry in data["layers"]] == ["2:4 kernel: cusparselt alg 3", "dense only: Conv2d", None]
    assert load_table(tmp_path / "t.json").layers == layers
    for entry in data["layers"]:
        entry.pop("note", None)  # a table written before notes existed
    assert [layer.note for layer in TimingTable.from_json(data).layers] == ["", "", ""]
    save_table(table, tmp_path / "t.txt", "spdy-txt")  # the original format has no place for notes
    assert [layer.levels for layer in load_table(tmp_path / "t.txt").layers] == [layer.levels for layer in layers]
