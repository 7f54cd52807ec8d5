"""Tests of the node configuration loader: defaults, layering, and one-line errors.

The bad-config table is the heart of it: an operator sees only the message, so each case
checks that the message names the field to fix and fits on one line.
"""

from __future__ import annotations

import dataclasses
import pathlib
import tomllib
from collections.abc import Mapping

import pytest

from runtime.config import (
    LimitsSection,
    MulticastSection,
    NodeConfig,
    NodeSection,
    PersistenceSection,
    RdmcSection,
    TimeoutsSection,
    example_config,
    load_config,
    parse_override,
)
from runtime.core.layout import LayoutPolicy, ShardPolicy
from runtime.core.membership import MembershipConfig
from runtime.core.node_core import CoreConfig
from runtime.core.object_policy import ObjectPolicy
from runtime.core.smc import MulticastConfig
from runtime.errors import ConfigError

pytestmark = pytest.mark.timeout(60)


def write(tmp_path: pathlib.Path, text: str, name: str = "node.toml") -> str:
    """Write a config file and return its path as the loader takes it."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def load(
    tmp_path: pathlib.Path,
    text: str | None = None,
    env: Mapping[str, str] | None = None,
    cli: Mapping[str, str] | None = None,
) -> NodeConfig:
    """Load with an explicit, empty-by-default environment so the real one cannot leak in."""
    path = write(tmp_path, text) if text is not None else None
    return load_config(path, cli or {}, environ=env or {})


# --------------------------------------------------------------------------- defaults
def test_defaults_work_on_one_machine(tmp_path: pathlib.Path) -> None:
    cfg = load(tmp_path)
    assert cfg == NodeConfig()
    assert cfg.node == NodeSection(
        id=1,
        listen="127.0.0.1:7000",
        contacts=(),
        data_dir="./derecho-data",
        log_level="INFO",
        cluster="derecho",
    )
    assert cfg.timeouts == TimeoutsSection(50, 500, 500, 2000)
    assert cfg.multicast == MulticastSection(10_000, 1000, 1048576, 1.0, 67108864, 32 << 20)
    assert cfg.layout == LayoutPolicy.of({"default": ShardPolicy()})
    assert cfg.listen_host_port() == ("127.0.0.1", 7000)
    assert cfg.contact_addresses() == []


def test_empty_file_and_empty_sections_give_defaults(tmp_path: pathlib.Path) -> None:
    assert load(tmp_path, "") == NodeConfig()
    assert load(tmp_path, "[node]\n[timeouts]\n[multicast]\n") == NodeConfig()


def test_config_is_frozen() -> None:
    cfg = NodeConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.node = NodeSection(id=2)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.node.id = 2  # type: ignore[misc]
    hash(cfg.node)  # sections are hashable (contacts are kept as a tuple)


def test_environ_none_reads_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DERECHO_NODE_ID", "9")
    assert load_config(None).node.id == 9


def test_contact_addresses_returns_a_copy() -> None:
    cfg = NodeConfig(node=NodeSection(contacts=("a:1", "b:2")))
    addresses = cfg.contact_addresses()
    addresses.append("c:3")
    assert cfg.contact_addresses() == ["a:1", "b:2"]


def test_ipv6_listen_address_is_unbracketed() -> None:
    cfg = NodeConfig(node=NodeSection(listen="[::1]:0"))
    assert cfg.listen_host_port() == ("::1", 0)


# --------------------------------------------------------------------------- round trip
def test_example_config_round_trip(tmp_path: pathlib.Path) -> None:
    contacts = ["127.0.0.1:7001", "[::1]:7002", "node-3.example:7003"]
    text = example_config(4, 7004, contacts)
    assert "#" in text  # documented
    cfg = load(tmp_path, text)
    assert cfg == NodeConfig(node=NodeSection(id=4, listen="127.0.0.1:7004", contacts=tuple(contacts)))
    # Every key the example writes is one the loader knows, and every known key is written.
    doc = tomllib.loads(text)
    assert set(doc) == {"node", "timeouts", "multicast", "rdmc", "persistence", "security", "limits"}
    assert set(doc["rdmc"]) == {f.name for f in dataclasses.fields(RdmcSection)}
    assert set(doc["limits"]) == {f.name for f in dataclasses.fields(LimitsSection)}
    assert set(doc["node"]) == {f.name for f in dataclasses.fields(NodeSection)}
    assert set(doc["timeouts"]) == {f.name for f in dataclasses.fields(TimeoutsSection)}
    assert set(doc["multicast"]) == {f.name for f in dataclasses.fields(MulticastSection)}
    assert set(doc["persistence"]) == {f.name for f in dataclasses.fields(PersistenceSection)}


def test_example_config_founding_node(tmp_path: pathlib.Path) -> None:
    cfg = load(tmp_path, example_config(0, 0, []))
    assert cfg.node.id == 0
    assert cfg.listen_host_port() == ("127.0.0.1", 0)
    assert cfg.contact_addresses() == []


def test_example_layout_comment_is_valid_when_uncommented(tmp_path: pathlib.Path) -> None:
    text = example_config(1, 7000, [])
    lines = text.splitlines()
    start = lines.index("# [layout.KV]")
    uncommented = "\n".join(line[2:] for line in lines[start:] if line.startswith("# "))
    cfg = load(tmp_path, text + uncommented + "\n")
    assert cfg.layout == LayoutPolicy.of({"KV": ShardPolicy(shards=2, max_nodes=3, reserved=((1, 2), (3,)))})


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((-1, 7000, []), "node.id"),
        ((1, 70000, []), "node.listen"),
        ((1, 7000, ["nope"]), "node.contacts[0]"),
    ],
)
def test_example_config_rejects_bad_arguments(args: tuple, field: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        example_config(*args)
    assert field in str(info.value)


# --------------------------------------------------------------------------- precedence
FILE = """
[node]
id = 2
listen = "127.0.0.1:7002"
log_level = "DEBUG"
[timeouts]
heartbeat_ms = 20
"""


def test_file_overrides_defaults(tmp_path: pathlib.Path) -> None:
    cfg = load(tmp_path, FILE)
    assert (cfg.node.id, cfg.node.listen, cfg.node.log_level) == (2, "127.0.0.1:7002", "DEBUG")
    assert cfg.timeouts.heartbeat_ms == 20
    assert cfg.timeouts.suspicion_ms == 500  # untouched keys keep their defaults


def test_env_overrides_file(tmp_path: pathlib.Path) -> None:
    env = {"DERECHO_NODE_ID": "3", "DERECHO_TIMEOUTS_SUSPICION_MS": "200"}
    cfg = load(tmp_path, FILE, env=env)
    assert cfg.node.id == 3
    assert cfg.timeouts.suspicion_ms == 200
    assert cfg.node.listen == "127.0.0.1:7002"  # from the file, not overridden


def test_cli_overrides_env_and_file(tmp_path: pathlib.Path) -> None:
    env = {"DERECHO_NODE_ID": "3", "DERECHO_NODE_LOG_LEVEL": "warning"}
    cli = {"node.id": "4", "timeouts.heartbeat_ms": "30"}
    cfg = load(tmp_path, FILE, env=env, cli=cli)
    assert cfg.node.id == 4  # CLI > env > file
    assert cfg.node.log_level == "WARNING"  # env > file, normalised to upper case
    assert cfg.timeouts.heartbeat_ms == 30  # CLI > file
    assert cfg.node.listen == "127.0.0.1:7002"  # file > default


def test_text_values_parse_to_field_types(tmp_path: pathlib.Path) -> None:
    env = {"DERECHO_NODE_CONTACTS": " 10.0.0.1:7000, 10.0.0.2:7000 ,", "DERECHO_NODE_ID": " 7 "}
    cli = {
        "multicast.null_interval_ms": "2.5",
        "multicast.window_size": "1_000",
        "node.cluster": "prod",
        "node.data_dir": "/var/lib/derecho",
    }
    cfg = load(tmp_path, env=env, cli=cli)
    assert cfg.node.contacts == ("10.0.0.1:7000", "10.0.0.2:7000")
    assert cfg.node.id == 7
    assert cfg.multicast.null_interval_ms == 2.5
    assert cfg.multicast.window_size == 1000
    assert (cfg.node.cluster, cfg.node.data_dir) == ("prod", "/var/lib/derecho")


def test_empty_contacts_from_cli_found_a_group(tmp_path: pathlib.Path) -> None:
    cfg = load(tmp_path, '[node]\ncontacts = ["127.0.0.1:7001"]\n', cli={"node.contacts": ""})
    assert cfg.contact_addresses() == []


def test_other_derecho_variables_are_ignored(tmp_path: pathlib.Path) -> None:
    assert load(tmp_path, env={"DERECHO_SEED": "4", "DERECHO_LAYOUT_X": "1"}) == NodeConfig()


def test_integer_null_interval_in_file_is_a_float(tmp_path: pathlib.Path) -> None:
    cfg = load(tmp_path, "[multicast]\nnull_interval_ms = 2\n")
    assert cfg.multicast.null_interval_ms == 2.0
    assert isinstance(cfg.multicast.null_interval_ms, float)


# --------------------------------------------------------------------------- overrides
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node.id=3", ("node.id", "3")),
        (" node.id = 3", ("node.id", " 3")),
        ("node.contacts=", ("node.contacts", "")),
        ("node.cluster=a=b", ("node.cluster", "a=b")),
        ("layout.KV.shards=2", ("layout.KV.shards", "2")),
    ],
)
def test_parse_override(text: str, expected: tuple[str, str]) -> None:
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["node.id", "=3", "id=3", "node.=3", ".id=3", "node id=3", ""])
def test_parse_override_rejects_malformed(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_override(text)
    message = str(info.value)
    assert "section.key" in message
    assert "\n" not in message


# --------------------------------------------------------------------------- layout
LAYOUT_FILE = """
[layout.KV]
subgroups = 1
shards = 2
min_nodes = 1
max_nodes = 3
reserved = [[1, 2], [3]]

[layout.Log]
subgroups = 2
shards = 1
min_nodes = 2
overlapping = true

[layout.Empty]
"""


def test_layout_tables_in_file_order(tmp_path: pathlib.Path) -> None:
    cfg = load(tmp_path, LAYOUT_FILE)
    assert cfg.layout == LayoutPolicy(
        (
            ("KV", ShardPolicy(shards=2, max_nodes=3, reserved=((1, 2), (3,)))),
            ("Log", ShardPolicy(subgroups=2, min_nodes=2, overlapping=True)),
            ("Empty", ShardPolicy()),
        )
    )


def test_layout_overrides_from_cli(tmp_path: pathlib.Path) -> None:
    cli = {
        "layout.KV.max_nodes": "none",
        "layout.KV.reserved": "[[5], []]",
        "layout.Log.overlapping": "no",
        "layout.New.shards": "3",
    }
    cfg = load(tmp_path, LAYOUT_FILE, cli=cli)
    assert cfg.layout == LayoutPolicy(
        (
            ("KV", ShardPolicy(shards=2, reserved=((5,), ()))),
            ("Log", ShardPolicy(subgroups=2, min_nodes=2, overlapping=False)),
            ("Empty", ShardPolicy()),
            ("New", ShardPolicy(shards=3)),
        )
    )


def test_layout_from_cli_replaces_default(tmp_path: pathlib.Path) -> None:
    cfg = load(tmp_path, cli={"layout.KV.min_nodes": "2"})
    assert cfg.layout == LayoutPolicy.of({"KV": ShardPolicy(min_nodes=2)})


# --------------------------------------------------------------------------- layout merge
# A table (file or --set) overrides only the keys it names; the others keep the code's policy.
# Replacing the whole policy dropped the KV example's min_nodes=3 to 1 for `shards=2` alone, and
# a shard on one replica lost its state to one kill -9 (issue 19).
CODE = ShardPolicy(shards=2, min_nodes=3, max_nodes=3)


def _hosted(cfg: NodeConfig, code: ShardPolicy = CODE) -> ShardPolicy:
    import derecho_actors as da
    from derecho_actors.node.app_host import hosted_layout
    from examples.kv_store import KV

    return dict(hosted_layout([KV], cfg.layout, da.Layout({KV: code})).policy.types)["KV"]


def test_layout_tables_record_the_keys_they_set(tmp_path: pathlib.Path) -> None:
    cfg = load(tmp_path, "[layout.KV]\nshards = 4\n", cli={"layout.KV.min_nodes": "2", "layout.Log.overlapping": "1"})
    assert cfg.layout.fields_set("KV") == {"shards", "min_nodes"}
    assert cfg.layout.fields_set("Log") == {"overlapping"}
    assert LayoutPolicy.of({"KV": ShardPolicy()}).fields_set("KV") == {  # built in code: every key is set
        "subgroups", "shards", "min_nodes", "max_nodes", "reserved", "overlapping"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("text", "cli", "expected"),
    [
        (None, {"layout.KV.shards": "2"}, CODE),  # the README's old --set: min_nodes stays 3
        (None, {"layout.KV.min_nodes": "2"}, ShardPolicy(shards=2, min_nodes=2, max_nodes=3)),
        ("[layout.KV]\nshards = 3\n", {}, ShardPolicy(shards=3, min_nodes=3, max_nodes=3)),
        ("[layout.KV]\nmax_nodes = 5\n", {"layout.KV.shards": "1"}, ShardPolicy(shards=1, min_nodes=3, max_nodes=5)),
        ("[layout.KV]\n", {}, CODE),  # an empty table changes nothing
        (
            "[layout.KV]\nsubgroups = 1\nshards = 1\nmin_nodes = 1\nmax_nodes = 2\nreserved = [[1]]\noverlapping = true\n",
            {},
            ShardPolicy(shards=1, min_nodes=1, max_nodes=2, reserved=((1,),), overlapping=True),  # every key: replaced
        ),
    ],
)
def test_a_layout_table_merges_over_the_code_policy(
    tmp_path: pathlib.Path, text: str | None, cli: dict[str, str], expected: ShardPolicy
) -> None:
    assert _hosted(load(tmp_path, text, cli=cli)) == expected


def test_a_merge_no_view_can_run_says_which_values_came_from_the_code(tmp_path: pathlib.Path) -> None:
    cfg = load(tmp_path, cli={"layout.KV.max_nodes": "2"})
    with pytest.raises(ConfigError) as caught:
        _hosted(cfg)
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith("layout.KV: max_nodes (2) is below min_nodes (3)"), text
    assert "min_nodes=3" in text and "come from the code's policy" in text and "set them in the table too" in text


# --------------------------------------------------------------------------- core config
def test_core_config_converts_ms_to_seconds(tmp_path: pathlib.Path) -> None:
    text = """
[timeouts]
heartbeat_ms = 20
suspicion_ms = 250
join_retry_ms = 750
[multicast]
window_size = 64
window_bytes = 5000
max_batch = 16
max_message_size = 4096
null_interval_ms = 2.5
"""
    core = load(tmp_path, text).core_config()
    assert isinstance(core, CoreConfig)
    assert core.membership == MembershipConfig(heartbeat_interval=0.02, suspicion_timeout=0.25, join_retry=0.75)
    assert core.multicast == MulticastConfig(
        window_size=64,
        window_bytes=5000,
        null_interval=0.0025,
        max_batch=16,
        max_message_size=4096,
        objects=ObjectPolicy(threshold=4096),  # large objects on; the threshold never above the message limit
    )


def test_default_core_config_matches_core_defaults() -> None:
    """The core's defaults are the file's, large objects aside: on in a node, off in a bare core."""
    assert NodeConfig().core_config() == CoreConfig(multicast=MulticastConfig(objects=ObjectPolicy()))


# --------------------------------------------------------------------------- bad configs
BAD: list[tuple[str, str | None, dict[str, str], dict[str, str], tuple[str, ...]]] = [
    # (case, file text, env, cli, fragments the message must contain: field first)
    ("id not an int (env)", None, {"DERECHO_NODE_ID": "abc"}, {},
     ('node.id: expected an integer >= 0, got "abc"', "DERECHO_NODE_ID")),
    ("id negative (cli)", None, {}, {"node.id": "-1"}, ("node.id must be >= 0", "--set node.id")),
    ("id float", "[node]\nid = 1.5\n", {}, {}, ("node.id: expected an integer", "node.toml")),
    ("id beyond 32 bits", None, {}, {"node.id": str(2**70)}, ("node.id must be <= 4294967295", "--set node.id")),
    ("allow-list not ids", "[security]\nallowed_members = [1, \"two\"]\n", {}, {},
     ("security.allowed_members[1]: expected an integer",)),
    ("allow-list repeats (env)", None, {"DERECHO_SECURITY_ALLOWED_MEMBERS": "1,2,1"}, {},
     ("security.allowed_members[2]", "twice")),
    ("insecure and certificates", "[security]\ninsecure = true\ncerts_dir = \"/etc/c\"\n", {}, {},
     ("security.insecure = true contradicts",)),
    ("receive budget too small", None, {}, {"security.receive_budget_bytes": "10"}, ("security.receive_budget_bytes",)),
    ("id bool", "[node]\nid = true\n", {}, {}, ("node.id: expected an integer", "true")),
    ("id string in file", '[node]\nid = "3"\n', {}, {}, ("node.id",)),
    ("listen no port", '[node]\nlisten = "localhost"\n', {}, {},
     ('node.listen: expected "host:port", got "localhost"',)),
    ("listen port range", None, {}, {"node.listen": "h:70000"}, ("node.listen", "70000")),
    ("listen bare ipv6", '[node]\nlisten = "::1:7000"\n', {}, {}, ("node.listen", "[::1]:7000")),
    ("listen not str", "[node]\nlisten = 7000\n", {}, {}, ("node.listen",)),
    ("contact bad", '[node]\ncontacts = ["a:1", "b"]\n', {}, {}, ("node.contacts[1]",)),
    ("contact port 0", None, {"DERECHO_NODE_CONTACTS": "a:0"}, {}, ("node.contacts[0]", "1..65535")),
    ("contact twice", '[node]\ncontacts = ["a:1", "a:1"]\n', {}, {}, ("node.contacts[1]", "twice")),
    ("contacts a string", '[node]\ncontacts = "a:1"\n', {}, {}, ("node.contacts: expected a list",)),
    ("log level", None, {}, {"node.log_level": "LOUD"}, ("node.log_level", "DEBUG, INFO")),
    ("on_partition", None, {}, {"node.on_partition": "wait"}, ("node.on_partition", "rejoin, exit")),
    ("empty cluster", '[node]\ncluster = ""\n', {}, {}, ("node.cluster",)),
    ("newline data_dir", '[node]\ndata_dir = "a\\nb"\n', {}, {}, ("node.data_dir",)),
    ("unknown key", "[timeouts]\nhearbeat_ms = 5\n", {}, {},
     ('unknown key "timeouts.hearbeat_ms" (known: heartbeat_ms, ', 'mean "timeouts.heartbeat_ms"',
      "node.toml")),
    ("unknown section", "[nodes]\nid = 1\n", {}, {}, ("unknown section [nodes]", "[node]")),
    ("top-level key", "id = 1\n", {}, {}, ('unknown top-level key "id"',)),
    ("section not a table", "node = 1\n", {}, {}, ("node: expected a table",)),
    ("unknown cli key", None, {}, {"multicast.window": "3"}, ('unknown key "multicast.window"',)),
    ("unknown cli section", None, {}, {"nodes.id": "3"}, ("unknown section [nodes]",)),
    ("unknown env key", None, {"DERECHO_NODE_IDD": "3"}, {},
     ("DERECHO_NODE_IDD", "did you mean DERECHO_NODE_ID")),
    ("suspicion below heartbeat", "[timeouts]\nheartbeat_ms = 200\nsuspicion_ms = 100\n", {}, {},
     ("timeouts.suspicion_ms (100) must exceed timeouts.heartbeat_ms (200)",)),
    ("suspicion equal heartbeat", None, {}, {"timeouts.suspicion_ms": "50"},
     ("timeouts.suspicion_ms (50) must exceed",)),
    ("zero heartbeat", "[timeouts]\nheartbeat_ms = 0\n", {}, {}, ("timeouts.heartbeat_ms must be >= 1",)),
    ("connect timeout", None, {"DERECHO_TIMEOUTS_CONNECT_TIMEOUT_MS": "1.5"}, {},
     ("timeouts.connect_timeout_ms",)),
    ("window zero", "[multicast]\nwindow_size = 0\n", {}, {}, ("multicast.window_size must be >= 1",)),
    ("byte window zero", "[multicast]\nwindow_bytes = 0\n", {}, {}, ("multicast.window_bytes must be >= 1",)),
    ("batch zero", None, {}, {"multicast.max_batch": "0"}, ("multicast.max_batch must be >= 1",)),
    ("null interval negative", "[multicast]\nnull_interval_ms = -1.0\n", {}, {},
     ("multicast.null_interval_ms must be >= 0",)),
    ("null interval nan", None, {}, {"multicast.null_interval_ms": "nan"}, ("multicast.null_interval_ms",)),
    ("null interval text", None, {}, {"multicast.null_interval_ms": "fast"},
     ("multicast.null_interval_ms: expected a number",)),
    ("message beyond frame", "[multicast]\nmax_message_size = 100\nmax_frame_bytes = 100\n", {}, {},
     ("multicast.max_message_size (100) must be below multicast.max_frame_bytes (100)",)),
    ("layout min_nodes", "[layout.KV]\nmin_nodes = 0\n", {}, {}, ("layout.KV.min_nodes", "at least 1")),
    ("layout max below min", "[layout.KV]\nmin_nodes = 3\nmax_nodes = 2\n", {}, {},
     ("layout.KV.max_nodes", "below min_nodes")),
    ("layout shards type", '[layout.KV]\nshards = "2"\n', {}, {}, ("layout.KV.shards", "must be an int")),
    ("layout overlapping type", "[layout.KV]\noverlapping = 1\n", {}, {}, ("layout.KV.overlapping",)),
    ("layout reserved count", "[layout.KV]\nshards = 2\nreserved = [[1]]\n", {}, {},
     ("layout.KV.reserved", "shards=2")),
    ("layout reserved flat", "[layout.KV]\nreserved = [1, 2]\n", {}, {},
     ("layout.KV.reserved: expected a list with one list",)),
    ("layout reserved twice", "[layout.KV]\nreserved = [[1, 1]]\n", {}, {}, ("layout.KV.reserved", "twice")),
    ("layout reserved across types", "[layout.A]\nreserved = [[1]]\n[layout.B]\nreserved = [[1]]\n",
     {}, {}, ("layout.B.reserved", "reserved by both")),
    ("layout unknown key", "[layout.KV]\nshard = 2\n", {}, {},
     ('unknown key "layout.KV.shard"', 'did you mean "layout.KV.shards"')),
    ("layout not a table", "[layout]\nKV = 3\n", {}, {}, ("layout.KV: expected a table",)),
    ("layout cli int", None, {}, {"layout.KV.shards": "two"}, ("layout.KV.shards: expected an integer",)),
    ("layout cli bool", None, {}, {"layout.KV.overlapping": "maybe"}, ("layout.KV.overlapping",)),
    ("layout cli reserved", None, {}, {"layout.KV.reserved": "[[1"}, ("layout.KV.reserved",)),
    ("layout cli no type", None, {}, {"layout.shards": "2"}, ("layout.shards",)),
    ("layout empty name", '[layout.""]\nshards = 1\n', {}, {}, ("layout.",)),
    ("cli value not text", None, {}, {"node.id": 3},  # type: ignore[dict-item]
     ("node.id",)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "env", "cli", "fragments"),
    [pytest.param(text, env, cli, fragments, id=case) for case, text, env, cli, fragments in BAD],
)
def test_bad_config_names_the_field_on_one_line(
    tmp_path: pathlib.Path,
    text: str | None,
    env: dict[str, str],
    cli: dict[str, str],
    fragments: tuple[str, ...],
) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env=env, cli=cli)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        load_config(None, {"node.id": "x"}, environ={})


def test_missing_file_is_named(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "absent.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert "absent.toml" in str(info.value)
    assert "not found" in str(info.value)


def test_directory_is_named(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path), environ={})
    assert str(tmp_path) in str(info.value)


def test_toml_syntax_error_names_file_and_line(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "[node]\nid = 1\nlisten = = 3\n", "broken.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert "broken.toml" in message and "line 3" in message and "invalid TOML" in message
    assert "\n" not in message


def test_toml_error_at_end_of_file_names_a_line(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "[node]\ncontacts = [\n", "open.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert "open.toml" in str(info.value) and "line " in str(info.value)


def test_invalid_utf8_names_file_and_line(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bytes.toml"
    path.write_bytes(b'[node]\ncluster = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(path), environ={})
    assert "bytes.toml" in str(info.value) and "line 2" in str(info.value)


def test_utf8_bom_is_accepted(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf[node]\nid = 5\n")
    assert load_config(str(path), environ={}).node.id == 5


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"^node\.id must be >= 0"):
        NodeSection(id=-1)
    with pytest.raises(ConfigError, match=r"^timeouts\.suspicion_ms"):
        TimeoutsSection(heartbeat_ms=100, suspicion_ms=100)
    with pytest.raises(ConfigError, match=r"^multicast\.window_size"):
        MulticastSection(window_size=True)  # type: ignore[arg-type]
    assert NodeSection(contacts=["a:1"]).contacts == ("a:1",)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^timeouts: expected a TimeoutsSection"):
        NodeConfig(timeouts=MulticastSection())  # type: ignore[arg-type]


def test_security_section_and_tls_paths() -> None:
    cfg = load_config(
        None,
        {"security.certs_dir": "/etc/derecho/certs", "security.allowed_members": "1,2,3", "node.id": "2"},
        environ={},
    )
    sec = cfg.security
    assert sec.allowed_members == (1, 2, 3) and sec.tls_configured and not sec.insecure
    assert sec.tls_paths(2) == (
        "/etc/derecho/certs/ca.crt",
        "/etc/derecho/certs/node-2.crt",
        "/etc/derecho/certs/node-2.key",
    )
    explicit = load_config(None, {"security.certs_dir": "/c", "security.cert_file": "/k8s/tls.crt"}, environ={})
    assert explicit.security.tls_paths(1)[1] == "/k8s/tls.crt"
    assert not NodeConfig().security.tls_configured  # a node without certificates must opt out explicitly


def test_long_paths_are_shown_whole(tmp_path: pathlib.Path) -> None:
    deep = tmp_path.joinpath(*(["a-rather-long-folder-name"] * 12))
    with pytest.raises(ConfigError) as info:
        load_config(str(deep / "the-config-file.toml"), environ={})
    assert "the-config-file.toml" in str(info.value) and len(str(deep)) > 250


RDMC_REFUSALS = [
    ({"rdmc.schedule": "ring"}, "rdmc.schedule: expected one of sequential, chain, binomial"),
    ({"rdmc.block_size": "100"}, "rdmc.block_size"),
    ({"rdmc.window_blocks": "0"}, "rdmc.window_blocks"),
    ({"rdmc.max_object_size": str(2 << 30), "rdmc.max_bytes_in_flight": str(1 << 30)}, "max_bytes_in_flight"),
    (
        {"rdmc.enabled": "true", "rdmc.block_size": str(64 << 20)},
        "rdmc.block_size .* must fit multicast.max_frame_bytes",
    ),
]


@pytest.mark.parametrize(("overrides", "why"), RDMC_REFUSALS)
def test_rdmc_settings_are_checked(overrides: dict[str, str], why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        load_config(None, environ={}, overrides=overrides)


def test_rdmc_settings_reach_the_core() -> None:
    cfg = load_config(None, environ={}, overrides={"rdmc.enabled": "true", "rdmc.schedule": "CHAIN"})
    policy = cfg.core_config().multicast.objects
    assert policy is not None and policy.kind.value == "chain" and policy.threshold == cfg.rdmc.threshold_bytes
    small = load_config(None, environ={}, overrides={"multicast.max_message_size": "65536"})
    assert small.core_config().multicast.objects.threshold == 65536  # type: ignore[union-attr]  # never above
    off = load_config(None, environ={}, overrides={"rdmc.enabled": "false"})
    assert off.core_config().multicast.objects is None
