"""The world map end to end: real aiortc drones with poses, the gateway, a real embedded Triton serving a tiny
metric synthetic model (its depth is not the scene's: this is about the flow). ``/map.ply`` is read back with
Open3D and the fleet bag's ``/map`` with mcap + mcap_ros2; ``--map-drones`` fuses only the listed drones."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import open3d as o3d
import pytest
from gateway_fixtures import TOKEN, camera_for, drones, photo, running_gateway
from serving_fixtures import metric_tiny_repository, serve
from test_gateway_map import MAP, from_map, local_maps
from test_gateway_poses import FPS, send_poses
from test_map_topic import assert_is_snapshot
from test_rosbag import read_bag

from dronedepth.contract import MODEL_NAME
from dronedepth.gateway.inference import TritonDepthClient
from dronedepth.gateway.pipeline import ProcessingConfig
from dronedepth.serving import EmbeddedTriton


@pytest.fixture(scope="module")
def metric_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedTriton]:
    """An embedded Triton serving the tiny model declared metric (depth 0.5 to 4.5 m from the luma)."""
    with serve(metric_tiny_repository(tmp_path_factory, max_depth_m=10), tmp_path_factory) as server:
        yield server


async def test_two_selected_drones_fill_the_map_read_back_from_ply_and_the_fleet_bag(
    metric_triton: EmbeddedTriton, tmp_path: Path
) -> None:
    client = TritonDepthClient(metric_triton.url, MODEL_NAME, timeout=10)
    settings = dataclasses.replace(MAP, drones=frozenset({"alpha", "bravo"}))
    bags = tmp_path / "bags"
    async with (
        running_gateway(
            client, processing=ProcessingConfig(build_cloud=False), world_map=settings, record_bag_dir=bags
        ) as gateway,
        drones(3, photo(), fps=FPS) as (alpha, bravo, charlie),
    ):
        assert gateway.depth.depth_kind == "metric" and gateway.map_publisher is not None
        for drone, name in ((alpha, "alpha"), (bravo, "bravo"), (charlie, "charlie")):
            await drone.connect(gateway.url, camera=camera_for(), drone_id=name)
        stop = asyncio.Event()
        senders = [asyncio.get_running_loop().create_task(send_poses(d, stop)) for d in (alpha, bravo, charlie)]
        for drone in (alpha, bravo):
            await drone.wait_for(lambda d: len(local_maps(d)) >= 1 and len(from_map(d)) >= 1, what="map data")
        await charlie.wait_for(lambda d: len(d.keypoints) >= 5, what="charlie's results")
        stop.set()
        await asyncio.gather(*senders)

        service = gateway.world_map
        assert service is not None
        counts = service.counts()
        # charlie has poses and metric depth but is not listed: each of its frames is counted, none fused.
        assert counts["fused"] >= 2 and counts["not_selected"] >= 5
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{gateway.url.rstrip('/')}/map.ply", headers={"Authorization": f"Bearer {TOKEN}"}) as reply,
        ):
            assert reply.status == 200
            served = await reply.read()
    # Charlie gets neither map sectors nor local_map.
    assert not local_maps(charlie) and not from_map(charlie)

    (tmp_path / "served.ply").write_bytes(served)
    cloud = np.asarray(o3d.io.read_point_cloud(str(tmp_path / "served.ply")).points)
    assert len(cloud) > 100 and np.isfinite(cloud).all()
    # Occupied voxels: every point on the 0.1 m grid of the ENU map.
    np.testing.assert_allclose(cloud / 0.1, np.rint(cloud / 0.1), atol=1e-3)

    final = service.snapshot("map")
    assert final is not None
    (bag,) = bags.glob("fleet_*")
    maps = read_bag(bag)["/map"]
    assert maps, "no /map in the fleet bag"
    _, schema, last = maps[-1]
    assert schema == "sensor_msgs/msg/PointCloud2"
    assert_is_snapshot(last, final)  # the map published on shutdown is the final map
    assert {path.name.split("_")[0] for path in bags.iterdir()} == {"alpha", "bravo", "charlie", "fleet"}
