"""Configuration: typed, validated on load, one-line errors naming the key."""
import pytest

from flows.config import ConfigError, load_config, sample_config_path, parse_config


def _write(tmp_path, text):
    path = tmp_path / "build.toml"
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """
name = "test"
[[sources]]
name = "books"
kind = "files"
path = "books"
format = "book"
category = "books"

[sample]
weights = { web = 10 }
sft_epochs = 2
shard_rows = 50
seed = 7

[engine]
kind = "local"
workers = 1
"""


def test_good_config_loads_with_defaults_and_relative_paths(tmp_path):
    (tmp_path / "books").mkdir()
    config = load_config(_write(tmp_path, GOOD))
    assert config.sources[0].path == (tmp_path / "books").resolve()
    assert config.sample.weights == {"web": 10, "literature": 16, "encyclopedia": 8, "books": 4, "sft": 1}
    assert config.sample.sft_epochs == 2
    assert config.convert.backend == "template"
    assert config.section("validate")["fail_on_error"] is True


@pytest.mark.parametrize(
    "text, message",
    [
        (GOOD + "\n[clean]\nmin_charz = 3\n", "unknown key 'clean.min_charz'"),
        (GOOD + "\n[select]\nmin_char = 3\n", "unknown key 'select.min_char' (did you mean 'min_chars'?)"),
        (GOOD + "\n[operations.llm]\nslotz = 2\n", "unknown key 'operations.llm.slotz' (did you mean 'slots'?)"),
        (GOOD.replace('category = "books"', 'category = "books"\nformt = "book"'), "unknown key 'sources.0.formt' (did you mean 'format'?)"),
        (GOOD.replace('category = "books"', 'catagory = "books"'), "unknown key 'sources.0.catagory' (did you mean 'category'?)"),
        (GOOD.replace('category = "books"', 'category = "novels"'), "sources.0.category"),
        (GOOD.replace("sft_epochs = 2", "sft_epochs = 0"), "sample.sft_epochs"),
        (GOOD.replace("weights = { web = 10 }", "weights = { blogs = 10 }"), "unknown category 'blogs'"),
        (GOOD + "\n[convert]\nbackend = \"openai\"\n", "convert: the openai backend needs base_url and model"),
        (GOOD.replace('kind = "files"', 'kind = "crawl"'), "a crawl source needs start_urls"),
        (GOOD + "\n[[sources]]\nname = \"books\"\nkind = \"files\"\npath = \"x\"\ncategory = \"web\"\n", "source names must be unique"),
        ("name = [unclosed", "not valid TOML"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, text))
    assert message in str(caught.value)


def test_unknown_key_without_a_near_spelling_suggests_nothing(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, GOOD + "\n[select]\nbanana = 3\n"))
    assert str(caught.value).endswith("unknown key 'select.banana'")
    assert "\n" not in str(caught.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_embedded_sample_config_loads():
    config = load_config(sample_config_path())
    kinds = {source.kind for source in config.sources}
    assert {"crawl", "files", "dataset"} <= kinds
    for source in config.sources:
        if source.path is not None:
            assert source.path.exists(), source.path


def test_parse_config_keeps_secrets_out(tmp_path):
    config = parse_config('[convert]\nbackend = "openai"\nbase_url = "http://127.0.0.1:1/v1"\nmodel = "m"\n', tmp_path)
    assert config.convert.api_key_env == "OPENAI_API_KEY"
    assert "api_key" not in config.section("convert")
