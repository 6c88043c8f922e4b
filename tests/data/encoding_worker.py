"""A process that encodes a text file through EmbeddingCache, for tests/data/test_sharded_encoding.py.

    python tests/data/encoding_worker.py MODEL TEXTS CACHE OUT [--shard_size N] [--die_after K] [--distributed]

Writes ``OUT/rank-R.json`` (the texts this process encoded, in order) and, on the main process, ``OUT/result.npy``.
``--die_after K`` SIGKILLs the process as soon as its K-th shard is on disk (the test's ``kill -9``); the hook is
patched in here, the library has none. Run it under ``torch.distributed.run`` with ``--distributed`` for a
multi-process encoding.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import numpy as np
from sentence_transformers import SentenceTransformer

from asym_st.data.cache import EmbeddingCache
from asym_st.data.sharded_encoding import ShardedEncoding


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("model", "texts", "cache", "out"):
        parser.add_argument(name)
    parser.add_argument("--shard_size", type=int, default=8)
    parser.add_argument("--chunk_size", type=int, default=4)
    parser.add_argument("--die_after", type=int, default=None)
    parser.add_argument("--distributed", action="store_true")
    args = parser.parse_args()

    model = SentenceTransformer(args.model, device="cpu")
    texts = Path(args.texts).read_text(encoding="utf-8").splitlines()
    seen: list[str] = []
    encode_document = model.encode_document

    def recording(chunk, **kwargs):
        seen.extend(chunk)
        return encode_document(chunk, **kwargs)

    model.encode_document = recording
    if args.die_after is not None:
        write_shard = ShardedEncoding._write_shard
        written = []

        def write_then_die(self, index, *rest):
            write_shard(self, index, *rest)
            written.append(index)
            if len(written) == args.die_after:
                os.kill(os.getpid(), signal.SIGKILL)

        ShardedEncoding._write_shard = write_then_die

    embeddings = EmbeddingCache(args.cache).encode(
        model,
        texts,
        route="document",
        batch_size=4,
        chunk_size=args.chunk_size,
        shard_size=args.shard_size,
        show_progress_bar=False,
        distributed=args.distributed,
    )
    rank = int(os.environ.get("RANK", "0"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank-{rank}.json").write_text(json.dumps(seen))
    if rank == 0:
        np.save(out / "result.npy", np.asarray(embeddings))


if __name__ == "__main__":
    main()
