"""The engine's view of the paged KV pool, on top of :class:`inferlab.paging.BlockAllocator`.

The allocator knows *which* blocks a sequence owns; this layer adds what the engine needs:

- admitting a sequence (its prompt, or prompt + outputs when it resumes after preemption)
  and telling how many leading tokens the prefix cache already holds;
- reserving the slot of each newly sampled token before the step that computes it
  (vLLM's ``append_slots``), performing copy-on-write copies in the KV cache;
- knowing which cached blocks really hold computed K/V. The allocator registers a
  prompt's full blocks in the prefix cache when they are *allocated*; with chunked
  prefill a second request could hit a block whose K/V a first request has not computed
  yet (or never will, if it was preempted). We only trust a hit on a block that some
  step has actually filled, and recompute from the first block that no step has.
"""

from __future__ import annotations

from collections.abc import Callable

from inferlab.engine.sequence import Sequence
from inferlab.paging import BlockAllocator, OutOfBlocks, cdiv


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool, copy_block: Callable[[int, int], None]):
        self.allocator = BlockAllocator(num_blocks, block_size, enable_prefix_caching=enable_prefix_caching)
        self.num_blocks, self.block_size = num_blocks, block_size
        self.copy_block = copy_block
        self.filled_blocks: set[int] = set()  # blocks whose every slot holds computed K/V

    @property
    def num_free_blocks(self) -> int:
        return self.allocator.num_free_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return cdiv(num_tokens, self.block_size)

    def can_admit(self, seq: Sequence) -> bool:
        return self.allocator.can_allocate(seq.token_ids)

    def admit(self, seq: Sequence) -> int:
        """Allocate blocks for all of ``seq``'s tokens; returns how many are already computed."""
        table = self.allocator.allocate(seq.request_id, seq.token_ids)
        cached_blocks = self.allocator.num_cached_tokens(seq.request_id) // self.block_size
        trusted = 0
        while trusted < cached_blocks and table[trusted] in self.filled_blocks:
            trusted += 1
        self.filled_blocks.difference_update(table[trusted:])  # about to be (re)written
        return min(trusted * self.block_size, seq.num_tokens - 1)

    def reserve_slots(self, seq: Sequence) -> bool:
        """Give every token of ``seq`` a slot (the ones sampled since the last step).

        Returns False, changing nothing for the pending token, when the pool is empty:
        the scheduler then preempts someone and tries again.
        """
        while self.allocator.num_tokens(seq.request_id) < seq.num_tokens:
            if not self.allocator.can_append(seq.request_id):
                return False
            before = len(self.allocator.block_table(seq.request_id))
            cow = self.allocator.append(seq.request_id, seq.token_ids[self.allocator.num_tokens(seq.request_id)])
            table = self.allocator.block_table(seq.request_id)
            if cow is not None:
                self.copy_block(*cow)
            if len(table) > before:
                self.filled_blocks.discard(table[-1])
        return True

    def block_table(self, seq: Sequence) -> list[int]:
        return self.allocator.block_table(seq.request_id)

    def mark_computed(self, seq: Sequence) -> None:
        """Record the blocks that the last step filled completely."""
        full = seq.num_computed_tokens // self.block_size
        self.filled_blocks.update(self.allocator.block_table(seq.request_id)[:full])

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """``child`` shares all of ``parent``'s blocks (ref counts + 1); a later write into a shared block copies it."""
        self.allocator.fork(parent.request_id, child.request_id)

    def free(self, seq: Sequence) -> None:
        if seq.request_id in self.allocator:
            self.allocator.free(seq.request_id)


__all__ = ["BlockManager", "OutOfBlocks"]
