"""``Root.search_dns``: a name with several addresses gives the root a node at each. The name
resolves through ``/etc/hosts`` in a mount namespace of the test's own (``unshare --mount``
and a bind mount over ``/etc/hosts``, which needs root), in a child Python process: glibc's
getaddrinfo gives every line of the name, as DNS gives every A record of a headless service.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import Cluster

NAME = "nodes.pcluster.test"


def test_search_dns_adds_a_node_at_every_address_of_the_name(cluster: Cluster, tmp_path: Path) -> None:
    unshare = subprocess.run(["unshare", "--mount", "true"], stderr=subprocess.DEVNULL)
    if unshare.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("`unshare --mount` fails: CI must run the DNS test as root")
        pytest.skip("`unshare --mount` needs root")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n" + "".join(f"{h} {NAME}\n" for h in cluster.node_hosts))
    script = textwrap.dedent(
        f"""
        import pcluster
        root = pcluster.Root()
        print(root.search_dns({NAME!r}, {cluster.node_port}))
        print(",".join(sorted(root.nodes())))
        root.close()
        """
    )
    in_namespace = ["unshare", "--mount", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts)]
    out = subprocess.run(
        in_namespace + [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    added, nodes = out.stdout.split()
    assert int(added) == len(cluster.node_hosts) == 2
    assert nodes.split(",") == sorted(cluster.nodes)
