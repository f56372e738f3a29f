"""The `gateway` command: run, check-config, keys (create, list, revoke, init, rotate), doctor.

Commands print results for people on stdout and problems on stderr; an API key is printed only
by `keys create`, whose job that is, and never goes to a log.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import platform
import sys

DEFAULT_CONFIG = "configs/gateway.toml"
CLI_ACTOR = "cli"  # who the audit log names for changes made on the host with this command
GC_THRESHOLDS = (10_000, 500, 100)  # young collections stay small (p99); gen1/gen2 as often as before


def _load(path: str, listen: str | None = None, data_dir: str | None = None):
    from gateway import config as C

    cfg = C.load_config(path)
    return C.with_overrides(cfg, listen=listen, data_dir=data_dir)


def cmd_run(args) -> int:
    import lmdb
    import trio

    from gateway import config as C
    from gateway.app import Gateway, ensure_admin_key
    from gateway.crypto.keydir import init_keys, key_dir_for

    import signal

    # a SIGHUP before the gateway listens for it (a start that rebuilds a big queue takes seconds)
    # would end the process; the config is read at start anyway
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = _load(args.config, args.listen, args.data_dir)
        C.split_host_port(cfg.server.listen)
    except C.ConfigError as exc:
        for problem in exc.problems:
            print(f"{exc.source}: {problem}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"--listen: {exc}", file=sys.stderr)
        return 2
    try:  # said now, before anything is opened: not as a traceback once the store is loaded
        from gateway.http.server import _listen_socket

        _listen_socket(*C.split_host_port(cfg.server.listen)).close()
    except OSError as exc:
        print(f"server.listen: cannot listen on {cfg.server.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    key_dir = key_dir_for(cfg.store.data_dir, cfg.store.key_dir)
    for what, make in (("store.data_dir", lambda: os.makedirs(cfg.store.data_dir, mode=0o700, exist_ok=True)),
                       ("store.key_dir", lambda: init_keys(key_dir))):
        try:
            made_keys = make()
        except OSError as exc:
            print(f"{what}: cannot create {exc.filename or cfg.store.data_dir}: {exc.strerror}", file=sys.stderr)
            return 2
        if what == "store.data_dir" and not _hold_data_dir(cfg.store.data_dir):
            return 2
    if made_keys:
        print(f"first start: data key for sealing at rest created in {os.path.abspath(key_dir)}", flush=True)
    _warn_if_volatile(cfg.store.data_dir)
    try:
        gw = Gateway(cfg, config_path=args.config)
    except C.ConfigError as exc:
        for problem in exc.problems:
            print(f"{exc.source}: {problem}", file=sys.stderr)
        return 2
    except lmdb.Error as exc:  # e.g. a map size the machine cannot map, a store of another version
        print(f"store: cannot open the LMDB store in {os.path.abspath(cfg.store.data_dir)}: {exc}", file=sys.stderr)
        return 2
    path = ensure_admin_key(gw)
    if path is not None:
        print(f"first start: admin API key written to {os.path.abspath(path)} (mode 0600)", flush=True)
    # Long-lived state (queues, heaps, caches) holds millions of small objects at peak; the
    # default GC thresholds would rescan them all every few thousand allocations.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        trio.run(gw.run)
    except KeyboardInterrupt:  # a SIGINT in the instant after the shutdown, past its signal receiver
        pass
    finally:
        gw.close()
    print("gateway stopped", file=sys.stderr)
    return 0


_DATA_DIR_LOCK = None  # the open lock file of the data directory this process runs on


def _hold_data_dir(data_dir: str) -> bool:
    """Take the data directory for this process alone (an exclusive lock on <data>/gateway.lock, let
    go when the process ends, however it ends); False after saying why when another gateway holds it:
    two gateways on one store would each keep their own ratchet state and publish their own keys."""
    import fcntl

    global _DATA_DIR_LOCK
    path = os.path.join(data_dir, "gateway.lock")
    try:
        f = open(path, "a+", opener=lambda p, flags: os.open(p, flags, 0o600))
    except OSError as exc:
        print(f"store.data_dir: cannot open {path}: {exc.strerror}", file=sys.stderr)
        return False
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        print(f"store.data_dir: another gateway (pid {holder}) runs on {os.path.abspath(data_dir)}",
              file=sys.stderr)
        return False
    try:  # the pid is for the message above; the lock is what counts (a full disk may refuse the write)
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
    except OSError:
        pass
    _DATA_DIR_LOCK = f
    return True


def cmd_check_config(args) -> int:
    from gateway import config as C

    from gateway.policy.service import load_word_files, words_dir

    try:
        cfg = C.load_config(args.path)
        word_lists = load_word_files(words_dir(cfg, args.path), [ws.name for ws in cfg.workspaces])
    except C.ConfigError as exc:
        for problem in exc.problems:
            print(f"{exc.source}: {problem}", file=sys.stderr)
        return 1
    print(f"{args.path}: ok ({len(cfg.workspaces)} workspaces, {len(cfg.senders)} senders, "
          f"{len(cfg.tiers)} tiers, {len(word_lists)} sensitive-word lists)")
    return 0


def cmd_keys_create(args) -> int:
    import lmdb
    import msgspec

    from gateway import config as C
    from gateway.api.admin import NewKey
    from gateway.http.auth import ROLES, mint_key
    from gateway.ids import IdGenerator
    from gateway.store import key_ops as K
    from gateway.store.env import open_store

    if args.role not in ROLES:
        print(f"--role: expected one of {', '.join(ROLES)}", file=sys.stderr)
        return 2
    try:  # what POST /admin/v1/api-keys takes
        msgspec.convert({"workspace": args.workspace, "role": args.role, "label": args.label}, NewKey)
    except msgspec.ValidationError as exc:
        print(f"--{C._msgspec_problem(exc)}", file=sys.stderr)
        return 2
    cfg = _config(args)
    if cfg is None:
        return 2
    if cfg.workspace(args.workspace) is None:
        print(f"--workspace: no workspace {args.workspace!r} in {args.config}", file=sys.stderr)
        return 2
    import time

    if not os.path.isdir(os.path.join(cfg.store.data_dir, "lmdb")):  # provisioning before a first start,
        # or a misspelt --data-dir: said, so that a key the running gateway never sees is not a mystery
        print(f"note: no gateway store in {os.path.abspath(cfg.store.data_dir)} yet: the key goes into a new one "
              "(check --data-dir if a gateway already runs elsewhere)", file=sys.stderr)
    try:
        store = open_store(cfg.store.data_dir, cfg.store.map_size_mb)
    except (OSError, lmdb.Error) as exc:
        print(f"store: cannot open the store in {os.path.abspath(cfg.store.data_dir)}: {exc}", file=sys.stderr)
        return 2
    try:
        now = time.time_ns() // 1_000_000
        key_id, key, record = mint_key(args.workspace, args.role, now, args.label)
        audit = K.audit_entry(IdGenerator(), now, CLI_ACTOR, "admin", "api_key.create", key_id, record)
        with store.env.begin(write=True) as txn:
            K.put_api_key(txn, store.dbs, (key_id, record, audit))
    finally:
        store.close()
    print(key)
    return 0


def _config(args):
    """The config of -c (with --data-dir over it), or None after saying what is wrong with it."""
    from gateway import config as C

    try:
        return _load(args.config, data_dir=args.data_dir)
    except C.ConfigError as exc:
        print(f"{exc.source}: {'; '.join(exc.problems)}", file=sys.stderr)
        return None


def _open_store(args):
    """The store of the config's (or --data-dir's) data directory, or None after saying why."""
    from gateway.store.env import open_store

    cfg = _config(args)
    if cfg is None:
        return None
    if not os.path.isdir(os.path.join(cfg.store.data_dir, "lmdb")):
        print(f"{os.path.abspath(cfg.store.data_dir)}: no gateway store here (has the gateway run?)", file=sys.stderr)
        return None
    return open_store(cfg.store.data_dir, cfg.store.map_size_mb)


def cmd_keys_list(args) -> int:
    import json

    from gateway.store import key_ops as K

    store = _open_store(args)
    if store is None:
        return 2
    try:
        with store.env.begin(buffers=False) as txn:
            keys = K.all_keys(txn, store.dbs["api_keys"], args.workspace)
    finally:
        store.close()
    if args.json:
        print(json.dumps([K.view(key_id, record) for key_id, record in keys], indent=2))
        return 0
    print(f"{'id':16}  {'workspace':20}  {'role':10}  {'created':24}  {'revoked':24}  label")
    for key_id, record in keys:
        v = K.view(key_id, record)
        label = v["label"] if v["label"].isprintable() else ascii(v["label"])  # no escapes reach the terminal
        print(f"{v['id']:16}  {v['workspace']:20}  {v['role']:10}  {v['created_at']:24}  "
              f"{v['revoked_at'] or '-':24}  {label}")
    return 0


def cmd_keys_revoke(args) -> int:
    import time

    from gateway.http.auth import KEY_ID
    from gateway.ids import IdGenerator
    from gateway.store import key_ops as K

    if not KEY_ID.match(args.key_id):
        print(f"{args.key_id!r}: not an API key id (16 hex digits, as `gateway keys list` shows)", file=sys.stderr)
        return 2
    store = _open_store(args)
    if store is None:
        return 2
    now = time.time_ns() // 1_000_000
    ids = IdGenerator()
    arg = K.RevokeArg(args.key_id, now, lambda rec: K.audit_entry(ids, now, CLI_ACTOR, "admin", "api_key.revoke",
                                                                  args.key_id, rec), keep_an_admin=False)
    try:
        with store.env.begin(write=True) as txn:
            outcome, record = K.revoke_api_key(txn, store.dbs, arg)
            admins_left = any(r.role == "admin" and not r.revoked_ms
                              for _, r in K.all_keys(txn, store.dbs["api_keys"]))
    finally:
        store.close()
    if outcome == K.UNKNOWN:
        print(f"no API key {args.key_id!r}", file=sys.stderr)
        return 1
    when = K.view(args.key_id, record)["revoked_at"]
    print(f"{args.key_id}: {'revoked' if outcome == K.REVOKED else 'already revoked'} at {when}; "
          "a running gateway refuses it within a second")
    if not admins_left:
        print("no admin key is left in force: mint one with `gateway keys create --workspace default "
              "--role admin`", file=sys.stderr)
    return 0


def _key_dir(args) -> str | None:
    from gateway.crypto.keydir import key_dir_for

    cfg = _config(args)
    return key_dir_for(cfg.store.data_dir, cfg.store.key_dir) if cfg is not None else None


def cmd_keys_init(args) -> int:
    import time

    from gateway.crypto.keydir import init_keys
    from gateway.e2e.keys import KeyFileError, load_or_create

    path = _key_dir(args)
    if path is None:
        return 2
    made = init_keys(path)
    print(f"{os.path.abspath(path)}: {'data key 1 created' if made else 'already has data keys'}")
    cfg = _load(args.config, data_dir=args.data_dir)
    for sender in cfg.senders:
        try:
            _, created = load_or_create(path, sender.number, time.time_ns() // 1_000_000, cfg.crypto.one_time_prekeys)
        except (KeyFileError, OSError) as exc:
            print(f"{sender.number}: {exc}", file=sys.stderr)
            return 1
        print(f"{sender.number}: identity key and prekeys {'created' if created else 'already present'}")
    return 0


def cmd_keys_rotate(args) -> int:
    from gateway.crypto.keydir import rotate

    path = _key_dir(args)
    if path is None:
        return 2
    key_id = rotate(path)
    print(f"{os.path.abspath(path)}: data key {key_id} created and active for new records; "
          "reload a running gateway (kill -HUP or POST /admin/v1/config/reload) to use it")
    return 0


def cmd_doctor(args) -> int:
    from gateway import config as C
    from gateway.schedule import buckets

    ok = True
    print(f"python        {platform.python_version()} ({sys.executable})")
    if sys.version_info < (3, 11):
        print("              needs Python >= 3.11")
        ok = False
    from gateway.crypto import aes_cbc, aes_gcm, ratchet_kdf
    from gateway.http import server as http_server
    from gateway.policy import normalize

    for name, chooser in (("buckets", buckets), ("normalize", normalize), ("http1", http_server),
                          ("aes_cbc", aes_cbc), ("aes_gcm", aes_gcm), ("ratchet_kdf", ratchet_kdf)):
        try:
            importlib.import_module(f"gateway._native.{name}")
            compiled = "compiled"
        except ImportError as exc:
            compiled = f"not compiled ({exc})"
        print(f"native        gateway._native.{name}: {compiled}")
        print(f"in use        {name}: {chooser.IMPLEMENTATION}"
              + ("  (GATEWAY_PURE_PYTHON=1)" if os.environ.get("GATEWAY_PURE_PYTHON") == "1" else ""))
    for dep in ("trio", "msgspec", "orjson", "lmdb", "httptools"):
        try:
            mod = importlib.import_module(dep)
            print(f"dependency    {dep} {getattr(mod, '__version__', '')}")
        except ImportError:
            print(f"dependency    {dep}: MISSING")
            ok = False
    path = os.path.abspath(args.config)
    try:
        cfg = _load(args.config, data_dir=args.data_dir)
        print(f"config        {path}: ok")
        data_dir, map_size_mb = cfg.store.data_dir, cfg.store.map_size_mb
    except C.ConfigError as exc:
        print(f"config        {path}: {'; '.join(exc.problems)}")
        ok = False
        data_dir, map_size_mb = args.data_dir or "./var", C.StoreConfig().map_size_mb
    from gateway.crypto.keydir import KeyDirError, load_sealer

    key_dir = _key_dir(args) or os.path.join(data_dir, "keys")
    try:
        sealer = load_sealer(key_dir)
        print(f"key dir       {os.path.abspath(key_dir)}: data keys {sealer.key_ids}, active {sealer.active}")
    except (KeyDirError, OSError) as exc:
        print(f"key dir       {os.path.abspath(key_dir)}: {exc}")
    data_dir = os.path.abspath(data_dir)
    from gateway import diskcheck

    fs = diskcheck.filesystem_of(diskcheck.scratch_dir(data_dir))
    on = f" on {fs[1]} ({fs[0]})" if fs else ""
    if os.path.isdir(data_dir):
        writable = os.access(data_dir, os.W_OK)
        print(f"data dir      {data_dir} ({'writable' if writable else 'NOT writable'}){on}")
        ok = ok and writable
    else:
        print(f"data dir      {data_dir} (not created yet; `gateway run` creates it){on}")
    problem = diskcheck.volatile(diskcheck.scratch_dir(data_dir))
    if problem:
        print(f"              NOT DURABLE: {problem}")
    if os.path.isdir(os.path.join(data_dir, "lmdb")):
        for line in _doctor_keys(os.path.join(data_dir, "lmdb"), map_size_mb):
            print(line)
    if args.disk:
        ok = _doctor_disk(data_dir) and ok
    return 0 if ok else 1


def _doctor_keys(lmdb_dir: str, map_size_mb: int) -> list[str]:
    """The API keys in the store (read-only, beside a running gateway): how many are in force by
    role, how many revoked, and a warning when no admin key is left in force."""
    import lmdb

    from gateway.store import key_ops as K
    from gateway.store import records as R

    try:
        # the gateway's map size: a read-only map sized to the data at open would meet the data
        # the running gateway adds meanwhile (MDB_MAP_RESIZED)
        env = lmdb.open(lmdb_dir, readonly=True, max_dbs=len(R.TABLES) + 4, max_readers=512,
                        map_size=map_size_mb * 1024 * 1024)
    except lmdb.Error as exc:
        return [f"api keys      cannot read the store: {exc}"]
    try:
        for _ in range(3):
            try:
                try:
                    db = env.open_db(b"api_keys", create=False)
                except lmdb.NotFoundError:
                    return ["api keys      none yet (the first `gateway run` makes an admin key)"]
                with env.begin(buffers=False) as txn:
                    keys = K.all_keys(txn, db)
                break
            except lmdb.MapResizedError:
                env.set_mapsize(0)  # the gateway grew its map: take its size and read again
        else:
            return ["api keys      cannot read the store: it kept growing its map while read"]
    except lmdb.Error as exc:
        return [f"api keys      cannot read the store: {exc}"]
    finally:
        env.close()
    in_force: dict[str, int] = {}
    for _, record in keys:
        if not record.revoked_ms:
            in_force[record.role] = in_force.get(record.role, 0) + 1
    roles = ", ".join(f"{role} {n}" for role, n in sorted(in_force.items()))
    lines = [f"api keys      {sum(in_force.values())} in force ({roles or 'none'}), "
             f"{len(keys) - sum(in_force.values())} revoked (`gateway keys list`)"]
    if not in_force.get("admin"):
        lines.append("              NO admin key in force: `gateway keys create --workspace default --role admin`")
    return lines


def _warn_if_volatile(data_dir: str) -> None:
    """A data directory in memory (tmpfs) makes every fsync, and so every 202, a promise no reboot keeps."""
    from gateway import diskcheck

    problem = diskcheck.volatile(data_dir)
    if problem:
        print(f"warning: data directory {os.path.abspath(data_dir)}: {problem}", file=sys.stderr, flush=True)


def _doctor_disk(data_dir: str) -> bool:
    from gateway import diskcheck

    where = diskcheck.scratch_dir(data_dir)
    try:
        figures = diskcheck.measure(where)
    except OSError as exc:
        print(f"disk          {where}: cannot measure ({exc.strerror or exc})")
        return False
    lines = diskcheck.describe(figures)
    print(f"disk          {where}: {lines[0]}")
    for line in lines[1:]:
        print(f"              {line}")
    return True


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway", description="Business messaging gateway")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start the gateway")
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    run.add_argument("--listen", help="HOST:PORT for the HTTP API (overrides server.listen)")
    run.add_argument("--data-dir", help="data directory (overrides store.data_dir)")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("path")
    check.set_defaults(func=cmd_check_config)

    keys = sub.add_parser("keys", help="API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="mint an API key and print it once")
    create.add_argument("--workspace", required=True)
    create.add_argument("--role", required=True)
    create.add_argument("--label", default="")
    create.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    create.add_argument("--data-dir")
    create.set_defaults(func=cmd_keys_create)

    listing = keys_sub.add_parser("list", help="every API key, revoked ones too (never a secret)")
    listing.add_argument("--workspace")
    listing.add_argument("--json", action="store_true", help="as JSON, the admin API's view of each key")
    listing.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    listing.add_argument("--data-dir")
    listing.set_defaults(func=cmd_keys_list)
    revoke = keys_sub.add_parser("revoke", help="revoke an API key by its id (a running gateway obeys within a second)")
    revoke.add_argument("key_id")
    revoke.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    revoke.add_argument("--data-dir")
    revoke.set_defaults(func=cmd_keys_revoke)

    for name, func, text in (("init", cmd_keys_init, "create the key directory, a first data key and every "
                                                     "sender's identity key and prekeys"),
                             ("rotate", cmd_keys_rotate, "add a data key for new records; old ones stay readable")):
        cmd = keys_sub.add_parser(name, help=text)
        cmd.add_argument("-c", "--config", default=DEFAULT_CONFIG)
        cmd.add_argument("--data-dir")
        cmd.set_defaults(func=func)

    doctor = sub.add_parser("doctor", help="report the installation and the environment")
    doctor.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    doctor.add_argument("--data-dir")
    doctor.add_argument("--disk", action="store_true",
                        help="also measure what making data durable costs on the data directory's disk "
                             "(writes and removes an 8 MiB scratch file there)")
    doctor.set_defaults(func=cmd_doctor)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
