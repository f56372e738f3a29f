"""The gateway command: keys create, doctor, and what `run` refuses before it starts."""
import json
import os
import subprocess
import sys
import time

from tests.harness import ROOT, Gateway


def gateway(*args):
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def test_keys_create_prints_a_key_the_running_gateway_accepts(tmp_path):
    gw = Gateway(tmp_path).start()
    try:
        out = gateway("keys", "create", "--workspace", "default", "--role", "app",
                      "-c", str(gw.config_path))
        assert out.returncode == 0, out.stderr
        key = out.stdout.strip()
        assert key.startswith("gw_")
        assert gw.request("POST", "/v1/messages", {"to": "+14155550100", "text": {"body": "x"}}, key=key)[0] == 202
        assert key not in gw.read_log()
    finally:
        gw.stop()


def test_keys_list_and_revoke_on_the_host_while_the_gateway_runs(tmp_path):
    gw = Gateway(tmp_path).start()
    try:
        out = gateway("keys", "create", "--workspace", "default", "--role", "app", "--label", "shop",
                      "-c", str(gw.config_path))
        key = out.stdout.strip()
        key_id = key.split("_")[1]
        assert gw.request("POST", "/v1/messages", {"to": "+14155550100", "text": {"body": "x"}}, key=key)[0] == 202
        out = gateway("keys", "list", "--json", "-c", str(gw.config_path))
        assert out.returncode == 0, out.stderr
        listed = {k["id"]: k for k in json.loads(out.stdout)}
        assert listed[key_id]["label"] == "shop" and listed[key_id]["revoked_at"] is None
        assert key.split("_", 2)[2] not in out.stdout
        out = gateway("keys", "revoke", key_id, "-c", str(gw.config_path))
        assert out.returncode == 0 and "revoked at" in out.stdout, out.stderr
        deadline = time.monotonic() + 5  # the running gateway re-reads its keys every second
        while True:
            status, reply = gw.request("POST", "/v1/messages", {"to": "+14155550100", "text": {"body": "x"}}, key=key)
            if status == 401 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert (status, reply["error"]["code"]) == (401, "revoked_api_key")
        out = gateway("keys", "list", "-c", str(gw.config_path))
        row = [line for line in out.stdout.splitlines() if line.startswith(key_id)]
        assert len(row) == 1 and "1970" not in row[0] and row[0].count("Z") == 2  # created and revoked
        status, log = gw.request("GET", "/admin/v1/audit")
        assert [e["actor"] for e in log["entries"] if e["target"] == key_id] == ["cli", "cli"]
        out = gateway("doctor", "-c", str(gw.config_path))  # reads the running gateway's store
        assert "api keys      1 in force (admin 1), 1 revoked" in out.stdout, out.stdout + out.stderr
        admin_id = gw.key.split("_")[1]
        assert gateway("keys", "revoke", admin_id, "-c", str(gw.config_path)).returncode == 0
        assert "NO admin key in force" in gateway("doctor", "-c", str(gw.config_path)).stdout
        assert gateway("keys", "revoke", "0123456789abcdef", "-c", str(gw.config_path)).returncode == 1
    finally:
        gw.stop()


def test_keys_list_and_revoke_say_what_is_wrong_without_a_traceback(tmp_path):
    out = gateway("keys", "list", "--data-dir", str(tmp_path / "nothing"))
    assert out.returncode == 2 and "no gateway store" in out.stderr and "Traceback" not in out.stderr
    for bad in ("", "x" * 600, "0123456789ABCDEF"):
        out = gateway("keys", "revoke", bad, "--data-dir", str(tmp_path))
        assert out.returncode == 2 and "not an API key id" in out.stderr and "Traceback" not in out.stderr


def test_run_refuses_a_data_dir_another_gateway_runs_on_and_a_taken_port(tmp_path):
    gw = Gateway(tmp_path).start()
    try:
        out = gateway("run", "-c", str(gw.config_path), "--listen", "127.0.0.1:0")
        assert out.returncode == 2 and "another gateway (pid " in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
        out = gateway("run", "-c", str(gw.config_path), "--data-dir", str(tmp_path / "other"))  # gw's port
        assert out.returncode == 2 and out.stderr.startswith("server.listen: cannot listen on"), out.stderr
        assert not (tmp_path / "other").exists()  # refused before anything was made
    finally:
        gw.stop()
    out = gateway("run", "--listen", "no.such.host.invalid:0", "--data-dir", str(tmp_path / "x"))
    assert out.returncode == 2 and out.stderr.startswith("server.listen: cannot listen on"), out.stderr


def test_keys_create_says_when_it_makes_a_new_store(tmp_path):
    # provisioning before a first start (the load harness does it) or a misspelt --data-dir: said
    out = gateway("keys", "create", "--workspace", "default", "--role", "app", "--data-dir", str(tmp_path / "new"))
    assert out.returncode == 0 and out.stdout.startswith("gw_") and "no gateway store in" in out.stderr
    out = gateway("keys", "create", "--workspace", "default", "--role", "app", "--data-dir", str(tmp_path / "new"))
    assert out.returncode == 0 and out.stderr == ""


def test_check_config_refuses_an_empty_file(tmp_path):
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    out = gateway("check-config", str(empty))
    assert out.returncode == 1 and "workspaces: at least one" in out.stderr and "senders: at least one" in out.stderr


def test_keys_create_refuses_an_unknown_role(tmp_path):
    out = gateway("keys", "create", "--workspace", "default", "--role", "root", "--data-dir", str(tmp_path))
    assert out.returncode == 2 and "--role" in out.stderr


def test_keys_create_takes_the_workspace_names_and_labels_the_api_takes(tmp_path):
    for flag, value in (("--workspace", ""), ("--workspace", "Bad Name"), ("--workspace", "ghost"),
                        ("--label", "x" * 201)):
        args = {"--workspace": "default", "--label": "ok", flag: value}
        out = gateway("keys", "create", "--role", "app", "--data-dir", str(tmp_path), *[x for kv in args.items() for x in kv])
        assert out.returncode == 2 and out.stderr.startswith(flag + ":"), out.stderr
        assert "Traceback" not in out.stderr


def test_run_refuses_a_port_past_65535_and_an_uncreatable_data_dir_with_a_message(tmp_path):
    out = gateway("run", "--listen", "127.0.0.1:99999", "--data-dir", str(tmp_path))  # not port 34463
    assert out.returncode == 2 and "--listen" in out.stderr and "65535" in out.stderr
    (tmp_path / "file").write_text("")
    out = gateway("run", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "file" / "var"))
    assert out.returncode == 2 and out.stderr.startswith("store.data_dir: cannot create"), out.stderr
    assert "Traceback" not in out.stderr
    config = tmp_path / "gateway.toml"
    config.write_text(f'[store]\nkey_dir = "{tmp_path / "file" / "keys"}"\n\n[[workspaces]]\nname = "default"\n\n'
                      '[[senders]]\nnumber = "+15550000001"\nrate_per_minute = 60\n')
    out = gateway("run", "-c", str(config), "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "var"))
    assert out.returncode == 2 and out.stderr.startswith("store.key_dir: cannot create"), out.stderr


def test_run_says_when_the_data_directory_holds_something_that_is_not_its_store(tmp_path):
    (tmp_path / "lmdb").mkdir()
    (tmp_path / "lmdb" / "data.mdb").write_bytes(b"not an LMDB file" * 4096)
    out = gateway("run", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path))
    assert out.returncode == 2 and "store: cannot open the LMDB store" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_first_start_writes_the_admin_key_file_0600_and_prints_only_its_path(tmp_path):
    import os
    import stat

    gw = Gateway(tmp_path).start()
    try:
        path = os.path.join(gw.data_dir, "admin.key")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        log = gw.read_log()
        assert path in log and gw.key not in log
    finally:
        gw.stop()


def test_doctor_reports_python_native_modules_config_and_data_dir(tmp_path):
    out = gateway("doctor", "-c", f"{ROOT}/configs/gateway.toml", "--data-dir", str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    for word in ("python", "native", "in use", "config", "data dir"):
        assert word in out.stdout
    assert "disk " not in out.stdout  # measuring writes to the disk: only when asked


def test_doctor_disk_measures_the_data_directorys_disk_and_leaves_nothing_behind(tmp_path):
    data = tmp_path / "var"
    out = gateway("doctor", "-c", f"{ROOT}/configs/gateway.toml", "--data-dir", str(data), "--disk")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"disk          {tmp_path}: one 4 KiB page made durable:" in out.stdout  # the closest existing directory
    assert "scattered pages" in out.stdout and "accept commit" in out.stdout
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "ro").mkdir(mode=0o500)
    out = gateway("doctor", "-c", f"{ROOT}/configs/gateway.toml", "--data-dir", str(tmp_path / "ro"), "--disk")
    if os.geteuid() != 0:  # root writes anywhere
        assert out.returncode == 1 and "cannot measure" in out.stdout


def test_a_data_directory_in_memory_is_called_out_as_not_durable(tmp_path, capsys):
    import pytest

    from gateway import cli, diskcheck

    shm = "/dev/shm"
    if not os.path.isdir(shm) or (diskcheck.filesystem_of(shm) or ("", ""))[1] != "tmpfs":
        pytest.skip("no tmpfs at /dev/shm on this machine to put a data directory on")
    out = gateway("doctor", "-c", f"{ROOT}/configs/gateway.toml", "--data-dir", f"{shm}/gateway-test-never-created")
    assert "on tmpfs (/dev/shm)" in out.stdout and "NOT DURABLE" in out.stdout
    cli._warn_if_volatile(f"{shm}/gateway-test-never-created")  # what `gateway run` says at start
    assert "do not survive a reboot" in capsys.readouterr().err
    if (diskcheck.filesystem_of(str(tmp_path)) or ("", ""))[1] not in diskcheck.VOLATILE:
        cli._warn_if_volatile(str(tmp_path))
        assert capsys.readouterr().err == ""
