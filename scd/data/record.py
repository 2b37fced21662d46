"""Record action-conditioned game video (Crafter, Atari) into scd-video-v1 datasets.

Determinism: every episode ``i`` of a recording with base seed ``seed`` gets the episode seed
``seed * EPISODE_SEED_STRIDE + i``. That one integer seeds both the environment and the policy's
``numpy.random.Generator``, and is stored in meta.json, so the same arguments give a bit-identical
dataset and any single episode can be regenerated from its stored seed. Base seeds never share
episode seeds (as long as a recording has at most ``EPISODE_SEED_STRIDE`` episodes), which is how the
benchmark split stays disjoint from training recordings.

Sources:
    "crafter"        crafter.Env, 17 actions, rolled out by :class:`CrafterExplorer`.
    "atari:<Game>"   gymnasium "ALE/<Game>-v5" (minimal action set, frameskip 4, no sticky actions in
                     the emulator), 210x160 frames area-averaged to size x size, rolled out by
                     :class:`StickyRandom`.
"""

from __future__ import annotations

import collections
import importlib.metadata
import itertools
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from scd.data.store import DEFAULT_SHARD_BYTES, DatasetMeta, DatasetWriter, resize_area

RECORDER_VERSION = 1  # bump when a policy or rollout changes what a given seed produces
EPISODE_SEED_STRIDE = 100_000
MAX_TRIES_PER_EPISODE = 20  # full_length recordings give up after this many candidates per episode

# Named evaluation splits (TECO style: a fixed set of full-length episodes). Their seeds are held out: their
# episode seeds (10**11 + j, 10**11 + 10**5 + j) never occur in recordings with base seeds below 10**6, nor in each
# other. crafter-val is for choosing settings (sampler, checkpoint) so that crafter-bench stays a test split.
BENCHMARKS: dict[str, dict[str, Any]] = {
    "crafter-bench": dict(source="crafter", episodes=16, steps=300, seed=1_000_000, size=64, full_length=True),
    "crafter-val": dict(source="crafter", episodes=16, steps=100, seed=1_000_001, size=64, full_length=True),
}


def episode_seed(seed: int, index: int) -> int:
    """Seed of episode ``index`` in a recording with base seed ``seed`` (seeds env and policy)."""
    return seed * EPISODE_SEED_STRIDE + index


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------------------------
# Policies


@dataclass(frozen=True)
class CrafterExplorerParams:
    """Behaviour of the scripted Crafter explorer (see :class:`CrafterExplorer`)."""

    min_run: int = 3  # steps to keep walking in one direction before turning ...
    max_run: int = 10  # ... drawn uniformly from [min_run, max_run]
    p_do: float = 0.8  # chance to 'do' when facing a tree, water, a creature, minable stone ...
    max_do_streak: int = 5  # most consecutive 'do's before walking on
    p_other: float = 0.04  # chance per step of a place_*/make_* action it can afford, or a noop
    p_grass: float = 0.05  # chance to 'do' on grass (collects a sapling 10% of the time)
    hungry_below: int = 5  # at food (drink) <= this, walk to the nearest visible cow (water) ...
    sight: tuple[int, int] = (4, 3)  # ... within this many tiles (x, y): Crafter's 9x7 local view


class CrafterExplorer:
    """Scripted Crafter explorer with sticky movement.

    It walks in one direction for several steps, turns when the run ends or the way is blocked
    (never into lava), turns to fight an adjacent zombie or skeleton, walks to visible cows and
    water when food or drink run low, hits whatever useful it faces (trees, water, cows, zombies,
    skeletons, plants, and stone/coal/iron/diamond once it has the pickaxe), places a table once it
    has the wood and makes a sword and pickaxes beside it, and now and then tries another
    place/make action its inventory affords. It reads only Crafter's public ``info`` (semantic map, position, inventory);
    the player's facing direction is the direction of its last move action, as in Crafter.
    """

    name = "crafter-explorer"
    _MOVES = {1: (-1, 0), 2: (1, 0), 3: (0, -1), 4: (0, 1)}  # move_left, move_right, move_up, move_down

    def __init__(self, params: CrafterExplorerParams, rng: np.random.Generator) -> None:
        import crafter.constants as cc

        self.params, self.rng = params, rng
        self.actions = list(cc.actions)
        self.do = self.actions.index("do")
        # Semantic ids as Crafter's SemanticView assigns them: materials from 1, then these objects.
        self.material_ids = {name: i for i, name in enumerate([None, *cc.materials])}
        objects = ["player", "cow", "zombie", "skeleton", "arrow", "plant"]
        self.object_ids = {name: len(self.material_ids) + i for i, name in enumerate(objects)}
        self.walkable = {self.material_ids[m] for m in cc.walkable}
        self.enemies = {self.object_ids["zombie"], self.object_ids["skeleton"]}
        self.lava = self.material_ids["lava"]
        self.grass = self.material_ids["grass"]
        self.always_hit = {self.material_ids[m] for m in ("tree", "water")} | {
            self.object_ids[o] for o in ("cow", "zombie", "skeleton", "plant")
        }
        self.minable = {  # material -> pickaxe needed
            self.material_ids["stone"]: "wood_pickaxe",
            self.material_ids["coal"]: "wood_pickaxe",
            self.material_ids["iron"]: "stone_pickaxe",
            self.material_ids["diamond"]: "iron_pickaxe",
        }
        # place_* / make_* actions with their item costs, checked against the inventory.
        self.crafts = [(self.actions.index(f"place_{k}"), v["uses"]) for k, v in cc.place.items()]
        self.crafts += [(self.actions.index(f"make_{k}"), v["uses"]) for k, v in cc.make.items()]
        self.make = {k: (self.actions.index(f"make_{k}"), v["uses"]) for k, v in cc.make.items()}
        self.place_table = (self.actions.index("place_table"), cc.place["table"]["uses"])
        self.tools = ("wood_sword", "wood_pickaxe", "stone_pickaxe", "stone_sword")  # made in this order
        self.direction = int(rng.integers(1, 5))
        self.run_left = 0
        self.do_streak = 0

    def _tile(self, info: dict, move: int) -> int:
        semantic, pos = info["semantic"], info["player_pos"]
        x, y = pos[0] + self._MOVES[move][0], pos[1] + self._MOVES[move][1]
        if not (0 <= x < semantic.shape[0] and 0 <= y < semantic.shape[1]):
            return -1  # outside the world: blocked
        return int(semantic[x, y])

    def _worth_hitting(self, tile: int, inventory: dict) -> bool:
        if tile in self.always_hit:
            return True
        if tile in self.minable:
            return inventory.get(self.minable[tile], 0) > 0
        return False

    def act(self, info: dict | None) -> int:
        """Next action index; ``info`` is the dict from the last ``env.step`` (None right after reset)."""
        p, rng = self.params, self.rng
        if info is not None:
            inventory = info["inventory"]
            for move in self._MOVES:  # fight back: face an adjacent zombie or skeleton and keep hitting it
                if self._tile(info, move) in self.enemies:
                    if move == self.direction:
                        return self.do
                    self.direction = move  # moving into an occupied tile only turns the player
                    return move
            front = self._tile(info, self.direction)  # the player faces its last move direction
            hit = self._worth_hitting(front, inventory)
            chance = p.p_do if hit else (p.p_grass if front == self.grass else 0.0)
            if self.do_streak < p.max_do_streak and rng.random() < chance:
                self.do_streak += 1
                return self.do
            craft = self._craft(info)
            if craft is not None:
                return craft
            wanted = set()  # eat and drink when getting low, so episodes last
            if inventory.get("food", 9) <= p.hungry_below:
                wanted.add(self.object_ids["cow"])
            if inventory.get("drink", 9) <= p.hungry_below:
                wanted.add(self.material_ids["water"])
            move = self._seek(info, wanted) if wanted else None
            if move is not None:
                self.direction, self.run_left, self.do_streak = move, 1, 0
                return move
            if rng.random() < p.p_other:
                affordable = [a for a, uses in self.crafts if all(inventory.get(k, 0) >= n for k, n in uses.items())]
                return int(rng.choice([0, *affordable]))
            blocked = front not in self.walkable
            if self.run_left <= 0 or blocked:
                self._turn(info)
        elif self.run_left <= 0:
            self.run_left = int(rng.integers(p.min_run, p.max_run + 1))
        self.do_streak = 0
        self.run_left -= 1
        return self.direction

    def _near(self, info: dict, ids: set[int], radius: int) -> bool:
        semantic, (px, py) = info["semantic"], info["player_pos"]
        window = semantic[max(px - radius, 0) : px + radius + 1, max(py - radius, 0) : py + radius + 1]
        return bool(np.isin(window, list(ids)).any())

    def _craft(self, info: dict) -> int | None:
        """Tool progression: a table when there is wood for it and a tool, then sword and pickaxes beside it."""
        inventory, table = info["inventory"], {self.material_ids["table"]}
        if self._near(info, table, 1):
            for tool in self.tools:
                action, uses = self.make[tool]
                if inventory.get(tool, 0) == 0 and all(inventory.get(k, 0) >= n for k, n in uses.items()):
                    return action
            return None
        action, uses = self.place_table
        wood_needed = uses.get("wood", 0) + 1  # keep one wood for the first tool
        front = self._tile(info, self.direction)
        if inventory.get("wood", 0) >= wood_needed and front in self.walkable and not self._near(info, table, 3):
            return action
        return None

    def _seek(self, info: dict, wanted: set[int]) -> int | None:
        """A move toward the nearest visible tile in ``wanted`` (turns to face it when adjacent), or None."""
        semantic, (px, py) = info["semantic"], info["player_pos"]
        rx, ry = self.params.sight
        x0, y0 = max(px - rx, 0), max(py - ry, 0)
        window = semantic[x0 : px + rx + 1, y0 : py + ry + 1]
        xs, ys = np.nonzero(np.isin(window, list(wanted)))
        if len(xs) == 0:
            return None
        dx, dy = xs + x0 - px, ys + y0 - py
        k = int(np.argmin(np.abs(dx) + np.abs(dy)))
        dx, dy = int(dx[k]), int(dy[k])
        steps = [(abs(dx), 2 if dx > 0 else 1), (abs(dy), 4 if dy > 0 else 3)]  # (distance, move) per axis
        for dist, move in sorted(steps, reverse=True):
            if dist == 0:
                continue
            tile = self._tile(info, move)
            if tile in wanted or (tile in self.walkable):
                return move
        return None

    def _turn(self, info: dict) -> None:
        tiles = {m: self._tile(info, m) for m in self._MOVES}
        free = [m for m, t in tiles.items() if t in self.walkable and m != self.direction]
        safe = [m for m, t in tiles.items() if t != self.lava]
        options = free or safe or list(self._MOVES)
        self.direction = int(options[int(self.rng.integers(len(options)))])
        self.run_left = int(self.rng.integers(self.params.min_run, self.params.max_run + 1))


@dataclass(frozen=True)
class StickyRandomParams:
    """Sticky uniform-random policy: repeat the previous action with probability ``p_repeat``."""

    p_repeat: float = 0.8  # mean run length 1 / (1 - p_repeat) = 5 agent steps


class StickyRandom:
    """Uniform random actions held for geometric run lengths (the first action after reset is random)."""

    name = "sticky-random"

    def __init__(self, num_actions: int, params: StickyRandomParams, rng: np.random.Generator) -> None:
        self.num_actions, self.params, self.rng = num_actions, params, rng
        self.action: int | None = None

    def act(self) -> int:
        if self.action is None or self.rng.random() >= self.params.p_repeat:
            self.action = int(self.rng.integers(self.num_actions))
        return self.action


# --------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class _Episode:
    frames: np.ndarray  # uint8 (n, size, size, 3)
    actions: np.ndarray  # int64 (n,), actions[0] = 0


class _InsertionOrderedSet:
    """Stand-in for the per-chunk ``set`` of objects in crafter's World, iterating in insertion order.

    crafter 1.8.3 despawns a creature by index into a list built from that set, whose order follows
    object ids (memory addresses), so the same seed can evolve differently from run to run.
    """

    def __init__(self, items: Iterable[Any] = ()) -> None:
        self._items = dict.fromkeys(items)

    def add(self, item: Any) -> None:
        self._items[item] = None

    def remove(self, item: Any) -> None:
        del self._items[item]

    def discard(self, item: Any) -> None:
        self._items.pop(item, None)

    def __iter__(self):
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: Any) -> bool:
        return item in self._items


def _order_crafter_chunks(env: Any) -> None:
    """Make a freshly reset crafter.Env deterministic: chunk object sets ordered by world object index."""
    world = env._world
    index = lambda obj: int(world._obj_map[tuple(obj.pos)])  # noqa: E731  position in world._objects
    chunks: collections.defaultdict = collections.defaultdict(_InsertionOrderedSet)
    for key, objs in world._chunks.items():
        chunks[key] = _InsertionOrderedSet(sorted(objs, key=index))
    world._chunks = chunks


class _CrafterSource:
    fps = 10  # nominal playback rate; Crafter has no clock of its own

    def __init__(self, size: int, params: CrafterExplorerParams) -> None:
        import crafter.constants

        self.size, self.params = size, params
        self.action_names = list(crafter.constants.actions)
        self.num_actions = len(self.action_names)

    def describe(self) -> dict[str, Any]:
        return {
            "env": "crafter.Env(size=(size, size), seed=episode_seed, length=None)",
            "crafter_version": _package_version("crafter"),
            "crafter_fix": "per-chunk object sets iterate in insertion order (determinism)",
            "policy": {"name": CrafterExplorer.name, **asdict(self.params)},
        }

    def rollout(self, seed: int, steps: int, tick: Callable[[int], Any]) -> _Episode:
        import crafter

        env = crafter.Env(size=(self.size, self.size), seed=seed, length=None)
        policy = CrafterExplorer(self.params, np.random.default_rng(seed))
        frames, actions, info = [env.reset()], [0], None
        _order_crafter_chunks(env)
        tick(1)
        while len(frames) < steps:
            action = policy.act(info)
            obs, _, done, info = env.step(action)
            frames.append(obs)
            actions.append(action)
            tick(1)
            if done:
                break
        return _Episode(np.stack(frames), np.asarray(actions, dtype=np.int64))


class _AtariSource:
    fps = 15  # 60 Hz emulator / frameskip 4

    def __init__(self, game: str, size: int, params: StickyRandomParams) -> None:
        import ale_py
        import gymnasium

        gymnasium.register_envs(ale_py)
        self.env_id = f"ALE/{game}-v5"
        if self.env_id not in gymnasium.registry:
            known = sorted(k[4:-3] for k in gymnasium.registry if k.startswith("ALE/") and k.endswith("-v5"))
            raise ValueError(
                f"unknown Atari game {game!r} (no gymnasium id {self.env_id}); known games include "
                f"{', '.join(known[:8])}, ..."
            )
        self.size, self.params = size, params
        # Sticky actions come from the policy, so the emulator's own repeat is off: the recorded
        # action is always the one that was executed.
        self.env = gymnasium.make(self.env_id, repeat_action_probability=0.0, full_action_space=False, frameskip=4)
        self.action_names = list(self.env.unwrapped.get_action_meanings())
        self.num_actions = len(self.action_names)
        if self.action_names[0] != "NOOP":
            raise ValueError(f"{self.env_id}: action 0 is {self.action_names[0]!r}, expected NOOP")

    def describe(self) -> dict[str, Any]:
        return {
            "env": f"gymnasium.make({self.env_id!r}, repeat_action_probability=0.0, full_action_space=False, frameskip=4)",
            "resize": "210x160 -> size x size, area average (PIL BOX)",
            "ale_py_version": _package_version("ale-py"),
            "gymnasium_version": _package_version("gymnasium"),
            "policy": {"name": StickyRandom.name, **asdict(self.params)},
        }

    def rollout(self, seed: int, steps: int, tick: Callable[[int], Any]) -> _Episode:
        policy = StickyRandom(self.num_actions, self.params, np.random.default_rng(seed))
        obs, _ = self.env.reset(seed=seed)
        frames, actions = [resize_area(obs, self.size)], [0]
        tick(1)
        while len(frames) < steps:
            action = policy.act()
            obs, _, terminated, truncated, _ = self.env.step(action)
            frames.append(resize_area(obs, self.size))
            actions.append(action)
            tick(1)
            if terminated or truncated:
                break
        return _Episode(np.stack(frames), np.asarray(actions, dtype=np.int64))

    def close(self) -> None:
        self.env.close()


def _make_source(source: str, size: int):
    if source == "crafter":
        return _CrafterSource(size, CrafterExplorerParams())
    if source.startswith("atari:") and len(source) > len("atari:"):
        return _AtariSource(source[len("atari:") :], size, StickyRandomParams())
    raise ValueError(f"unknown source {source!r}: use 'crafter' or 'atari:<Game>' (e.g. atari:Breakout, atari:Pong)")


# --------------------------------------------------------------------------------------------
# Entry points


_WORKER_SOURCE = None  # each recording worker process builds its source once (see _worker_rollout)


def _start_worker(source: str, size: int) -> None:
    global _WORKER_SOURCE
    _WORKER_SOURCE = _make_source(source, size)


def _worker_rollout(ep_seed: int, steps: int) -> _Episode:
    return _WORKER_SOURCE.rollout(ep_seed, steps, lambda n: None)


def _episodes(src, source: str, size: int, seeds: Iterable[int], steps: int, workers: int, tick):
    """Yield (seed, episode) for `seeds` in order: rolled out here, or by `workers` processes (the same episodes,
    since a seed fixes its episode; the pool reads ahead of the consumer and is stopped when it stops)."""
    if workers == 1:
        for ep_seed in seeds:
            yield ep_seed, src.rollout(ep_seed, steps, tick)
        return
    import concurrent.futures
    import multiprocessing

    # fork keeps the caller's imports; a pool made by threads that hold locks would want spawn (not the case here)
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                                initargs=(source, size)) as pool:
        seeds = iter(seeds)
        pending = collections.deque((s, pool.submit(_worker_rollout, s, steps))
                                    for s in itertools.islice(seeds, 2 * workers))
        try:
            while pending:
                ep_seed, future = pending.popleft()
                episode = future.result()
                pending.extend((s, pool.submit(_worker_rollout, s, steps)) for s in itertools.islice(seeds, 1))
                tick(len(episode.frames))
                yield ep_seed, episode
        finally:
            for _, future in pending:
                future.cancel()


def record(
    source: str,
    out_dir: str | os.PathLike,
    episodes: int,
    steps: int,
    seed: int,
    size: int = 64,
    progress: bool = True,
    *,
    overwrite: bool = False,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    full_length: bool = False,
    benchmark: str | None = None,
    workers: int = 1,
) -> DatasetMeta:
    """Roll out ``source`` for ``episodes`` episodes of at most ``steps`` frames and write a dataset.

    Each episode is ``steps`` frames (reset observation included) unless the game ends first
    (e.g. the Crafter player dies). With ``full_length=True`` such episodes are dropped and the next
    candidate seed is tried, so every episode has exactly ``steps`` frames; candidate ``j`` always uses
    ``episode_seed(seed, j)`` and meta.json lists the seeds kept, so this stays deterministic.
    Frames are uint8 ``(size, size, 3)``; ``actions[0] = 0`` and ``actions[t]`` produced frame ``t``.
    ``workers`` > 1 rolls episodes out in that many processes; the dataset is the same bit for bit.
    Returns the metadata written to ``out_dir/meta.json``. ``benchmark`` only labels the recording.
    """
    for name, value, low in (("episodes", episodes, 1), ("steps", steps, 1), ("seed", seed, 0), ("size", size, 8),
                             ("workers", workers, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if episodes > EPISODE_SEED_STRIDE:
        raise ValueError(f"episodes must be at most {EPISODE_SEED_STRIDE} per recording, got {episodes}")
    src = _make_source(source, size)
    writer = DatasetWriter(out_dir, (size, size, 3), shard_bytes=shard_bytes, overwrite=overwrite)
    max_candidates = min(EPISODE_SEED_STRIDE, episodes * MAX_TRIES_PER_EPISODE) if full_length else episodes
    kept = discarded = 0
    try:
        with tqdm(total=episodes * steps, disable=not progress, unit="frame", desc=f"record {source}") as bar:
            seeds = (episode_seed(seed, candidate) for candidate in range(max_candidates))
            rollouts = _episodes(src, source, size, seeds, steps, workers, bar.update)
            for ep_seed, episode in rollouts:
                if len(episode.frames) < steps and full_length:
                    discarded += 1
                    bar.total += len(episode.frames)  # wasted work stays visible
                    bar.set_postfix(discarded=discarded)
                    continue
                bar.update(steps - len(episode.frames))  # an episode that ended early frees its budget
                writer.add_episode(episode.frames, episode.actions, ep_seed)
                kept += 1
                if kept == episodes:
                    rollouts.close()  # stops the workers' read-ahead
                    break
    finally:
        if hasattr(src, "close"):
            src.close()
    recorder = {
        "version": RECORDER_VERSION,
        "source": source,
        "episodes": episodes,
        "steps": steps,
        "seed": seed,
        "size": size,
        "full_length": full_length,
        "discarded_episodes": discarded,
        "episode_seed": f"seed * {EPISODE_SEED_STRIDE} + episode index (seeds env and policy)",
        **src.describe(),
    }
    if benchmark is not None:
        recorder["benchmark"] = benchmark
    if kept < episodes:
        raise ValueError(
            f"only {kept} of {max_candidates} {source} episodes lasted {steps} frames; "
            f"lower steps or drop full_length to record {episodes} episodes"
        )
    return writer.finish(
        source=source,
        num_actions=src.num_actions,
        action_names=src.action_names,
        fps=src.fps,
        recorder=recorder,
    )


def record_benchmark(
    name: str, out_dir: str | os.PathLike, progress: bool = True, *, overwrite: bool = False
) -> DatasetMeta:
    """Regenerate the named benchmark split (see ``BENCHMARKS``) bit for bit into ``out_dir``."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; available: {', '.join(sorted(BENCHMARKS))}")
    return record(out_dir=out_dir, progress=progress, overwrite=overwrite, benchmark=name, **BENCHMARKS[name])
