"""Tokenised datasets: text tokenised once into memory-mapped token shards, and read back.

As nanoGPT, OLMo-core and Megatron do, a corpus is tokenised once into flat arrays of token ids
on disk, and training reads its batches through a memory map, so neither tokenising nor training
ever holds the corpus in memory. The directory's layout and its manifest (one typed model,
written here and read by the API too) are ``app/core/tokens.py``'s.

- ``fingerprint``: the fingerprints of a source and of a job's model's tokenizer;
- ``encode``: how documents become ids (``Encoder``, safe cuts inside long documents, batches
  encoding while the next are read);
- ``write``: the shard writer, resuming a killed run, the held-out range, ``tokenize_to_dir``;
- ``read``: ``TokenStore``, ``MemmapBlocks``, a job's ``JobSplits`` (``job_splits``) and the
  raw-text cache;
- ``cli``: ``p2law tokenize``.

Import the module you need (``from workers.ml.tokens.read import job_splits``); this package
re-exports nothing.
"""
