"""A hostile or careless config file (issue 10, item 6): aliases that expand to gigabytes, wrong nested types,
unhashable keys. Each ends in ConfigError listing every problem (exit 2 from the CLI), never a traceback, and
the config parser is fuzzed to show no input raises anything else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tvm_observability.aggregator.config import (
    AggregatorConfig,
    ConfigError,
    Limits,
    ReadAuth,
    TlsConfig,
    keys_of,
    load_config,
    parse_config,
    parse_yaml,
)
from tvm_observability.auth import hash_token

HASH = hash_token("a-token")
CLI = [sys.executable, "-m", "tvm_observability.aggregator.cli"]


def laughs(levels: int) -> str:
    """Nested aliases: a few hundred bytes that a YAML loader expands to 9**levels strings."""
    lines = ['l0: &l0 ["lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    lines.append(f"statuses: *l{levels}")
    return "\n".join(lines) + "\n"


def test_nested_aliases_are_refused_before_anything_expands() -> None:
    text = laughs(7)  # 9**7 = 4.8 million strings, ~33 MB as a repr
    assert len(text) < 500
    with pytest.raises(ConfigError) as info:
        parse_yaml(text)
    assert len(info.value.problems) == 1
    problem = info.value.problems[0]
    assert "anchors and aliases (&name, *name) are not allowed" in problem and "line 1" in problem
    assert len(str(info.value)) < 1000


def test_a_single_anchor_is_refused_too() -> None:
    with pytest.raises(ConfigError, match="anchors and aliases"):
        parse_yaml("log_level: &level info\n")


def test_check_config_refuses_the_laughs_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "laughs.yaml"
    path.write_text(laughs(7), encoding="utf-8")
    result = subprocess.run(
        [*CLI, "--config", str(path), "--check-config"], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "anchors and aliases" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr) < 1000


WRONG_NESTED = {
    "statuses: [[a]]": "statuses: names must match",
    "statuses: [{a: 1}, idle]": "statuses: names must match",
    "listen: {host: x}": "listen: must be HOST:PORT",
    "listen: [127.0.0.1, 9100]": "listen: must be HOST:PORT",
    "log_level: [info]": "log_level: must be one of",
    "log_level: {a: b}": "log_level: must be one of",
    "environment: [prod]": "environment: must be a non-empty string",
    "state_file: {a: 1}": "state_file: must be a path or null",
    "offline_after_s: [1]": "offline_after_s: must be a number >= 0.5",
    "auth_required: {}": "auth_required: must be true or false",
    "limits: {max_body_bytes: [1]}": "limits.max_body_bytes: must be an integer >= 256",
    "limits: [1]": "limits: must be a mapping",
    "vehicles: {V1: {token_sha256: [1]}}": "vehicles.V1.token_sha256: must be 64 lowercase hex",
    "vehicles: [V1]": "vehicles: must be a mapping",
    "vehicles: {V1: [a]}": "vehicles.V1: must be a mapping",
    "tls: {cert_file: [a], key_file: {b: 1}}": "tls.cert_file: must be the path of a PEM file",
    "read_auth: {basic_username: [a], basic_password_sha256: x}": "read_auth.basic_username: must be",
    "offline_after_s: 1e999": "offline_after_s: must be a number",
    "limits: {rate_limit_burst: 100000000000000000000000000000}": "limits.rate_limit_burst: must be an integer <=",
    'state_file: "a\\0b"': "state_file: must be a path or null",
    "? [a, b]\n: 1": "not valid YAML",
    "vehicles: {? {a: 1} : {}}": "not valid YAML",
    "listen: 2024-13-45": "not valid YAML",
}


@pytest.mark.parametrize(("text", "expected"), WRONG_NESTED.items(), ids=list(WRONG_NESTED))
def test_wrong_nested_types_are_listed_problems(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_yaml("auth_required: false\n" + text if not text.startswith("auth_required") else text)
    assert any(expected in p for p in info.value.problems), info.value.problems


def test_wrong_nested_types_give_exit_2_listing_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "nested.yaml"
    path.write_text(
        "auth_required: false\nstatuses: [[a]]\nlog_level: [info]\nlimits: {max_body_bytes: {x: 1}}\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        [*CLI, "--config", str(path), "--check-config"], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for key in ("statuses:", "log_level:", "limits.max_body_bytes:"):
        assert key in result.stderr


def test_a_file_that_is_not_utf8_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("environment: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(path)


def test_deep_nesting_is_a_problem_not_a_recursion_error() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_yaml("statuses: " + "[" * 5000 + "]" * 5000 + "\n")


# -- fuzz ------------------------------------------------------------------------------------------------


def _names(cls: Any) -> list[str]:
    return [f.name for f, _ in keys_of(cls)]


KEY_NAMES = sorted(
    {*_names(AggregatorConfig), *_names(Limits), *_names(TlsConfig), *_names(ReadAuth), "V1", "token_sha256"}
)
PLAUSIBLE = [HASH, "127.0.0.1:0", "0.0.0.0:9100", "[::1]:1", "idle", "info", "/dev/null", "V1", "", "a\0b"]
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**60)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=8)
    | st.sampled_from(PLAUSIBLE)
)
dict_keys = st.sampled_from(KEY_NAMES) | st.text(max_size=6) | st.integers() | st.booleans() | st.none()
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(dict_keys, children, max_size=4),
    max_leaves=16,
)
configs = st.dictionaries(dict_keys, values, max_size=8)


def _only_config_errors(parse: Any, *args: Any) -> None:
    try:
        result = parse(*args)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) for p in exc.problems)
        assert len(str(exc)) < 200_000
    else:
        assert isinstance(result, AggregatorConfig)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_fuzz_decoded_configs_raise_only_config_error(data: dict[Any, Any]) -> None:
    _only_config_errors(parse_config, data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_fuzz_yaml_of_any_structure_raises_only_config_error(data: dict[Any, Any]) -> None:
    _only_config_errors(parse_yaml, yaml.safe_dump(data, allow_unicode=True))


YAML_ALPHABET = st.sampled_from(list("{}[]:,-?&*!|>'\"#%@` \n\t\\0aV1.e") + KEY_NAMES + ["!!set ", "!!binary ", "<<"])


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(YAML_ALPHABET, max_size=60).map("".join) | st.text(max_size=80))
def test_fuzz_yaml_text_raises_only_config_error(text: str) -> None:
    _only_config_errors(parse_yaml, text)


@pytest.mark.parametrize(
    "text",
    [
        "offline_after_s: !!int x\n",
        "environment: !!timestamp \n",
        "statuses: !!set {a}\n",
        "log_level: !!python/name:os.system\n",
        "vehicles: !custom {}\n",
    ],
)
def test_explicit_tags_are_refused(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_yaml(text)
    assert len(info.value.problems) == 1 and "tags (" in info.value.problems[0]
