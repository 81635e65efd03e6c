"""A local Redis Cluster on loopback for tests: three masters, no replicas."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import redis as redis_lib

from service.store.server import find_redis_server, free_port

SLOTS = 16384


class LocalCluster:
    """Starts N redis-server processes with cluster mode on, assigns the slots, joins them."""

    def __init__(self, folder: Path, masters: int = 3):
        self.folder = Path(folder)
        self.ports: list[int] = []
        while len(self.ports) < masters:  # free_port may hand the same free port out twice
            port = _cluster_port()
            if port not in self.ports:
                self.ports.append(port)
        self.processes: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        """URL of one node (any node will do for a cluster client)."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def __enter__(self) -> LocalCluster:
        try:
            return self._start()
        except BaseException:
            self.__exit__()  # never leave half a cluster running
            raise

    def _start(self) -> LocalCluster:
        binary = find_redis_server()
        for port in self.ports:
            node_dir = self.folder / str(port)
            node_dir.mkdir(parents=True)
            self.processes.append(
                subprocess.Popen(
                    [
                        binary,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--dir",
                        str(node_dir),
                        "--appendonly",
                        "no",
                        "--save",
                        "",
                        "--logfile",
                        "redis.log",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        nodes = [self._wait(port) for port in self.ports]
        share = SLOTS // len(nodes)
        for index, node in enumerate(nodes):
            last = SLOTS if index == len(nodes) - 1 else (index + 1) * share
            node.execute_command("CLUSTER ADDSLOTS", *range(index * share, last))
        for node in nodes[1:]:
            node.execute_command("CLUSTER MEET", "127.0.0.1", self.ports[0])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = [n.execute_command("CLUSTER INFO") for n in nodes]
            if all(
                _field(s, "cluster_state") == "ok"
                and _field(s, "cluster_known_nodes") == str(len(nodes))
                for s in states
            ):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("the local cluster did not become ready")
        for node in nodes:
            node.close()
        return self

    def __exit__(self, *exc) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(10)

    @staticmethod
    def _wait(port: int) -> redis_lib.Redis:
        client = redis_lib.Redis(host="127.0.0.1", port=port, decode_responses=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.ping()
                return client
            except redis_lib.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"cluster node on port {port} did not start")


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is a valid, free port too."""
    for _ in range(1000):
        port = free_port()
        if port + 10000 < 65536 and _free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _field(info, name: str) -> str | None:
    if isinstance(info, dict):
        value = info.get(name)
        return None if value is None else str(value)
    for line in str(info).splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    return None
