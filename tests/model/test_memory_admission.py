"""The lingbot-fast engine admits sessions and test frames by bytes: a clear 'busy' instead of running out."""

import numpy as np
import pytest

from inference.engine.base import ChunkWork, EngineUserError, SessionSpec
from inference.lingbot import admission
from inference.lingbot.engine import SCRATCH_ID, LingbotFastEngine
from inference.tools.make_tiny_checkpoint import make_tiny_checkpoint

SIZE = (48, 32)
GIB = 2**30


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "lingbot-tiny", seed=5)


@pytest.fixture(scope="module")
def limits(model_dir):
    """Planned peaks of one and two open 48*32 sessions on this engine."""
    probe = LingbotFastEngine.from_model_dir(model_dir)
    return probe.memory.planned({SIZE: 1}), probe.memory.planned({SIZE: 2})


def spec(session_id: str) -> SessionSpec:
    return SessionSpec(session_id=session_id, prompt="green hills", seed=1, width=SIZE[0], height=SIZE[1])


def one_chunk(engine: LingbotFastEngine, session_id: str) -> np.ndarray:
    frames = engine.sessions[session_id].expected_frames()
    work = ChunkWork(session_id=session_id, chunk_index=0, poses=np.broadcast_to(np.eye(4), (frames, 4, 4)).copy(),
                     keys=np.zeros((frames, 8), np.float32))
    return engine.generate([work])[0].frames


def test_a_session_past_the_memory_limit_is_refused_busy_and_fits_after_a_close(model_dir, limits):
    """With room for one session, a second open and a test frame get 'busy' naming the GiB; closing frees room."""
    one, two = limits
    engine = LingbotFastEngine.from_model_dir(model_dir, memory_limit_gb=(one + two) / 2 / GIB)
    engine.open_session(spec("first"))
    assert len(one_chunk(engine, "first")) == 9
    with pytest.raises(EngineUserError) as refused:
        engine.open_session(spec("second"))
    assert refused.value.code == "busy"
    assert "session 'second' at 48*32" in str(refused.value) and "--memory-limit-gb" in str(refused.value)
    assert "MiB" in str(refused.value) and "1 session(s) open" in str(refused.value)
    with pytest.raises(EngineUserError, match="a test frame") as test_frame:
        engine.render_test_frame("hills", 0, *SIZE)
    assert test_frame.value.code == "busy" and set(engine.sessions) == {"first"}  # no scratch session left
    engine.close_session("first")
    engine.open_session(spec("second"))
    assert len(one_chunk(engine, "second")) == 9
    engine.close_session("second")
    assert engine.render_test_frame("hills", 0, *SIZE).shape == (SIZE[1], SIZE[0], 3)
    assert SCRATCH_ID not in engine.sessions


def test_a_session_that_does_not_fit_the_free_device_memory_is_refused(model_dir, monkeypatch):
    """When the device reports less free memory than a session's need, the open is refused with both figures."""
    engine = LingbotFastEngine.from_model_dir(model_dir)
    need = engine.memory.need({}, SIZE, slot_free=False)
    small = admission.DeviceMemory(used=0, free=need // 2, total=need)  # a device with half the need free
    monkeypatch.setattr(admission, "measure", lambda device: small)
    with pytest.raises(EngineUserError, match=r"needs [\d.]+ MiB on cpu, [\d.]+ MiB free") as refused:
        engine.open_session(spec("big"))
    assert refused.value.code == "busy" and not engine.sessions and not engine.pools
    monkeypatch.undo()
    engine.open_session(spec("big"))
    engine.close_session("big")


def test_health_reports_memory_and_the_attention_backend(model_dir):
    """health() gives used/planned/free MiB for /status, planned grows with a session, and the backend is the direct CPU path."""
    engine = LingbotFastEngine.from_model_dir(model_dir)
    idle = engine.health()
    assert idle["attention"] == "direct" and idle["memory_used_mb"] > 0 and idle["memory_free_mb"] > 0
    engine.open_session(spec("one"))
    busy = engine.health()
    assert busy["memory_planned_mb"] > idle["memory_planned_mb"] > 0
    engine.close_session("one")


def test_engine_flags_place_the_text_encoder_and_refuse_contradictions(model_dir):
    """--t5-device cpu loads the text encoder into host memory; fp8 with DiT FSDP2 and a CPU text encoder with
    T5 FSDP2 are refused before loading, naming both flags."""
    from inference.engine.__main__ import build_engine, parse_args

    base = ["--engine", "lingbot-fast", "--endpoint", "tcp://127.0.0.1:1", "--model-dir", str(model_dir)]
    engine = build_engine(parse_args(base + ["--t5-device", "cpu"]), None)
    assert next(engine.models.text.model.parameters()).device.type == "cpu"
    assert engine.text_context("hills").device.type == "cpu"
    for flags, words in ((["--weights", "fp8", "--dit-fsdp"], "--weights fp8 with --dit-fsdp"),
                         (["--t5-device", "cpu", "--t5-fsdp"], "--t5-device cpu with --t5-fsdp")):
        with pytest.raises(ValueError, match=words):
            build_engine(parse_args(base + flags), None)
