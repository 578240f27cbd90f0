"""The paged KV-cache block allocator of PagedAttention (Kwon et al., SOSP 2023).

Kwon, Li, Zhuang, Sheng, Zheng, Yu, Gonzalez, Zhang, Stoica: "Efficient Memory
Management for Large Language Model Serving with PagedAttention", SOSP 2023
(the vLLM paper, arXiv:2309.06180).

The KV cache is cut into fixed-size *blocks* of ``block_size`` token slots. A sequence
owns a *block table*, the list of physical block ids holding its tokens in order, so
token ``i`` lives in *slot* ``block_table[i // block_size] * block_size + i % block_size``
(:func:`slot_for`, the one home of that formula; :func:`cdiv` the one ceiling division).
Blocks come from a free list and only the last block of a sequence can be partly
empty: waste is bounded by ``block_size - 1`` slots per sequence, instead of the
reserved-but-unused tail that contiguous allocation pays (see :mod:`inferlab.paging_sim`).

Because a block table is an indirection, blocks can be *shared*:

- ``fork`` gives a child sequence the parent's whole table (parallel sampling, beam
  search) and bumps each block's ``ref_count``. The first ``append`` that would write
  into a block someone else also holds does *copy-on-write*: it takes a fresh block and
  returns ``(src_block, dst_block)`` so the KV cache copies the slots over (paper §4.4).
- With ``enable_prefix_caching=True`` every *full* block is keyed by a chained hash of
  (parent block's hash, its token ids), so that two sequences with the same prefix
  (a shared system prompt) map it to the same physical blocks (paper §4.4, vLLM's
  automatic prefix caching). The hash is only a lookup key: a hit also compares the
  stored token ids and checks that the cached block was computed after the very same
  physical parent block (id and generation), so even a hash collision cannot hand a
  sequence KV computed for another prefix. A cached block whose last user is freed
  stays cached but counts as free; it is evicted, least recently used first, only
  when a fresh block is needed.

Every call that cannot be served raises :class:`OutOfBlocks` *before* changing anything,
so a scheduler can catch it and preempt or wait. Names follow vLLM and nano-vllm
(block table, slot, ref_count, hash).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable, Sequence
from typing import Any

__all__ = ["Block", "BlockAllocator", "OutOfBlocks", "block_hash", "cdiv", "slot_for", "slot_mapping"]

NO_HASH = None  # the chain's start: the parent hash of a sequence's first block


class OutOfBlocks(RuntimeError):
    """The block pool cannot serve a call. The allocator is unchanged.

    ``needed`` and ``free`` say how many blocks the call needed and how many were free.
    """

    def __init__(self, what: str, needed: int, free: int):
        self.needed, self.free = needed, free
        super().__init__(
            f"{what}: needs {needed} free KV block(s) but only {free} are free. "
            "Free or preempt a sequence (or wait for one to finish), or build the "
            "allocator with more blocks."
        )


def cdiv(a: int, b: int) -> int:
    """Ceiling division: how many blocks of ``b`` slots hold ``a`` tokens."""
    return -(-a // b)


def slot_for(block_table: Sequence[int], position: int, block_size: int) -> int:
    """The KV-cache slot of token ``position``: its block's first slot plus its offset.

    The one place the paged address is computed (Kwon et al. 2023, §4.2): a block table
    maps logical block ``position // block_size`` to a physical block. Works on ints and,
    vectorized, on tensors (``block_table`` ``[blocks]`` or ``[rows, blocks]``, ``position`` any shape).
    """
    index = position // block_size
    # a batch of tables ([rows, blocks] tensor) is indexed on its last axis; a list directly
    blocks = block_table[..., index] if getattr(block_table, "ndim", 1) > 1 else block_table[index]
    return blocks * block_size + position % block_size


def slot_mapping(block_table: Sequence[int], start: int, end: int, block_size: int) -> list[int]:
    """Slots of tokens ``start..end-1`` of one sequence, for writing their K/V."""
    return [slot_for(block_table, i, block_size) for i in range(start, end)]


def block_hash(parent_hash: int | None, token_ids: Sequence[int]) -> int:
    """Chained hash of a full block: its own tokens *and* everything before it.

    Chaining through the parent's hash makes the key depend on the whole prefix, so
    block 3 of two prompts matches only when blocks 0–3 all match.
    """
    return hash((parent_hash, tuple(token_ids)))


class Block:
    """One physical KV block: how many tables hold it, and its cache key when cached.

    ``generation`` counts how often the block was handed out fresh, so ``(block_id,
    generation)`` names one particular content; ``parent`` is that name for the block
    before it in the sequence that filled it (None for a first block).
    """

    __slots__ = ("block_id", "ref_count", "hash", "parent", "token_ids", "generation")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.generation = 0
        self.hash: int | None = None  # set only while the block is in the prefix cache
        self.parent: tuple[int, int] | None = None
        self.token_ids: tuple[int, ...] = ()

    def __repr__(self) -> str:
        return f"Block(id={self.block_id}, ref_count={self.ref_count}, cached={self.hash is not None})"


class _Seq:
    """Per-sequence bookkeeping: block table, token ids and chain hashes of full blocks."""

    __slots__ = ("block_table", "token_ids", "block_hashes", "num_cached_tokens")

    def __init__(self) -> None:
        self.block_table: list[int] = []
        self.token_ids: list[int] = []
        self.block_hashes: list[int] = []  # chain hash of each full block (prefix caching)
        self.num_cached_tokens = 0


class BlockAllocator:
    """Fixed-size KV blocks from a free list, a block table per sequence, ref counts.

    >>> a = BlockAllocator(num_blocks=8, block_size=4)
    >>> a.allocate("s0", [1, 2, 3, 4, 5])      # 5 tokens -> 2 blocks
    [0, 1]
    >>> a.fork("s0", "s1"); a.append("s1", 9)  # s1 writes into shared block 1: copy-on-write
    (1, 2)
    >>> a.block_table("s1"), a.num_free_blocks
    ([0, 2], 5)
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False):
        if not isinstance(num_blocks, int) or num_blocks < 1:
            raise ValueError(f"num_blocks must be a positive int, got {num_blocks!r}")
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = bool(enable_prefix_caching)
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_block_ids: deque[int] = deque(range(num_blocks))  # free and not cached
        self.evictable: OrderedDict[int, None] = OrderedDict()  # cached, ref_count 0, LRU first
        self.hash_to_block_id: dict[int, int] = {}
        self.seqs: dict[Hashable, _Seq] = {}
        self.reset_stats()

    # ------------------------------------------------------------------ queries
    @property
    def num_free_blocks(self) -> int:
        """Blocks a new request can get: never-used or freed ones plus evictable cached ones."""
        return len(self.free_block_ids) + len(self.evictable)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    @property
    def num_cached_blocks(self) -> int:
        """Blocks currently in the prefix cache (in use or evictable)."""
        return len(self.hash_to_block_id)

    def __contains__(self, seq_id: Hashable) -> bool:
        return seq_id in self.seqs

    def __len__(self) -> int:
        return len(self.seqs)

    def block_table(self, seq_id: Hashable) -> list[int]:
        """A copy of the sequence's block table (physical block ids, in token order)."""
        return list(self._seq(seq_id).block_table)

    def num_tokens(self, seq_id: Hashable) -> int:
        return len(self._seq(seq_id).token_ids)

    def num_cached_tokens(self, seq_id: Hashable) -> int:
        """Leading prompt tokens found in the prefix cache (a multiple of ``block_size``).

        The engine can skip computing their KV. Always less than the prompt length, so at
        least one token is computed to produce logits.
        """
        return self._seq(seq_id).num_cached_tokens

    def ref_count(self, block_id: int) -> int:
        return self.blocks[block_id].ref_count

    def slot(self, seq_id: Hashable, position: int) -> int:
        """The KV-cache slot of token ``position``: ``block * block_size + offset``."""
        return slot_for(self._seq(seq_id).block_table, position, self.block_size)

    def slot_mapping(self, seq_id: Hashable, start: int = 0, end: int | None = None) -> list[int]:
        """Slots of tokens ``start..end-1`` (default: all), for writing K/V of those tokens."""
        seq = self._seq(seq_id)
        end = len(seq.token_ids) if end is None else end
        return slot_mapping(seq.block_table, start, end, self.block_size)

    def can_allocate(self, num_tokens: int | Sequence[int]) -> bool:
        """Could ``allocate`` succeed for a prompt of this many tokens (or these token ids)?

        Given a count, it ignores prefix-cache hits (conservative); given token ids it
        counts them exactly as ``allocate`` would.
        """
        if isinstance(num_tokens, int):
            return cdiv(num_tokens, self.block_size) <= self.num_free_blocks
        needed, _, _ = self._plan_allocate(list(num_tokens))
        return needed <= self.num_free_blocks

    def can_append(self, seq_id: Hashable) -> bool:
        """Could ``append`` succeed (it needs a fresh block on a block boundary or for CoW)?"""
        return self._append_needs_block(self._seq(seq_id)) <= self.num_free_blocks

    # ------------------------------------------------------------------ mutations
    def allocate(self, seq_id: Hashable, token_ids: Sequence[int]) -> list[int]:
        """Give a new sequence blocks for its prompt; returns its block table.

        With prefix caching, leading full blocks already cached are shared (ref_count + 1)
        instead of allocated, and ``num_cached_tokens(seq_id)`` says how many tokens that
        covers. The last prompt token is never served from the cache.
        """
        if seq_id in self.seqs:
            raise ValueError(f"sequence {seq_id!r} is already allocated; free it first")
        token_ids = list(token_ids)
        if not token_ids:
            raise ValueError("allocate needs at least one token id")
        needed, hits, hashes = self._plan_allocate(token_ids)
        if needed > self.num_free_blocks:
            raise OutOfBlocks(f"allocate({seq_id!r}, {len(token_ids)} tokens)", needed, self.num_free_blocks)

        seq = _Seq()
        seq.token_ids = token_ids
        seq.block_hashes = hashes
        for block_id in hits:  # take hits first so that fresh blocks cannot evict them
            self._take_cached(block_id)
            seq.block_table.append(block_id)
        for i in range(len(hits), cdiv(len(token_ids), self.block_size)):
            block = self._take_free()
            seq.block_table.append(block.block_id)
            if i < len(hashes):  # a full prompt block: it can be cached now
                self._cache(block, hashes[i], self._parent(seq.block_table, i), self._block_tokens(seq, i))
        seq.num_cached_tokens = len(hits) * self.block_size
        self.stats["prefix_queries_blocks"] += len(hashes) if self.enable_prefix_caching else 0
        self.stats["prefix_hit_blocks"] += len(hits)
        self.stats["prefix_hit_tokens"] += seq.num_cached_tokens
        self.seqs[seq_id] = seq
        return list(seq.block_table)

    def append(self, seq_id: Hashable, token_id: int) -> tuple[int, int] | None:
        """Add one token to a sequence; returns ``(src, dst)`` when copy-on-write happened.

        A fresh block is taken when the token starts a new block. When it lands in a
        partly filled block that another sequence also holds (after ``fork``), the
        sequence gets a private copy: the caller must copy KV block ``src`` into ``dst``.
        When the token fills its block and prefix caching is on, the block is cached.
        """
        seq = self._seq(seq_id)
        n, bs = len(seq.token_ids), self.block_size
        cow = None
        if n % bs == 0:
            if not self.free_block_ids and not self.evictable:
                raise OutOfBlocks(f"append({seq_id!r})", 1, 0)
            seq.block_table.append(self._take_free().block_id)
        else:
            last = self.blocks[seq.block_table[-1]]
            if last.ref_count > 1:
                if not self.free_block_ids and not self.evictable:
                    raise OutOfBlocks(f"append({seq_id!r}) copy-on-write", 1, 0)
                new = self._take_free()
                last.ref_count -= 1
                seq.block_table[-1] = new.block_id
                cow = (last.block_id, new.block_id)
                self.stats["cow_copies"] += 1
        seq.token_ids.append(token_id)
        if self.enable_prefix_caching and (n + 1) % bs == 0:
            self._on_block_full(seq)
        return cow

    def fork(self, parent_id: Hashable, child_id: Hashable) -> None:
        """Give ``child_id`` the parent's blocks, shared (ref_count + 1 each); no copy yet."""
        parent = self._seq(parent_id)
        if child_id in self.seqs:
            raise ValueError(f"sequence {child_id!r} already exists; fork needs a new id")
        child = _Seq()
        child.block_table = list(parent.block_table)
        child.token_ids = list(parent.token_ids)
        child.block_hashes = list(parent.block_hashes)
        child.num_cached_tokens = parent.num_cached_tokens
        for block_id in child.block_table:
            self.blocks[block_id].ref_count += 1
        self.stats["forks"] += 1
        self.seqs[child_id] = child

    def free(self, seq_id: Hashable) -> None:
        """Drop a sequence; blocks nobody else holds go back to the pool.

        Cached blocks stay cached (and evictable); they are released tail first so that
        the ends of prompts are evicted before their shared beginnings.
        """
        seq = self.seqs.pop(seq_id, None)
        if seq is None:
            raise KeyError(f"unknown sequence {seq_id!r}")
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                if block.hash is not None:
                    self.evictable[block_id] = None
                else:
                    self.free_block_ids.append(block_id)

    def reset_stats(self) -> None:
        """Zero the counters in ``stats``."""
        self.stats: dict[str, int] = dict.fromkeys(
            ("prefix_queries_blocks", "prefix_hit_blocks", "prefix_hit_tokens", "evictions", "cow_copies", "forks"), 0
        )

    def snapshot(self) -> dict[str, Any]:
        """The full state as plain data (for tests and drawings): equal snapshots, equal state."""
        return {
            "free_block_ids": list(self.free_block_ids),
            "evictable": list(self.evictable),
            "hash_to_block_id": dict(self.hash_to_block_id),
            "blocks": [(b.ref_count, b.hash, b.parent, b.token_ids, b.generation) for b in self.blocks],
            "seqs": {
                k: (list(s.block_table), list(s.token_ids), list(s.block_hashes), s.num_cached_tokens)
                for k, s in self.seqs.items()
            },
            "stats": dict(self.stats),
        }

    def __repr__(self) -> str:
        return (
            f"BlockAllocator(num_blocks={self.num_blocks}, block_size={self.block_size}, "
            f"free={self.num_free_blocks}, seqs={len(self.seqs)}, "
            f"prefix_caching={self.enable_prefix_caching})"
        )

    # ------------------------------------------------------------------ internals
    def _seq(self, seq_id: Hashable) -> _Seq:
        try:
            return self.seqs[seq_id]
        except KeyError:
            raise KeyError(f"unknown sequence {seq_id!r}") from None

    def _parent(self, table: list[int], i: int) -> tuple[int, int] | None:
        """The identity (block id, generation) of block ``i - 1`` of a table."""
        return (table[i - 1], self.blocks[table[i - 1]].generation) if i else None

    def _block_tokens(self, seq: _Seq, i: int) -> tuple[int, ...]:
        return tuple(seq.token_ids[i * self.block_size : (i + 1) * self.block_size])

    def _plan_allocate(self, token_ids: list[int]) -> tuple[int, list[int], list[int]]:
        """Without changing anything: free blocks needed, cache hits, chain hashes of full blocks."""
        bs = self.block_size
        total = cdiv(len(token_ids), bs)
        hashes: list[int] = []
        hits: list[int] = []
        if not self.enable_prefix_caching:
            return total, hits, hashes
        parent = NO_HASH
        lookup = (len(token_ids) - 1) // bs  # full blocks that may hit: never the last token
        for i in range(len(token_ids) // bs):
            tokens = tuple(token_ids[i * bs : (i + 1) * bs])
            h = block_hash(parent, tokens)
            hashes.append(h)
            if len(hits) == i and i < lookup:
                block_id = self.hash_to_block_id.get(h)
                if block_id is not None:
                    b = self.blocks[block_id]
                    # The hash only finds a candidate; same tokens after the same parent proves it.
                    if b.token_ids == tokens and b.parent == self._parent(hits, i):
                        hits.append(block_id)
            parent = h
        # Hits on evictable blocks come out of the free pool; hits on in-use blocks are free.
        needed = total - len(hits) + sum(1 for b in hits if self.blocks[b].ref_count == 0)
        return needed, hits, hashes

    def _append_needs_block(self, seq: _Seq) -> int:
        n = len(seq.token_ids)
        if n % self.block_size == 0:
            return 1
        return 1 if self.blocks[seq.block_table[-1]].ref_count > 1 else 0

    def _take_free(self) -> Block:
        """A block for new tokens: a never-cached one if any, else evict the LRU cached one."""
        if self.free_block_ids:
            block = self.blocks[self.free_block_ids.popleft()]
        else:
            block_id, _ = self.evictable.popitem(last=False)
            block = self.blocks[block_id]
            del self.hash_to_block_id[block.hash]
            block.hash, block.parent, block.token_ids = None, None, ()
            self.stats["evictions"] += 1
        block.generation += 1
        block.ref_count = 1
        return block

    def _take_cached(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.evictable[block_id]
        block.ref_count += 1

    def _cache(self, block: Block, h: int, parent: tuple[int, int] | None, tokens: tuple[int, ...]) -> None:
        """Register a full block under its chain hash, unless that hash is already cached."""
        if h in self.hash_to_block_id:
            return
        block.hash, block.parent, block.token_ids = h, parent, tokens
        self.hash_to_block_id[h] = block.block_id

    def _on_block_full(self, seq: _Seq) -> None:
        i = len(seq.token_ids) // self.block_size - 1
        parent = seq.block_hashes[i - 1] if i else NO_HASH
        tokens = self._block_tokens(seq, i)
        h = block_hash(parent, tokens)
        seq.block_hashes.append(h)
        block = self.blocks[seq.block_table[i]]
        if block.hash is None:
            self._cache(block, h, self._parent(seq.block_table, i), tokens)
