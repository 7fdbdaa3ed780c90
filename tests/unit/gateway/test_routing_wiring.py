"""spec.routing reaches the gateway's routes: in local mode (from the YAML) and in the cluster
gateway (from the watched ModelServices); a policy change takes effect for new requests."""

from __future__ import annotations

from pathlib import Path

from kubeplex.gateway import Gateway, Replica, Route
from kubeplex.gateway._discovery import desired, parse_modelservice
from kubeplex.operator.local import LocalMode
from kubeplex.runtime.routing import Policy

DEMO = Path(__file__).resolve().parents[3] / "examples" / "local" / "demo.yaml"


def test_local_mode_routes_each_model_with_its_spec_routing(tmp_path: Path) -> None:
    default = LocalMode.prepare([DEMO], workdir=tmp_path / "a")
    assert default.gateway.routers["llama-8b"].policy is Policy.PREFIX_AWARE
    spec = tmp_path / "demo.yaml"
    spec.write_text(DEMO.read_text().replace("  engine: sim\n",
                                             "  engine: sim\n  routing: round-robin\n", 1))
    mode = LocalMode.prepare([spec], workdir=tmp_path / "b")
    assert mode.gateway.routers["llama-8b"].policy is Policy.ROUND_ROBIN


def test_a_local_sim_replica_indexes_its_kv_capacity(tmp_path: Path) -> None:
    mode = LocalMode.prepare([DEMO], workdir=tmp_path / "a")
    run = mode.runs["default/llama-8b"]

    class Group:
        id, url = "g1", "http://127.0.0.1:1"

    replica = run.replica(Group())  # type: ignore[arg-type]
    profile = run.config.profile
    assert profile is not None
    assert replica.cache_tokens == profile.kv_capacity_tokens(run.template.memory_share) > 0


def test_the_cluster_gateway_reads_spec_routing_and_defaults_it() -> None:
    def obj(routing: object) -> dict[str, object]:
        spec = {"model": {"uri": "hf://x/y"}} | ({"routing": routing} if routing else {})
        return {"metadata": {"name": "m", "namespace": "a"}, "spec": spec}

    assert parse_modelservice(obj("least-loaded")).route.routing == "least-loaded"  # type: ignore[union-attr]
    assert parse_modelservice(obj(None)).route.routing == "prefix-aware"  # type: ignore[union-attr]
    assert parse_modelservice(obj("random")).route.routing == "prefix-aware"  # type: ignore[union-attr]
    entry = parse_modelservice(obj("round-robin"))
    assert entry is not None
    routes, _ = desired([entry], [])
    assert routes["a/m"].routing == "round-robin"


async def test_changing_the_policy_keeps_the_replicas() -> None:
    gw = Gateway({"m": "default/m"}, hold_timeout=1, hold_limit=1, retry_after=lambda r: 1.0)
    gw.add(Replica("m", "g1", "http://127.0.0.1:1"))
    gw.add(Replica("m", "g2", "http://127.0.0.1:2"))
    gw.set_routes({"m": Route.of_key("m", "default/m", "round-robin")})
    assert gw.routers["m"].policy is Policy.ROUND_ROBIN
    picks = {gw._pick("m").group for _ in range(4)}  # type: ignore[union-attr]
    assert picks == {"g1", "g2"}
    gw.remove("m", "g1")
    assert gw._pick("m").group == "g2"  # type: ignore[union-attr]
