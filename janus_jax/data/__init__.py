"""Training data: raw data -> prepared TFDS/ArrayRecord datasets -> packed, mixed batches.

  batch.py      the batch contract (fields, dtypes, shapes) the train step consumes
  examples.py   one example of each kind -> an unpacked token row (targets, weights, heads)
  packing.py    rows -> fixed-length packed batch rows; the resumable grain packing stage
  sources.py    prepared datasets and TFDS datasets as random-access sources; record decoding
  pipeline.py   build_train_iterator: the grain pipeline and the DataIterator of global arrays
  prepare.py    python -m janus_jax.data.prepare: raw folders/JSON -> prepared datasets
  writer.py     resumable ArrayRecord shard writing + TFDS metadata
  vq_codes.py   batched VQ encoding (pre-tokenising text-to-image images)
"""
