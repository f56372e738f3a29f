"""Config decoding and the path-precise errors `gateway check-config` prints."""
import subprocess
import sys

import pytest

from gateway.config import ConfigError, load_config, parse_config, with_overrides
from tests.harness import ROOT

GOOD = """
[tiers.standard]
rate_per_minute = 80
burst = 40

[[workspaces]]
name = "default"
default_sender = "+15550000001"

[[senders]]
number = "+15550000001"
tier = "standard"
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return info.value.problems


def test_embedded_default_config_is_valid():
    cfg = load_config(f"{ROOT}/configs/gateway.toml")
    assert cfg.server.listen == "127.0.0.1:8080"
    assert cfg.store.data_dir == "./var"
    assert cfg.network.mode == "embedded"


def test_sender_rate_comes_from_its_tier_unless_given():
    cfg = parse_config(GOOD + '\n[[senders]]\nnumber = "+15550000002"\ntier = "standard"\nrate_per_minute = 5\n')
    assert cfg.sender_rate(cfg.senders[0]) == (80, 40)
    assert cfg.sender_rate(cfg.senders[1]) == (5, 40)


def test_bad_rate_is_reported_with_its_exact_path():
    text = GOOD + "".join(
        f'\n[[senders]]\nnumber = "+1555000000{i}"\nrate_per_minute = {r}\n' for i, r in ((2, 5), (3, 0))
    )
    assert problems(text) == ["senders[2].rate_per_minute: expected int >= 1"]


def test_unknown_tier_and_workspace_are_both_reported():
    text = GOOD + '\n[[senders]]\nnumber = "+15550000002"\ntier = "gold"\nworkspace = "nope"\n'
    found = problems(text)
    assert "senders[1].tier: unknown tier 'gold' (tiers: standard)" in found
    assert "senders[1].workspace: unknown workspace 'nope'" in found


def test_duplicate_sender_number_is_refused():
    text = GOOD + '\n[[senders]]\nnumber = "+15550000001"\ntier = "standard"\n'
    assert problems(text) == ["senders[1].number: duplicate of senders[0]"]


def test_unknown_key_is_refused_with_its_path():
    assert problems(GOOD + "\n[server]\nlisten_addr = 1\n") == ["server: object contains unknown field listen_addr"]


def test_default_sender_must_belong_to_the_workspace():
    text = GOOD.replace('default_sender = "+15550000001"', 'default_sender = "+15559999999"')
    assert problems(text) == [
        "workspaces[0].default_sender: +15559999999 is not a sender of workspace 'default'"
    ]


def test_rates_and_bursts_are_bounded_so_they_fit_the_store():
    text = GOOD.replace("rate_per_minute = 80", "rate_per_minute = 1180591620717411303424")
    assert problems(text) == ["tiers.standard.rate_per_minute: expected int <= 1000000000"]


@pytest.mark.parametrize("listen", ["nope", "127.0.0.1:99999", "127.0.0.1:", ":8080", "127.0.0.1:８０"])
def test_server_listen_must_be_host_and_a_port_up_to_65535(listen):
    problem, = problems(GOOD + f'\n[server]\nlisten = "{listen}"\n')
    assert problem.startswith("server.listen: expected HOST:PORT")


@pytest.mark.parametrize("url,said", [("http://127.0.0.1:99999/h", "Port out of range"), ("http://[::1/h", "IPv6"),
                                      ("http://127.0.0.1:x/h", "Port could not be cast"), ("http://:80/h", "no host"),
                                      ("http://127.0.0.1:0/h", "port 0")])
def test_a_webhook_url_the_client_could_not_connect_to_is_refused(url, said):
    text = GOOD + f'[[workspaces.webhooks]]\nurl = "{url}?token=SECRET1"\nsecret_env = "HOOK_SECRET"\n'
    problem, = problems(text)
    assert problem.startswith("workspaces[0].webhooks[0].url: ") and said in problem
    assert "SECRET1" not in problem and "/h" not in problem  # a path or query may hold a token


def test_one_url_is_one_endpoint_of_a_workspace():
    hook = '[[workspaces.webhooks]]\nurl = "http://127.0.0.1:9/h?t=1"\nsecret_env = "HOOK_SECRET"\nevents = ["{}"]\n'
    text = GOOD + hook.format("message.status") + hook.format("message.received")
    problem, = problems(text)
    assert problem.startswith("workspaces[0].webhooks[1].url: the same URL as webhooks[0]")


@pytest.mark.parametrize("url", ["tcp://127.0.0.1:99999", "tcp://127.0.0.1:0"])
def test_a_network_url_the_link_would_refuse_at_start_is_a_config_problem(url):
    problem, = problems(GOOD + f'\n[network]\nmode = "tcp"\nurl = "{url}"\n')
    assert problem.startswith("network.url: ")


@pytest.mark.parametrize("table,key,value", [("server", "request_timeout_s", "inf"), ("scheduler", "pair_rate_per_minute", "inf"),
                                              ("crypto", "signed_prekey_rotation_h", "inf"), ("store", "map_size_mb", str(2**62)),
                                              ("network.sim", "latency_ms_median", "inf")])
def test_values_that_passed_validation_and_failed_at_start_are_refused(table, key, value):
    """Found by setting every number of configs/gateway.toml to extremes and starting the gateway."""
    problem, = problems(GOOD + f"\n[{table}]\n{key} = {value}\n")
    assert problem.startswith(f"{table}.{key}: expected ") and "<=" in problem, problem


@pytest.mark.parametrize("table,key", [("store", "data_dir"), ("store", "key_dir"), ("policy", "sensitive_words_dir")])
def test_a_path_with_a_nul_is_refused_before_any_os_call_raises_on_it(table, key):
    problem, = problems(GOOD + f'\n[{table}]\n{key} = "var\\u0000x"\n')
    assert problem.startswith(f"{table}.{key}: expected str matching")


def test_a_number_or_name_with_a_trailing_newline_is_refused():
    text = GOOD.replace('number = "+15550000001"', 'number = "+15550000001\\n"')
    assert problems(text)[0].startswith("senders[0].number: expected str matching")
    assert problems(GOOD.replace('name = "default"', 'name = "default\\n"'))[0].startswith("workspaces[0].name:")


def test_toml_syntax_error_is_one_problem():
    assert problems("[server\n")[0].startswith("TOML syntax:")


def test_arrays_nested_past_the_recursion_limit_are_a_syntax_problem_not_a_crash():
    assert problems("[server]\nlisten = " + "[" * 5000 + "\n") == ["TOML syntax: arrays or tables nested too deeply"]


def test_webhook_needs_a_secret_source():
    text = GOOD.replace('default_sender = "+15550000001"',
                        'default_sender = "+15550000001"\n[[workspaces.webhooks]]\nurl = "http://127.0.0.1:1/h"')
    assert problems(text) == ["workspaces[0].webhooks[0]: needs secret_file or secret_env"]


def test_command_line_overrides_win_over_the_file():
    cfg = with_overrides(parse_config(GOOD), listen="127.0.0.1:9", data_dir="/tmp/x")
    assert (cfg.server.listen, cfg.store.data_dir) == ("127.0.0.1:9", "/tmp/x")


def test_check_config_command_exits_nonzero_with_the_path(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD + '\n[[senders]]\nnumber = "+15550000002"\nrate_per_minute = 5\n'
                   '\n[[senders]]\nnumber = "+15550000003"\nrate_per_minute = 0\n')
    out = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(bad)],
                         capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert out.returncode == 1
    assert f"{bad}: senders[2].rate_per_minute: expected int >= 1" in out.stderr
    good = subprocess.run([sys.executable, "-m", "gateway", "check-config", f"{ROOT}/configs/gateway.toml"],
                          capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert good.returncode == 0, good.stderr


def test_bad_tier_value_names_the_tier():
    assert problems(GOOD.replace("rate_per_minute = 80", "rate_per_minute = 0")) == [
        "tiers.standard.rate_per_minute: expected int >= 1"
    ]


def test_tier_missing_a_field_names_the_tier():
    assert problems(GOOD.replace("burst = 40", "")) == ["tiers.standard: object missing required field burst"]
