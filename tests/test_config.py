from pathlib import Path

import pytest

from engine.core.profile import ProfileError, from_dict, load_profile
from engine.core.profile_toml import describe, to_toml

PROFILES = sorted((Path(__file__).parent.parent / "profiles").glob("*.toml"))


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_shipped_profiles_are_valid(path):
    profile = load_profile(path)
    assert profile.run.name == path.stem


def test_defaults():
    profile = from_dict({})
    assert profile.search.target == 1.5 and profile.search.buckets == 10_000
    assert profile.database.method == "obs" and len(profile.levels()) == 42
    assert from_dict({"grid": {"pattern": "nm"}}).levels() == ["0.0000", "2:4"]


@pytest.mark.parametrize(
    "data, message",
    [
        ({"serch": {}}, "unknown section [serch]"),
        ({"search": {"targett": 2}}, "unknown key 'search.targett'"),
        ({"search": {"target": "2x"}}, "key 'search.target' must be a number"),
        ({"search": {"target": 0.9}}, "key 'search.target' must be >= 1.0"),
        ({"search": {"workers": 1.5}}, "key 'search.workers' must be an integer"),
        ({"search": {"early_abandon": 1}}, "key 'search.early_abandon' must be true or false"),
        ({"search": {"skip": "fc"}}, "key 'search.skip' must be a list of strings"),
        ({"model": {"source": "bert"}}, "key 'model.source' must be one of"),
        ({"model": {"source": "hf"}}, "needs key 'model.path'"),
        ({"grid": {"min_sparsity": 0.9, "max_sparsity": 0.5}}, "exceeds 'grid.max_sparsity'"),
        ({"hardware": {"backend": "cuda-2:4"}}, "needs grid.pattern = 'nm'"),
        ({"hardware": {"backend": "cuda-2:4", "dtype": "float16"}, "grid": {"pattern": "nm", "n": 4, "m": 8}}, "runs 2:4 only"),
        ({"hardware": {"backend": "cuda-2:4", "dtype": "float16"}, "grid": {"pattern": "nm", "include_dense": False}}, "grid.include_dense = true"),
        ({"hardware": {"backend": "cuda-2:4"}, "grid": {"pattern": "nm"}}, "needs hardware.dtype 'float16' or 'bfloat16'"),
        ({"search": {"baselines": ["best"]}}, "unknown names"),
        ({"run": []}, "[run] must be a table"),
    ],
)
def test_bad_values_name_file_and_key(data, message):
    with pytest.raises(ProfileError) as info:
        from_dict(data, "my.toml")
    assert str(info.value).startswith("my.toml: ") and message in str(info.value)


def test_load_errors(tmp_path):
    with pytest.raises(ProfileError, match="no such profile"):
        load_profile(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[search\ntarget = 2")
    with pytest.raises(ProfileError, match="bad.toml: invalid TOML"):
        load_profile(bad)


def test_relative_paths_resolve_against_the_profile(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[hardware]\ntimings = "tables/t.txt"\n')
    assert load_profile(path).hardware.timings == str(tmp_path / "tables" / "t.txt")


def test_resolved_toml_round_trips(tmp_path):
    profile = from_dict({"search": {"target": 2.0, "skip": ["a.*"]}, "run": {"name": 'q"x'}})
    path = tmp_path / "again.toml"
    path.write_text(to_toml(profile))
    assert load_profile(path).to_dict() == profile.to_dict()


def test_every_key_is_documented():
    docs = (Path(__file__).parent.parent / "docs" / "profiles.md").read_text()
    for key, _default, _allowed, doc in describe():
        assert doc, key
        assert f"`{key}`" in docs, f"{key} missing from docs/profiles.md"


def test_former_key_names_still_load_with_a_note():
    profile = from_dict({"model": {"kind": "digits"}, "grid": {"kind": "nm"}}, "old.toml")
    assert profile.model.source == "digits" and profile.grid.pattern == "nm"
    assert profile.notes == (
        "old.toml: key 'model.kind' is now called 'model.source'; the old name still works",
        "old.toml: key 'grid.kind' is now called 'grid.pattern'; the old name still works",
    )
    assert from_dict({"model": {"source": "digits"}}).notes == ()
    with pytest.raises(ProfileError, match="keys 'model.kind' and 'model.source' are the same key"):
        from_dict({"model": {"kind": "digits", "source": "minilm"}}, "both.toml")
