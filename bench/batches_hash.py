r"""Hashes of a source's training batches and evaluation batches, as a run makes them, for
the bach_jax of a given source tree: run it on two trees (e.g. a worktree of an older
commit) to check that a change to the data path keeps the batches.

  python bench/batches_hash.py TREE SOURCE CONFIG VARIANT
  python bench/batches_hash.py /work/base bach_chorales lstm test

Prints JSON: pieces per split, the number of training batches hashed (3 epochs, at most
400), the hashes of those and of every valid batch (piece_batches), and the iterator's
fingerprint (its formula may differ between versions).
"""
import hashlib
import importlib.util
import json
import sys

tree, source, config_name, variant = sys.argv[1:5]
sys.path.insert(0, tree)
from bach_jax.data import corpora, pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
spec = importlib.util.spec_from_file_location('cfg', f'{tree}/configs/{config_name}.py')
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
c = m.get_config(variant)
d, t = c.data, c.train
c_data = dict(d); c_data['source'] = source
corpus = corpora.load_corpus(c_data, progress=False)
train = corpus.splits['train']
it = pipeline.BatchIterator(train, batch_size=t.batch_size, window_steps=d.window_steps,
    hop_steps=d.hop_steps, seed=c.seed, pad_start=d.pad_start, augment_transpose=d.get('augment_transpose', 0),
    num_voices=corpus.num_voices, pad_short=d.get('pad_short', False))
h = hashlib.sha256()
n = 3 * it.batches_per_epoch if it.batches_per_epoch < 200 else 400
for _ in range(n):
    b = next(it)
    for k in sorted(b): h.update(k.encode()); h.update(b[k].tobytes())
e = hashlib.sha256()
for b in pipeline.piece_batches(corpus.splits['valid'], batch_size=t.eval_batch_size, pad_start=d.pad_start, num_voices=corpus.num_voices):
    for k in sorted(b): e.update(k.encode()); e.update(b[k].tobytes())
print(json.dumps({'tree': tree, 'source': source, 'pieces': {s: len(corpus.splits[s]) for s in corpora.SPLITS},
  'batches': n, 'train_hash': h.hexdigest()[:16], 'eval_hash': e.hexdigest()[:16], 'fingerprint': it.get_state()['fingerprint']}))
