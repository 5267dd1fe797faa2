"""The coordinator's Prometheus metrics and its service-discovery page.

Prometheus is pointed at the coordinator only: `/targets` (Prometheus HTTP service
discovery) lists every member that serves metrics, with its role, so workers
started later are scraped without editing any file.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from cluster.coordinator.history_log import HistoryLog
from cluster.coordinator.membership import Membership
from cluster.coordinator.state_service import StateService
from cluster.plumbing.metrics import ReadAtScrape, new_registry, pump_metrics, targets_page
from cluster.plumbing.security import Gatekeeper
from cluster.plumbing.zmqio import Pump

FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                 0.25, 0.5, 1.0)
ROLES = ("gateway", "worker")


class FanOut(Protocol):
    """The counts the coordinator keeps as it hands published messages, and an
    outside publisher's broadcasts and pushes, to gateways."""

    history_skipped: int  # not sent to a gateway that holds no member of the group
    relayed: int  # an outside publisher's broadcasts and pushes handed on
    relay_skipped: int  # its broadcasts not sent to a gateway that holds no member
    relay_refused: int  # with data that is not text or bytes, or for no gateway


class CoordinatorMetrics:
    """Reads, when Prometheus scrapes, the parts it is given; those the coordinator
    makes in `start` (the state service, its pump) are given then (`watch`)."""

    def __init__(self, membership: Membership, fan_out: FanOut, history_log: HistoryLog | None,
                 gatekeeper: Gatekeeper | None) -> None:
        self.membership = membership
        self.fan_out = fan_out
        self.history_log = history_log
        self.gatekeeper = gatekeeper
        self.state: StateService | None = None
        self.pump: Pump | None = None
        self.target = ""  # our own metrics endpoint, once bound
        self.registry = new_registry()
        self.fsync = Histogram("cluster_state_fsync_duration_seconds",
                               "Time of each fsync of the state log",
                               buckets=FSYNC_BUCKETS, registry=self.registry)
        self.registry.register(ReadAtScrape(self.read))

    def watch(self, state: StateService, pump: Pump) -> None:
        self.state = state
        self.pump = pump

    def read(self) -> Iterable[Any]:
        # Not "role": discovery gives every target a `role` label already.
        members = GaugeMetricFamily("cluster_coordinator_members",
                                    "Live members of the cluster, by role",
                                    labels=["member_role"])
        counts = dict.fromkeys(ROLES, 0)
        for member in self.membership.members.values():
            counts[member.role] = counts.get(member.role, 0) + 1
        for role, count in sorted(counts.items()):
            members.add_metric([role], count)
        yield members
        yield CounterMetricFamily("cluster_coordinator_history_skipped",
                                  "Published messages not sent to a gateway, which holds "
                                  "no member of their group", value=self.fan_out.history_skipped)
        yield CounterMetricFamily("cluster_coordinator_relayed",
                                  "An outside publisher's broadcasts and pushes handed on to "
                                  "gateways", value=self.fan_out.relayed)
        yield CounterMetricFamily("cluster_coordinator_relay_skipped",
                                  "An outside publisher's broadcasts not sent to a gateway, "
                                  "which holds no member of their group",
                                  value=self.fan_out.relay_skipped)
        yield CounterMetricFamily("cluster_coordinator_relay_refused",
                                  "An outside publisher's broadcasts and pushes refused: data "
                                  "not text or bytes, or no such gateway",
                                  value=self.fan_out.relay_refused)
        if self.history_log is not None:
            yield CounterMetricFamily("cluster_coordinator_history_refused",
                                      "Published messages dropped: not writable to "
                                      "history.log (disk full)",
                                      value=self.history_log.refused)
        yield GaugeMetricFamily("cluster_coordinator_membership_sequence",
                                "Changes to the membership since start",
                                value=self.membership.seq)
        state = self.state
        if state is not None:
            yield GaugeMetricFamily("cluster_state_keys", "Keys in the shared state",
                                    value=len(state.store.data))
            yield GaugeMetricFamily("cluster_state_sequence",
                                    "Sequence number of the last committed state batch",
                                    value=state.store.seq)
            yield CounterMetricFamily("cluster_state_operations",
                                      "State operations applied", value=state.ops_total)
            yield GaugeMetricFamily("cluster_state_log_bytes",
                                    "Size of the state log since the last snapshot",
                                    value=state.wal.bytes if state.wal is not None else 0)
            yield GaugeMetricFamily("cluster_state_writable",
                                    "1 while the state log takes writes; 0 while they are "
                                    "refused (disk full, I/O error)", value=int(state.writable))
            yield CounterMetricFamily("cluster_state_refused_unwritable",
                                      "State writes refused because the log could not be "
                                      "written", value=state.refused_unwritable)
        if self.pump is not None:
            yield from pump_metrics({"members": self.pump})
        if self.gatekeeper is not None:
            yield self.gatekeeper.metric()

    def targets(self) -> tuple[bytes, str]:
        """Prometheus HTTP service discovery: one target group per metrics endpoint."""
        own = {"targets": [self.target], "labels": {"role": "coordinator",
                                                    "member": "coordinator"}}
        return targets_page(self.membership.snapshot(),
                            own if self.target else None)
