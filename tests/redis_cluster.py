"""Start a private 3-master Redis Cluster on free ports, for the cluster runs of the suite."""

from __future__ import annotations

import shutil
import subprocess
import time

from tests.redis_server import RedisServer, free_port


class RedisClusterNodes:
    """Three `redis-server --cluster-enabled yes` joined by `redis-cli --cluster create`."""

    def __init__(self, masters: int = 3) -> None:
        if shutil.which("redis-cli") is None:
            raise RuntimeError("redis-cli not found on PATH (apt-get install redis-tools)")
        self.nodes = [
            RedisServer(port=port, extra_args=["--cluster-enabled", "yes", "--cluster-config-file",
                                               f"nodes-{port}.conf", "--cluster-node-timeout", "5000"])
            for port in _free_ports(masters)
        ]

    @property
    def url(self) -> str:
        """Any one node is all a client needs; it discovers the rest."""
        return self.nodes[0].url

    def start(self) -> RedisClusterNodes:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        self._wait_until_ok()
        return self

    def _wait_until_ok(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = [
                subprocess.run(["redis-cli", "-p", str(node.port), "cluster", "info"],
                               capture_output=True, text=True, timeout=5).stdout
                for node in self.nodes
            ]
            if all("cluster_state:ok" in state for state in states):
                return
            time.sleep(0.1)
        raise RuntimeError("the test cluster did not reach cluster_state:ok")

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


def _free_ports(count: int) -> list[int]:
    """Ports whose cluster bus port (+10000) is free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port + 10000 < 65536 and port not in ports:
            ports.append(port)
    return ports
