"""A real multi-node Ray cluster on this machine, started with `ray start` like a user would.

Each node has its own --temp-dir and its own ports, all below Ray's default worker range
(10002-19999 is avoided by giving every node its own worker range) and below Linux's ephemeral
ports. Ray 2.60 needs RAY_AUTH_MODE=disabled for a second node without a shared token. Only the
processes this helper started are stopped, by PID (never `ray stop`: it kills every Ray on the
host, including other test runs')."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).parent / "ray")
ENV = {
    **os.environ,
    "RAY_AUTH_MODE": "disabled",
    # notice a SIGKILLed node in ~3 s instead of ~30 s, so its tasks are retried sooner
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}
PORT_FLAGS = (
    "--node-manager-port",
    "--object-manager-port",
    "--dashboard-agent-grpc-port",
    "--dashboard-agent-listen-port",
    "--metrics-export-port",
    "--runtime-env-agent-port",
)


@dataclass
class Node:
    temp_dir: Path
    pids: set[int] = field(default_factory=set)


@dataclass
class LocalCluster:
    root: Path
    base_port: int = 21000 + (os.getpid() % 50) * 60  # per test process: runs can coexist
    nodes: list[Node] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.base_port}"

    def add_node(self, num_cpus: int = 1, num_gpus: int = 0) -> Node:
        """Start the head (first call) or a node that joins it; returns once it is up."""
        k = len(self.nodes)
        node = Node(self.root / f"node{k}")
        ports = range(self.base_port + 10 * k + 1, self.base_port + 10 * k + 10)
        worker_min = 24000 + (os.getpid() % 50) * 150 + 50 * k
        args = [f"--temp-dir={node.temp_dir}", f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}"]
        args += [f"{flag}={port}" for flag, port in zip(PORT_FLAGS, ports, strict=False)]
        args += [f"--min-worker-port={worker_min}", f"--max-worker-port={worker_min + 49}"]
        args += ["--disable-usage-stats"]
        if k == 0:
            args += ["--head", f"--port={self.base_port}", "--include-dashboard=false"]
            args += [f"--ray-client-server-port={ports[-1]}", f"--dashboard-port={ports[-2]}"]
        else:
            args += [f"--address={self.address}"]
        done = subprocess.run([RAY, "start", *args], env=ENV, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"ray start failed: {done.stderr[-2000:]}")
        node.pids = self._pids(node)
        self.nodes.append(node)
        return node

    def _pids(self, node: Node) -> set[int]:
        """The node's daemons (their command lines name its temp dir) and all their children."""
        pids: set[int] = set()
        for p in psutil.process_iter(["pid", "cmdline"]):
            if str(node.temp_dir) in " ".join(p.info["cmdline"] or []):
                pids.add(p.pid)
                pids.update(c.pid for c in _children(p))
        return pids

    def kill(self, node: Node) -> None:
        """SIGKILL a node: its daemons and every worker they started (found again now, since
        workers come and go)."""
        pids = node.pids | self._pids(node)
        procs = []
        for pid in pids:
            try:
                procs.append(psutil.Process(pid))
                procs.extend(_children(procs[-1]))
            except psutil.NoSuchProcess:
                pass
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)

    def shutdown(self) -> None:
        for node in reversed(self.nodes):
            self.kill(node)


def _children(p: psutil.Process) -> list[psutil.Process]:
    try:
        return p.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
