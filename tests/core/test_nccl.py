"""Which network NCCL used, in every multi-rank GPU row, and the report's flag for a multi-node cell on sockets
(issue 32, item 7). NCCL cannot run here: its log lines are written as NCCL 2.2x words them (the device boundary
faked), and the wiring of training_core/run.py is read back from a row."""

import os
import socket

from harness.rows import on_sockets
from training_core import nccl

IB_LOG = """\
gpu1:4242:4242 [0] NCCL INFO Bootstrap : Using ib0:10.1.0.5<0>
gpu1:4242:4242 [0] NCCL INFO NCCL version 2.27.5+cuda12.9
gpu1:4242:4300 [0] NCCL INFO NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/IB ; OOB ib0:10.1.0.5<0>
gpu1:4242:4300 [0] NCCL INFO Using network IB
"""
SOCKET_LOG = """\
gpu1:4242:4242 [0] NCCL INFO NCCL version 2.27.5+cuda12.9
gpu1:4242:4300 [0] NCCL INFO NET/IB : No device found.
gpu1:4242:4300 [0] NCCL INFO NET/Socket : Using [0]eth0:172.17.0.2<0>
gpu1:4242:4300 [0] NCCL INFO Using network Socket
"""
PLUGIN_LOG = "h:1:1 [0] NCCL INFO Using network AWS Libfabric\n"


def test_the_transport_and_version_are_read_in_nccls_own_words():
    assert nccl.transport_of(IB_LOG.splitlines()) == ("IB", "2.27.5+cuda12.9")
    assert nccl.transport_of(SOCKET_LOG.splitlines()) == ("Socket", "2.27.5+cuda12.9")
    assert nccl.transport_of(PLUGIN_LOG.splitlines()) == ("AWS Libfabric", None)
    assert nccl.transport_of(["nothing here"]) == (None, None)


def test_only_multi_rank_cuda_cells_ask_nccl_for_its_log_and_a_users_nccl_debug_stands(tmp_path):
    assert nccl.wanted("cuda", 2) and not nccl.wanted("cuda", 1) and not nccl.wanted("cpu", 8)
    environ = {}
    assert nccl.prepare(tmp_path, environ) == ["NCCL_DEBUG", "NCCL_DEBUG_SUBSYS", "NCCL_DEBUG_FILE"]
    assert environ == {"NCCL_DEBUG": "INFO", "NCCL_DEBUG_SUBSYS": "INIT,NET",
                       "NCCL_DEBUG_FILE": str(tmp_path / "nccl.%h.%p.log")}
    users = {"NCCL_DEBUG": "WARN"}
    assert nccl.prepare(tmp_path, users) == [] and users == {"NCCL_DEBUG": "WARN"}


def test_the_row_says_version_user_settings_and_transport_from_this_processs_file(tmp_path):
    (tmp_path / f"nccl.{socket.gethostname()}.{os.getpid()}.log").write_text(SOCKET_LOG)
    (tmp_path / "nccl.other.1.log").write_text(IB_LOG)  # another rank's: this process's own file comes first
    environ = {"NCCL_DEBUG": "INFO", "NCCL_DEBUG_SUBSYS": "INIT,NET", "NCCL_DEBUG_FILE": "x",
               "NCCL_SOCKET_IFNAME": "eth0", "NCCL_IB_DISABLE": "1", "PATH": "/bin"}
    described = nccl.describe(tmp_path, list(nccl.SET_HERE), environ=environ)
    assert described["transport"] == "Socket" and described["transport_from"].startswith("nccl.")
    assert described["env"] == {"NCCL_IB_DISABLE": "1", "NCCL_SOCKET_IFNAME": "eth0"}  # not the three set here
    assert described["version"]  # torch's NCCL version (this CPU build reports one), else the log's


def test_without_a_network_line_the_row_says_why_and_a_users_level_is_looked_for_in_the_cell_log(tmp_path):
    described = nccl.describe(tmp_path, list(nccl.SET_HERE), environ={})
    assert described["transport"] is None and "holds none" in described["transport_unknown"]
    log = tmp_path / "log.txt"
    log.write_text("[rank 0] step 1\n" + IB_LOG)
    described = nccl.describe(tmp_path, [], log=log, environ={"NCCL_DEBUG": "INFO"})
    assert described["transport"] == "IB" and described["transport_from"] == "log.txt"
    assert described["env"] == {"NCCL_DEBUG": "INFO"}  # the user's own setting is theirs: kept


def _row(nodes, transport, status="ok"):
    return {"run_id": "a", "status": status, "cell": 3, "spec": {"nodes": nodes},
            "env": {"nccl": {"transport": transport}}}


def test_a_multi_node_row_on_sockets_is_flagged_and_nothing_else_is():
    assert on_sockets(_row(2, "Socket"))
    assert not on_sockets(_row(1, "Socket"))  # one node: NCCL's intra-node paths (P2P, SHM) carry the traffic
    assert not on_sockets(_row(2, "IB")) and not on_sockets(_row(2, None)) and not on_sockets({"spec": {}})


def test_the_report_flags_a_multi_node_cell_that_ran_over_sockets(tmp_path):
    import json
    from pathlib import Path

    from harness.report.render import render
    from harness.store import RowStore

    baseline = Path(__file__).resolve().parents[2] / "results" / "baselines" / "regress_cpu" / "tiny-cpux1"
    first, second = [json.loads(line) for line in (baseline / "rows.jsonl").read_text().splitlines()[:2]]
    store = RowStore(tmp_path / "g")
    for row, transport in ((first, "Socket"), (second, "IB")):
        row.pop("pass", None)
        row["spec"]["nodes"] = 2
        row["env"]["nccl"] = {"transport": transport, "version": "2.27.5", "env": {}}
        store.append(row)
    text = render(tmp_path / "g", tmp_path / "report.md", plots=False).read_text()
    flagged = next(line for line in text.splitlines() if "Over TCP sockets" in line)
    assert f"Over TCP sockets: cell {first['cell']} ran on several nodes" in flagged  # one cell: the IB one is not
