"""Conformance of the key -> pose -> Plücker camera path against a fixture set's `camera.safetensors`.

Each stage is fed the fixture's own input for that stage (so one wrong
stage fails alone); `camera/c2ws_plucker_emb_from_keys` then runs the whole
chain from the action string. Sizes come from the set's fixture_meta.json.
Every stage follows the set's control type: `act` sets get ray directions
plus the W/A/S/D state of every fourth frame (`camera/wasd_action_sub`),
`cam` sets ray origins plus directions.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from inference.conformance import Check, Fixture, compare
from inference.controls import KEY_INDEX, CameraRig
from inference.models import camera

F32 = dict(atol=1e-6, rtol=1e-5)  # float32 tensors recomputed with float64 intermediates


def action_string_keys(action: str) -> np.ndarray:
    """Reference action DSL (`w-4,wj-3,none-2`: keys-frames runs) -> (frames, 8) 0/1 float32, columns w,a,s,d,i,j,k,l."""
    rows: list[np.ndarray] = []
    for part in action.replace(" ", "").split(","):
        keys, sep, count = part.rpartition("-")
        if not sep or not count.isdigit() or int(count) < 1:
            raise ValueError(f"action segment {part!r}: expected <keys>-<frames>, e.g. w-3 or none-2")
        row = np.zeros(len(KEY_INDEX), dtype=np.float32)
        for key in "" if keys.lower() == "none" else keys.lower():
            if key not in KEY_INDEX:
                raise ValueError(f"action segment {part!r}: key {key!r} is not one of w,a,s,d,i,j,k,l")
            row[KEY_INDEX[key]] = 1.0
        rows.extend([row] * int(count))
    return np.stack(rows)


def trajectory(keys: np.ndarray) -> np.ndarray:
    """(F, 8) key rows -> (F+1, 4, 4) poses: identity, then the pose after each row."""
    return np.concatenate([np.eye(4)[None], CameraRig().advance(keys)])


def condition_from_keys(fixture: Fixture) -> np.ndarray:
    """The whole clip's camera condition (1, C, L, h, w) from the set's action string alone, in its control type."""
    meta = fixture.meta["camera"]
    keys = action_string_keys(meta["action_string"])
    intrinsics = fixture.arrays("camera.safetensors")["intrinsics_480x832"]
    return camera.clip_camera_condition(trajectory(keys), intrinsics, int(meta["h"]), int(meta["w"]),
                                        frame_num=int(meta["frame_num_arg"]),
                                        chunk_size=int(fixture.meta.get("rollout", {}).get("chunk_size", 3)),
                                        wasd=keys[:, :4] if fixture.control_type == "act" else None)


def run(fixture: Fixture) -> Iterator[Check]:
    meta = fixture.meta["camera"]
    h, w = int(meta["h"]), int(meta["w"])
    chunk = int(fixture.meta.get("rollout", {}).get("chunk_size", 3))
    act = fixture.control_type == "act"
    ref = fixture.arrays("camera.safetensors")

    keys = action_string_keys(meta["action_string"])
    yield compare("camera/keys_wasdijkl", keys, ref["keys_wasdijkl"], atol=0, rtol=0)
    traj = trajectory(ref["keys_wasdijkl"])
    yield compare("camera/c2ws_traj", traj, ref["c2ws_traj"], atol=1e-9, rtol=0)

    frames = camera.usable_frame_count(len(ref["c2ws_traj"]), int(meta["frame_num_arg"]))
    used = ref["c2ws_traj"][:frames]
    yield compare("camera/c2ws_used", used, ref["c2ws_used"], atol=0, rtol=0,
                  note=f"frame_num {frames}")
    ks = camera.scale_intrinsics(ref["intrinsics_480x832"][0], h, w)
    yield compare("camera/Ks_transformed", ks, ref["Ks_transformed"], atol=1e-6, rtol=1e-6)
    times = camera.latent_sample_times(frames, chunk)
    yield compare("camera/tgt_indices", times, ref["tgt_indices"], atol=0, rtol=0)
    yield compare("camera/Ks", np.broadcast_to(ks, (len(times), 4)), ref["Ks"], atol=1e-6, rtol=1e-6)

    interp = camera.interpolate_poses(ref["c2ws_used"], ref["tgt_indices"])
    yield compare("camera/c2ws_interp", interp, ref["c2ws_interp"], **F32)
    rel = camera.relative_poses(ref["c2ws_interp"])
    yield compare("camera/c2ws_rel", rel, ref["c2ws_rel"], **F32)
    per_pixel = camera.plucker_rays(ref["c2ws_rel"], ref["Ks"], h, w, directions_only=act)
    if act:
        states = camera.latent_wasd(ref["keys_wasdijkl"][:, :4], frames, len(times))
        yield compare("camera/wasd_action_sub", states, ref["wasd_action_sub"], atol=0, rtol=0)
        per_pixel = camera.act_pixels(per_pixel, ref["wasd_action_sub"])
    yield compare("camera/c2ws_plucker_emb", camera.fold_pixel_blocks(per_pixel),
                  ref["c2ws_plucker_emb"], **F32, note=f"control_type {fixture.control_type}")

    yield compare("camera/c2ws_plucker_emb_from_keys", condition_from_keys(fixture), ref["c2ws_plucker_emb"], **F32,
                  note=f"lat_f {int(meta['lat_f'])}")
