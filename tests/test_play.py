"""`scd play`: the engine, the protocol, the page in a real headless Chromium, and Ctrl-C shutdown.

Tiny untrained checkpoints and a tiny context file are written to a tmp dir; the server runs in a thread on a
free port (or, for Ctrl-C, as an `scd play` subprocess)."""

import asyncio
import dataclasses
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from scd.checkpoint import load_model, save_checkpoint
from scd.cli import main
from scd.config import get_preset
from scd.models import build_model
from scd.data import context as context_module
from scd.data.context import load_context, load_context_npz
from scd.play.engine import Engine
from scd.play.server import MAX_MESSAGE_BYTES, PlayServer, Protocol, ProtocolError, key_bindings

CRAFTER_ACTIONS = ["noop", "move_left", "move_right", "move_up", "move_down", "do", "sleep", "place_stone",
                   "place_table", "place_furnace", "place_plant", "make_wood_pickaxe", "make_stone_pickaxe",
                   "make_iron_pickaxe", "make_wood_sword", "make_stone_sword", "make_iron_sword"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def wait_until(condition, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def run_async(coroutine):
    """asyncio.run in a fresh thread: Playwright's sync API keeps an event loop running in this one."""
    result = {}

    def target():
        try:
            result["value"] = asyncio.run(coroutine)
        except BaseException as err:  # re-raised in the test's thread
            result["error"] = err

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    if "error" in result:
        raise result["error"]
    return result.get("value")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Tiny untrained SCD and Causal DiT checkpoints and a context file of 3 episodes x 5 frames."""
    root = tmp_path_factory.mktemp("play")
    torch.manual_seed(0)
    meta = {"data": {"action_names": CRAFTER_ACTIONS}}
    scd = save_checkpoint(root / "scd", build_model(get_preset("scd-tiny")), meta=meta)
    dit = save_checkpoint(root / "dit", build_model(get_preset("dit-tiny")), meta=meta)
    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 256, (3, 5, 8, 8, 3), dtype=np.uint8), 8, axis=2).repeat(8, axis=3)
    actions = rng.integers(0, 17, (3, 5)).astype(np.int64)
    np.savez(root / "context.npz", frames=frames, actions=actions)
    return {"scd": scd, "dit": dit, "context": root / "context.npz", "root": root}


def make_engine(assets, **kw):
    models = {"scd": load_model(assets["scd"]), "dit": load_model(assets["dit"])}
    kw = {"action_names": CRAFTER_ACTIONS, "steps": 2, "context_frames": 3, "window": 4, **kw}
    return Engine(models, load_context_npz(assets["context"]), **kw)


@pytest.fixture(scope="module")
def served(assets):
    """A PlayServer in a background thread on a free port; stopped (and checked) at the end."""
    engine = make_engine(assets)
    server = PlayServer(engine, assets["root"] / "videos", port=0)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    assert server.ready.wait(30), "server did not start"
    yield server
    server.shutdown()
    thread.join(15)
    assert not thread.is_alive(), "server thread did not stop"
    assert not engine._thread.is_alive(), "worker thread did not stop"


# -- engine and key map ----------------------------------------------------------------------------------
def test_a_tap_between_two_frames_still_drives_one_frame_then_the_held_key_rules(assets):
    engine = make_engine(assets)
    sid = engine.open_session()
    engine.set_action(sid, 5)  # tap "do": pressed and released before the next frame
    engine.set_action(sid, 0)
    assert [engine.render_next()[0].action for _ in range(2)] == [5, 0]
    engine.set_action(sid, 1)  # hold move_left
    assert [engine.render_next()[0].action for _ in range(3)] == [1, 1, 1]
    assert list(engine.sessions[sid].action_log) == [5, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="unknown action id 17"):
        engine.set_action(sid, 17)
    with pytest.raises(ValueError, match="no session 7"):
        engine.set_action(7, 1)


def test_without_steps_each_model_renders_with_its_own_sample_steps(assets, tmp_path):
    models = {"scd": load_model(assets["scd"]), "dit": load_model(assets["dit"])}
    models["scd"].config = dataclasses.replace(models["scd"].config, sample_steps=3)
    engine = Engine(models, load_context_npz(assets["context"]), context_frames=3, window=4, steps=None)
    assert (engine.steps_for("scd"), engine.steps_for("dit")) == (3, models["dit"].config.sample_steps)
    engine.open_session()
    engine.render_next()
    assert len(engine.batches["scd"].streamer.schedule) == 4  # S = 3 steps: 4 flow times
    assert Engine(models, load_context_npz(assets["context"]), context_frames=3, window=4,
                  steps=1).steps_for("scd") == 1


def test_each_model_plays_with_the_history_window_it_trained_with_unless_one_is_given(assets, tmp_path):
    from scd.play.engine import DEFAULT_WINDOW, load_models

    meta = {"data": {"action_names": CRAFTER_ACTIONS}, "train": {"clip_len": 5}}
    scd = save_checkpoint(tmp_path / "scd", load_model(assets["scd"]), meta=meta)
    context = load_context_npz(assets["context"])
    models, names, windows = load_models({"scd": scd, "dit": assets["dit"]}, context)
    assert windows == {"scd": 4, "dit": DEFAULT_WINDOW} and names == list(CRAFTER_ACTIONS)
    for name in ("scd", "dit"):
        engine = Engine({name: models[name]}, context, context_frames=3, window=windows, steps=1)
        engine.open_session()
        engine.render_next()
        assert engine.batches[name].streamer.window == windows[name]
    # a model's own sample_window comes before the window it trained with
    model = load_model(assets["scd"])
    model.config = model.config.replace(sample_window=6)
    chosen = save_checkpoint(tmp_path / "chosen", model, meta=meta)
    assert load_models({"scd": chosen}, context)[2] == {"scd": 6}
    with pytest.raises(ValueError, match="no history window for dit"):
        Engine(models, context, context_frames=3, window={"scd": 4})
    with pytest.raises(ValueError, match="exceeds the history --window 2 of scd"):
        Engine(models, context, context_frames=3, window={"scd": 2, "dit": 7})


def test_play_renders_at_the_given_temperature_and_shift_else_each_models_own(assets):
    from scd.sampling import flow_schedule

    models = {"scd": load_model(assets["scd"])}
    models["scd"].config = dataclasses.replace(models["scd"].config, sample_temperature=0.25, sample_shift=0.2)
    context = load_context_npz(assets["context"])
    steps = models["scd"].config.sample_steps
    for given, used in (((None, None), (0.25, 0.2)), ((0.5, 3.0), (0.5, 3.0))):
        engine = Engine(models, context, context_frames=3, window=4, temperature=given[0], shift=given[1])
        engine.open_session()
        engine.render_next()
        assert engine.batches["scd"].streamer.temperature == used[0]
        assert torch.equal(engine.batches["scd"].streamer.schedule, flow_schedule(steps, used[1]))
    with pytest.raises(ValueError, match="--temperature must be a finite number >= 0"):
        Engine(models, context, context_frames=3, window=4, temperature=-1.0)
    with pytest.raises(ValueError, match="--shift must be a finite number > 0"):
        Engine(models, context, context_frames=3, window=4, shift=0.0)


def test_a_long_lived_batch_starts_again_from_frame_0_and_its_sessions_go_on(assets, monkeypatch):
    from scd.play import engine as engine_module

    monkeypatch.setattr(engine_module, "REBASE_FRAMES", 6)
    engine = make_engine(assets)
    sids = [engine.open_session(episode=e) for e in (0, 1)]
    positions = []
    for _ in range(8):
        frames = engine.render_next()
        positions.append(engine.batches["scd"].streamer.stream.cache.position)
    assert positions == [4, 5, 6, 5, 6, 5, 6, 5]  # 3 context frames, then +1 per frame; rejoined from 4 frames
    assert [f.index for f in frames] == [8, 8] and [f.session for f in frames] == sids


def test_switching_model_continues_from_the_session_and_reset_restarts_from_real_frames(assets):
    engine = make_engine(assets)
    sid = engine.open_session(episode=1)
    session = engine.sessions[sid]
    for _ in range(4):
        [frame] = engine.render_next()
    assert frame.index == 4 and frame.pixels.shape == (64, 64, 3) and frame.pixels.dtype == np.uint8
    engine._apply(sid, "model", "dit")
    assert session.model == "dit" and session.frames_generated == 4  # same session, other model
    assert engine.render_next()[0].model == "dit" and list(engine.batches) == ["dit"]
    engine._apply(sid, "reset", 2)
    assert session.episode == 2 and session.frames_generated == 0
    with pytest.raises(ValueError, match="not loaded"):
        engine.request(sid, "model", "far")


def test_sessions_render_in_one_batch_per_model_each_as_it_would_alone(assets):
    """Three worlds: two on the SCD (the second opens two frames later), one on the Causal DiT. At temperature
    0 each session's frames equal those of an engine that plays it alone; pausing or closing a session takes it
    out of its batch and the others go on."""
    engine = make_engine(assets, temperature=0.0)
    first = engine.open_session(episode=0)
    frames = {first: [f.pixels for f in engine.render_next() + engine.render_next()]}
    second, third = engine.open_session(episode=1), engine.open_session(episode=2)
    engine._apply(third, "model", "dit")
    for sid in (second, third):
        frames[sid] = []
    for _ in range(3):
        made = engine.render_next()
        assert sorted(f.session for f in made) == [first, second, third]
        for f in made:
            frames[f.session].append(f.pixels)
    assert engine.batches["scd"].sessions == [first, second] and engine.batches["scd"].streamer.batch == 2
    assert engine.batches["dit"].sessions == [third]
    engine._apply(first, "pause", True)
    engine.close_session(third)
    made = engine.render_next()
    assert [f.session for f in made] == [second] and list(engine.batches) == ["scd"]
    frames[second].append(made[0].pixels)

    for sid, episode, model in ((first, 0, "scd"), (second, 1, "scd"), (third, 2, "dit")):
        alone = make_engine(assets, temperature=0.0)
        engine_sid = alone.open_session(episode=episode)
        alone._apply(engine_sid, "model", model)
        expected = [alone.render_next()[0].pixels for _ in frames[sid]]
        assert np.abs(np.stack(frames[sid]).astype(int) - np.stack(expected)).max() <= 1, sid


def test_context_files_are_validated_and_missing_assets_name_the_way_out(assets, tmp_path, monkeypatch):
    bad = tmp_path / "bad.npz"
    np.savez(bad, frames=np.zeros((2, 3, 64, 64, 3), np.float32), actions=np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match="uint8"):
        load_context_npz(bad)
    np.savez(bad, frames=np.zeros((2, 3, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="lacks the arrays \\['actions'\\]"):
        load_context_npz(bad)
    monkeypatch.setattr(context_module, "DEFAULT_CONTEXT", tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match="--data"):
        load_context(None, 4)
    with pytest.raises(ValueError, match="--context 6"):
        make_engine(assets, context_frames=6)


def test_every_action_gets_its_own_key_for_crafter_and_for_unknown_games():
    crafter = key_bindings(CRAFTER_ACTIONS)
    by_name = {b["name"]: b for b in crafter}
    assert by_name["move_left"]["keys"] == ["KeyA", "ArrowLeft"] and by_name["do"]["keys"] == ["Space"]
    assert by_name["noop"]["keys"] == [] and by_name["make_iron_sword"]["label"] == "6"
    for bindings in (crafter, key_bindings(["NOOP", "FIRE", "UP", "UPRIGHT", "zap", "zip"])):
        keys = [k for b in bindings for k in b["keys"]]
        assert len(keys) == len(set(keys)) and all(b["keys"] for b in bindings[1:])


def test_missing_shipped_checkpoints_give_a_clear_error(assets, monkeypatch, capsys):
    from scd.play import engine

    monkeypatch.setattr(engine, "DEFAULT_CHECKPOINTS", {"scd": assets["root"] / "nope-scd", "dit": assets["root"] / "x"})
    assert main(["play", "--data", str(assets["context"])]) == 2
    assert "shipped checkpoints are missing" in capsys.readouterr().err


def test_benchmark_prints_frames_per_second_and_latency_for_both_models(assets, capsys):
    args = ["play", "--benchmark", "6", "--scd", str(assets["scd"]), "--dit", str(assets["dit"]), "--data",
            str(assets["context"]), "--steps", "2", "--context", "3", "--window", "4"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "6 frames per model and session, 1 session(s)" in out and "SCD streams" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.startswith(("SCD ", "Causal")) and "streams" not in line}
    assert float(rows["SCD"][4]) > 0 and float(rows["Causal"][5]) > 0  # frames/s of both


# -- protocol ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "malformed JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"type": "jump"}', "unknown message type 'jump'"),
        ('{"type": "action", "action": "fly"}', "unknown action 'fly'"),
        ('{"type": "action", "action": 5}', "must be an action name"),
        ('{"type": "action", "action": "do", "path": "/etc/passwd"}', "unexpected fields ['path']"),
        ('{"type": "model", "model": ["scd"]}', "unknown model"),
        ('{"type": "reset", "episode": true}', "must be an integer"),
        ('{"type": "reset", "episode": 3}', "out of range"),
        ('{"type": "pause", "paused": "yes"}', "must be true or false"),
        ('{"type": "action", "action": "' + "x" * MAX_MESSAGE_BYTES + '"}', "exceeds the limit"),
    ],
)
def test_protocol_rejects_bad_messages_with_a_reason(text, message):
    protocol = Protocol(CRAFTER_ACTIONS, ["scd", "dit"], num_episodes=3)
    with pytest.raises(ProtocolError, match=message.replace("[", "\\[").replace("]", "\\]")):
        protocol.parse(text)
    assert protocol.parse('{"type": "action", "action": "do"}') == ("action", 5)
    assert protocol.parse('{"type": "reset"}') == ("reset", None)


def test_the_server_answers_bad_messages_with_errors_and_keeps_streaming(served):
    import aiohttp

    bad = ["{not json", '{"type": "action", "action": "fly"}', '{"type": "pause", "paused": 1}',
           '{"type": "save", "' + "x" * 2000 + '": 1}', b"\x00binary"]

    async def session():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(served.url + "ws") as ws:
                hello = await ws.receive_json(timeout=10)
                assert hello["type"] == "hello" and [a["name"] for a in hello["actions"]] == CRAFTER_ACTIONS
                assert hello["steps"] == {"scd": 2, "dit": 2}  # --steps 2 overrides each model's own
                errors = []
                for message in bad:
                    await (ws.send_bytes(message) if isinstance(message, bytes) else ws.send_str(message))
                frames = 0
                while len(errors) < len(bad) or frames < 3:
                    msg = await ws.receive(timeout=10)
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        n = struct.unpack(">I", msg.data[:4])[0]
                        header = json.loads(msg.data[4 : 4 + n])
                        assert len(msg.data) == 4 + n + header["width"] * header["height"] * 3
                        frames += 1
                    elif msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data)["type"] == "error":
                        errors.append(json.loads(msg.data)["message"])
                    else:
                        assert msg.type == aiohttp.WSMsgType.TEXT, msg
                assert "malformed JSON" in errors[0] and "unknown action 'fly'" in errors[1]
                assert "true or false" in errors[2] and "exceeds the limit" in errors[3] and "binary" in errors[4]
            async with http.ws_connect(served.url + "ws") as ws:  # beyond the hard limit: closed, 1009
                await ws.receive_json(timeout=10)
                await ws.send_str("x" * (128 * 1024))
                while (msg := await ws.receive(timeout=10)).type not in (aiohttp.WSMsgType.CLOSE,
                                                                         aiohttp.WSMsgType.CLOSED):
                    pass
                assert ws.close_code == 1009
            async with http.get(served.url + "videos/..%2f..%2fconfig.json") as response:
                assert response.status == 404  # only files the server wrote itself
            async with http.get(served.url + "ws", headers={"Origin": "http://evil.example"}) as response:
                assert response.status == 403  # another site's page may not connect
            async with http.get(served.url) as response:
                assert response.status == 200 and "scd play" in await response.text()

    run_async(session())


def test_requests_naming_another_host_are_refused_against_dns_rebinding(served):
    import aiohttp

    port = served.port

    async def session():
        async with aiohttp.ClientSession() as http:
            evil = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
            for path in ("", "ws", "static/play.js"):
                async with http.get(served.url + path, headers=evil) as response:
                    assert response.status == 421 and "evil.example" in await response.text()
            async with http.get(served.url, headers={"Host": f"127.0.0.1:{port + 1}"}) as response:
                assert response.status == 421  # right name, wrong port
            for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
                async with http.get(served.url, headers={"Host": host}) as response:
                    assert response.status == 200

    run_async(session())


def test_a_burst_of_valid_commands_does_not_disconnect_a_page_that_reads(served):
    import aiohttp

    async def session():
        async with aiohttp.ClientSession() as http, http.ws_connect(served.url + "ws") as ws:
            mine = served.engine.sessions[(await ws.receive_json(timeout=10))["session"]]
            for i in range(200):  # more than the command queue holds: some are answered "busy", none closes
                await ws.send_str(json.dumps({"type": "pause", "paused": i % 2 == 0}))
            await asyncio.sleep(1.0)  # the client reads meanwhile (aiohttp buffers), the burst settles
            await ws.send_str(json.dumps({"type": "pause", "paused": False}))
            resumed = False
            while not resumed:  # statuses, maybe "busy" errors, then frames once the resume is applied
                msg = await ws.receive(timeout=10)
                assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), msg
                resumed = msg.type == aiohttp.WSMsgType.BINARY and not mine.paused
            assert not ws.closed

    run_async(session())


def frame_header(data: bytes) -> dict:
    (n,) = struct.unpack(">I", data[:4])
    return json.loads(data[4 : 4 + n])


async def frames_of(ws, count: int) -> list[dict]:
    """The headers of the next `count` frames a page receives (text messages skipped)."""
    import aiohttp

    headers = []
    while len(headers) < count:
        msg = await ws.receive(timeout=30)
        if msg.type == aiohttp.WSMsgType.BINARY:
            headers.append(frame_header(msg.data))
    return headers


async def frames_since_episode(ws, episode: int, count: int, stale: int = 32) -> list[dict]:
    """The first frame of `episode` a page receives and the `count - 1` after it; frames of the episode before are
    skipped (at most `stale`: those rendered before the reset may still be on their way)."""
    for _ in range(stale):
        (first,) = await frames_of(ws, 1)
        if first["episode"] == episode:
            return [first] + await frames_of(ws, count - 1)
    raise AssertionError(f"no frame of episode {episode} among the next {stale} frames")


def test_each_page_plays_its_own_world_and_the_worlds_share_one_batch(served):
    import aiohttp

    engine = served.engine

    async def two_pages():
        async with aiohttp.ClientSession() as http, http.ws_connect(served.url + "ws") as one, \
                http.ws_connect(served.url + "ws") as two:
            hellos = [await ws.receive_json(timeout=10) for ws in (one, two)]
            assert not any(hello["shared_world"] for hello in hellos)
            ids = [hello["session"] for hello in hellos]
            await two.send_str(json.dumps({"type": "reset", "episode": 2}))
            await frames_of(one, 3)
            wait_until(lambda: engine.sessions[ids[1]].episode == 2, what="page two's reset")
            got = [await frames_of(one, 3), await frames_since_episode(two, 2, 3)]
            batch = engine.batches["scd"].sessions
            return ids, got, batch

    (a, b), (frames_a, frames_b), batch = run_async(two_pages())
    assert a != b and {a, b} <= set(batch)  # one batched step renders both worlds
    assert {f["session"] for f in frames_a} == {a} and {f["session"] for f in frames_b} == {b}
    assert {f["episode"] for f in frames_a} == {0} and {f["episode"] for f in frames_b} == {2}
    wait_until(lambda: a not in engine.sessions and b not in engine.sessions, what="sessions closed with their pages")


def test_in_a_shared_world_every_page_shows_and_drives_one_session(assets):
    import aiohttp

    engine = make_engine(assets)
    server = PlayServer(engine, assets["root"] / "videos-shared", port=0, shared_world=True)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    assert server.ready.wait(30)

    async def two_pages():
        async with aiohttp.ClientSession() as http, http.ws_connect(server.url + "ws") as one, \
                http.ws_connect(server.url + "ws") as two:
            hellos = [await ws.receive_json(timeout=10) for ws in (one, two)]
            assert all(hello["shared_world"] for hello in hellos)
            ids = [hello["session"] for hello in hellos]
            await two.send_str(json.dumps({"type": "action", "action": "move_up"}))
            wait_until(lambda: 3 in engine.sessions[ids[0]].action_log, what="page two's key")
            return ids, [await frames_of(ws, 2) for ws in (one, two)]

    try:
        ids, frames = run_async(two_pages())
        assert ids[0] == ids[1] == server.shared_session
        assert {f["session"] for page in frames for f in page} == {server.shared_session}
        wait_until(lambda: not engine.sessions[server.shared_session].watched, what="nobody watching")
    finally:
        server.shutdown()
        thread.join(15)
    assert not thread.is_alive()


def test_saved_videos_are_limited_in_number(served, monkeypatch):
    import aiohttp

    from scd.play import server as server_module

    monkeypatch.setattr(server_module, "MAX_VIDEOS", 2)

    async def session():
        names = []
        async with aiohttp.ClientSession() as http, http.ws_connect(served.url + "ws") as ws:
            while len(names) < 3:
                await ws.send_str('{"type": "save"}')
                while (msg := await ws.receive(timeout=30)).type != aiohttp.WSMsgType.TEXT or \
                        json.loads(msg.data)["type"] not in ("saved", "error"):
                    pass
                reply = json.loads(msg.data)
                if reply["type"] == "saved":
                    names.append(reply["name"])
            return names

    names = run_async(session())
    assert list(served.videos) == names[1:] and not (served.out_dir / names[0]).exists()
    assert all((served.out_dir / name).is_file() for name in names[1:])


def test_pages_that_stop_reading_are_evicted_and_a_new_visitor_gets_in(assets, monkeypatch):
    """Raw WebSocket clients that never read (tiny receive buffers) fill every slot; they are dropped."""
    import base64
    import socket

    import aiohttp

    from scd.play import server as server_module

    monkeypatch.setattr(server_module, "MAX_PAGES", 2)
    server = PlayServer(make_engine(assets), assets["root"] / "videos-stall", port=0, stall_seconds=1.0)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    assert server.ready.wait(30)
    silent = []
    try:
        for _ in range(2):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", server.port))
            key = base64.b64encode(os.urandom(16)).decode()
            sock.sendall(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
                         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                         .encode())
            assert sock.recv(12) == b"HTTP/1.1 101"  # connected; from now on it never reads
            silent.append(sock)
        wait_until(lambda: len(server.pages) == 2, what="two silent pages")
        silent_pages = set(server.pages)

        async def visit():
            async with aiohttp.ClientSession() as http:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        async with http.ws_connect(server.url + "ws") as ws:
                            while (await ws.receive(timeout=10)).type != aiohttp.WSMsgType.BINARY:
                                pass  # a frame: this visitor is served
                            return
                    except aiohttp.WSServerHandshakeError as err:
                        assert err.status == 503 and time.monotonic() < deadline, err
                        await asyncio.sleep(0.5)

        run_async(visit())
        wait_until(lambda: not silent_pages & server.pages, what="silent pages evicted")
        assert all(page.transport.is_closing() for page in silent_pages)  # and their connections dropped
    finally:
        for sock in silent:
            sock.close()
        server.shutdown()
        thread.join(15)
    assert not thread.is_alive()


# -- the page in a real browser ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def page(served):
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium chromium-driver; scripts/setup.sh --test)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1100, "height": 760}, accept_downloads=True)
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(served.url)
        yield page
        browser.close()
        assert not errors, errors


def frame_number(page) -> int:
    return int(page.inner_text("#stat-frame"))


def browser_session(served):
    """The session of the browser's page: the newest one (the other tests' pages have gone)."""
    return served.engine.sessions[max(served.engine.sessions)]


def test_page_streams_frames_and_keys_reach_the_model(served, page):
    page.wait_for_function("Number(document.getElementById('stat-frame').textContent) >= 3", timeout=30000)
    assert "this page plays its own world" in page.inner_text("body")
    assert "move_left" in page.inner_text("#legend") and page.inner_text("#stat-model") == "SCD"
    log = browser_session(served).action_log
    for key, action in [("a", 1), ("Space", 5), ("ArrowUp", 3), ("6", 16)]:
        start = len(log)
        page.keyboard.down(key)
        wait_until(lambda: action in list(log)[start:], what=f"action {action} from key {key}")
        page.keyboard.up(key)
    start = len(log)
    wait_until(lambda: len(log) > start + 2 and list(log)[-1] == 0, what="noop once the key is released")
    assert float(page.inner_text("#stat-fps")) > 0 and page.inner_text("#stat-latency").endswith(" ms")


def test_page_switches_model_resets_and_saves_a_video(served, page, tmp_path):
    engine = browser_session(served)
    page.click("#model-dit")
    page.wait_for_function("document.getElementById('stat-model').textContent === 'Causal DiT'")
    before = frame_number(page)
    page.wait_for_function(f"Number(document.getElementById('stat-frame').textContent) > {before + 2}")
    assert engine.model == "dit"

    page.click("#pause")
    wait_until(lambda: engine.paused, what="pause")
    paused_at = engine.frames_generated
    time.sleep(0.3)
    assert engine.frames_generated == paused_at
    page.wait_for_function("document.getElementById('pause').textContent === 'Resume'")
    page.click("#pause")
    wait_until(lambda: engine.frames_generated > paused_at, what="frames after resuming")

    page.click("#next")  # reset to the next context episode
    wait_until(lambda: engine.episode == 1, what="reset to episode 1")
    page.wait_for_function("document.getElementById('model-info').textContent.includes('episode 2 of 3')")

    page.click("#save")
    link = page.wait_for_selector("#download a", timeout=30000)
    with page.expect_download() as info:
        link.click()
    video = tmp_path / "session.mp4"
    info.value.save_as(video)
    data = video.read_bytes()
    assert data[4:8] == b"ftyp" and len(data) > 1000  # an mp4
    assert (served.out_dir / info.value.suggested_filename).read_bytes() == data

    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot))
    from PIL import Image

    image = np.asarray(Image.open(shot).convert("RGB"))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.shape == (760, 1100, 3)
    assert image.std() > 20 and len(np.unique(image.reshape(-1, 3), axis=0)) > 100  # frames and text drawn


# -- Ctrl-C ------------------------------------------------------------------------------------------------
def test_ctrl_c_stops_the_worker_and_the_server_with_exit_code_0(assets, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "scd.cli", "play", "--scd", str(assets["scd"]), "--dit", str(assets["dit"]),
           "--data", str(assets["context"]), "--port", "0", "--steps", "1", "--context", "3", "--window", "4",
           "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert " on http://127.0.0.1:" in line, line + proc.stdout.read()
        url = line.split(" on ")[1].split()[0]

        async def watch_frames():  # the worker is generating when Ctrl-C arrives
            import aiohttp

            async with aiohttp.ClientSession() as http, http.ws_connect(url + "ws") as ws:
                while (await ws.receive(timeout=10)).type != aiohttp.WSMsgType.BINARY:
                    pass
                proc.send_signal(signal.SIGINT)
                while (await ws.receive(timeout=10)).type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    pass

        run_async(watch_frames())
        assert proc.wait(timeout=10) == 0
        assert "scd play: stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
