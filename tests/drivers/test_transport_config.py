"""``node.transport`` (runtime.config): its values, the refusals, and where it comes from."""

from __future__ import annotations

import pytest

from runtime.config import NodeConfig, NodeSection, SecuritySection, load_config
from runtime.errors import ConfigError

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("given, stored", [("auto", "auto"), ("TCP", "tcp"), (" shm ", "shm"), ("RDMA", "rdma")])
def test_the_transports_there_are(given: str, stored: str) -> None:
    assert NodeSection(transport=given).transport == stored


def test_the_default_is_auto() -> None:
    assert NodeSection().transport == "auto"


def test_rdma_needs_tls() -> None:
    """Whether pyverbs and a device are here is found at start (tests/drivers/test_rdma_verbs.py)."""
    with pytest.raises(ConfigError, match='node.transport = "rdma" needs TLS'):
        NodeConfig(node=NodeSection(transport="rdma"), security=SecuritySection(insecure=True))
    assert NodeConfig(node=NodeSection(transport="rdma")).node.transport == "rdma"


def test_an_unknown_transport_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="node.transport: expected one of auto, tcp, shm, rdma, got"):
        NodeSection(transport="udp")


def test_shm_needs_tls() -> None:
    with pytest.raises(ConfigError, match='node.transport = "shm" needs TLS'):
        NodeConfig(node=NodeSection(transport="shm"), security=SecuritySection(insecure=True))
    NodeConfig(node=NodeSection(transport="auto"), security=SecuritySection(insecure=True))  # auto: TCP then


def test_the_environment_sets_it() -> None:
    config = load_config(None, environ={"DERECHO_NODE_TRANSPORT": "tcp", "DERECHO_SECURITY_INSECURE": "true"})
    assert config.node.transport == "tcp"
