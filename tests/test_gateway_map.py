"""The world map through a real gateway and real aiortc drones with poses: fusion, 360° obstacles, local_map,
``/map.ply``, ``dronedepth map export``, the occupancy PNG, the metrics and the map saved on shutdown."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import open3d as o3d
from gateway_fixtures import TOKEN, TestDrone, camera_for, drones, photo, running_gateway
from test_gateway_poses import FPS, obstacles, send_poses

from dronedepth import protocol
from dronedepth.cli.map import export_map
from dronedepth.gateway.fusion import MapConfig
from dronedepth.gateway.mapping import MapSettings
from dronedepth.gateway.pipeline import ProcessingConfig

MAP = MapSettings(fusion=MapConfig(voxel_size_m=0.1, max_depth_m=10.0, gate=False), snapshot_period_s=0.0)


def local_maps(drone: TestDrone) -> list[dict[str, Any]]:
    return [m for m in drone.messages if m["type"] == "local_map"]


def from_map(drone: TestDrone) -> list[dict[str, Any]]:
    return [m for m in obstacles(drone) if "map" in m.get("sources", ())]


async def test_two_posed_drones_fill_one_map_served_exported_and_saved(tmp_path: Path) -> None:
    processing = ProcessingConfig(build_cloud=False)
    camera = camera_for()
    record = tmp_path / "record"
    async with (
        running_gateway(processing=processing, world_map=MAP, record_dir=record) as gateway,
        drones(3, photo(), fps=FPS) as (first, second, unposed),
    ):
        stop = asyncio.Event()
        for drone in (first, second, unposed):
            await drone.connect(gateway.url, camera=camera)
        senders = [asyncio.get_running_loop().create_task(send_poses(d, stop)) for d in (first, second)]
        for drone in (first, second):
            await drone.wait_for(lambda d: len(local_maps(d)) >= 1 and len(from_map(d)) >= 1, what="map data")
        await unposed.wait_for(lambda d: len(d.keypoints) >= 5, what="the unposed drone's results")
        stop.set()
        await asyncio.gather(*senders)

        world_map = gateway.world_map
        assert world_map is not None
        counts = world_map.counts()
        assert counts["fused"] >= 2 and counts["no_pose"] >= 5  # the unposed drone's frames, counted

        url = gateway.url.rstrip("/")
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/map.ply") as response:
                assert response.status == 401
            async with http.get(f"{url}/map.ply?frame=odom", headers=bearer) as response:
                assert response.status == 404 and (await response.json())["error"] == "map_empty"
            async with http.get(f"{url}/map.ply?kind=voxels", headers=bearer) as response:
                assert response.status == 400
            async with http.get(f"{url}/map.ply", headers=bearer) as response:
                assert response.status == 200
                served = await response.read()
            async with http.get(f"{url}/api/map.png", headers=bearer) as response:
                assert response.status == 200 and response.headers["X-Map-Frame"] == "map"
                png = await response.read()
            async with http.get(f"{url}/metrics", headers=bearer) as response:
                metrics = await response.text()
        size = await export_map(url, TOKEN, tmp_path / "export.ply", kind="cloud", frame="map", timeout=30.0)
        assert size > 0

    (tmp_path / "served.ply").write_bytes(served)
    cloud = o3d.io.read_point_cloud(str(tmp_path / "served.ply"))
    assert len(cloud.points) > 100
    assert len(o3d.io.read_point_cloud(str(tmp_path / "export.ply")).points) >= len(cloud.points) // 2
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image.ndim == 2 and image.max() > 0
    assert 'dronedepth_map_frames_total{outcome="fused"}' in metrics
    assert 'dronedepth_map_blocks{frame="map"}' in metrics
    assert len(o3d.io.read_point_cloud(str(record / "map_map.ply")).points) > 100  # saved on shutdown

    for drone in (first, second):
        # 360°: 72 sectors with a source each; the camera's own sectors stay the camera's.
        merged = from_map(drone)[-1]
        assert len(merged["distances_m"]) == 72 and len(merged["sources"]) == 72
        assert set(merged["sources"]) <= {"camera", "map", "none"} and "camera" in merged["sources"]
        decoded = protocol.decode(json.dumps(merged))
        assert isinstance(decoded, protocol.ObstaclesMessage) and decoded.sources == tuple(merged["sources"])
        local = protocol.decode(json.dumps(local_maps(drone)[-1]))
        assert isinstance(local, protocol.LocalMapMessage) and local.frame_id == "map"
        assert (local.grid != protocol.LOCAL_MAP_NO_DATA).any()
    assert not local_maps(unposed) and not from_map(unposed)
