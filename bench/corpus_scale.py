r"""Corpus size against memory and time: prepare, open, train on Lakh-like MIDI folders.

  python -m bench.corpus_scale --sizes 500,2000,8000,32000 --root /tmp/corpus_scale \
      [--compare_workers 2000] [--two_processes 32000] [--out docs/corpus_scale.json]

For each size N, on the first N files of one synthetic folder (bench/lakh_like.py,
2-5 minute multi-track files), each step a process of its own, timed, its peak RSS
its own VmHWM:
  prepare   `load_corpus` on an empty cache with 2 workers (and with 1 at the sizes
            in --compare_workers): files per second; the peak RSS of the parent
            (--keep_prepared: taken from --out's earlier figures where prepared).
  open      `load_corpus` again (prepared): seconds from a new interpreter.
  train     `python -m bach_jax.main --config=configs/lstm.py:test` on the source,
            20 steps and one evaluation of the whole valid split: peak RSS.
  windows   the epoch's windows of two processes (lstm:test's windowing, batch 16):
            disjoint, and together every window of the epoch's batches.
At the sizes in --two_processes, the train step runs again as two processes (one
jax.distributed job on this machine), each reading its half: peak RSS of each.
Prints a Markdown table; --out keeps the figures (JSON) and a PNG beside it.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from bench import lakh_like

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The issue's figures before the sharded corpus (same machine, same folders' recipe).
BEFORE = {500: 1.06e9, 2000: 3.04e9, 8000: 11.1e9}

_LOAD = r'''
import json, sys, time
t = time.perf_counter()
from bach_jax.data import corpora
c = corpora.load_corpus({"source": sys.argv[1], "workers": int(sys.argv[3])}, sys.argv[2],
                        progress=False)
print(json.dumps({"seconds": time.perf_counter() - t, "hit": c.cache_hit,
                  "pieces": {s: len(c.splits[s]) for s in corpora.SPLITS},
                  "frames": int(sum(c.splits[s].lengths.sum() for s in corpora.SPLITS)),
                  "skipped": len(c.skipped)}))
'''


# Runs `-m MODULE ARGS` or `-c CODE ARGS` and writes the process's own peak RSS (VmHWM)
# to a file at exit. Not wait4's ru_maxrss: a child forked from this (bigger) process
# reports this process's RSS at the fork.
_PEAK = r'''
import atexit, runpy, sys
record, how, what = sys.argv[1:4]
def dump():
  with open(record, "w") as f:
    f.write([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1])
atexit.register(dump)
sys.argv = [what] + sys.argv[4:]
if how == "-m":
  runpy.run_module(what, run_name="__main__", alter_sys=True)
else:
  exec(compile(what, "<bench>", "exec"), {"__name__": "__main__"})
'''


def peak_cmd(cmd, record):
  """[python, -m|-c, X, args...] -> the same run through _PEAK, which writes `record`."""
  return [cmd[0], '-c', _PEAK, record] + cmd[1:]


def read_peak(record) -> int:
  with open(record) as f:
    return int(f.read()) * 1024


def run(cmd, env=None):
  """Runs a python command -> (seconds, its peak RSS in bytes, stdout)."""
  record = os.path.join(REPO, f'.peak-{os.getpid()}')
  t = time.perf_counter()
  proc = subprocess.run(peak_cmd(cmd, record), cwd=REPO, env=env, stdout=subprocess.PIPE,
                        text=True, check=False)
  if proc.returncode:
    sys.exit(f'bench.corpus_scale: {" ".join(cmd[:4])}... exited {proc.returncode}')
  peak = read_peak(record)
  os.remove(record)
  return time.perf_counter() - t, peak, proc.stdout


def size_folder(root: str, pool: str, n: int) -> str:
  """root/files-N: links to the first n files of the pool (same relative paths)."""
  folder = os.path.join(root, f'files-{n}')
  for i in range(n):
    rel = os.path.join(f'{i // 1000:03d}', f'{i:06d}.mid')
    link = os.path.join(folder, rel)
    if not os.path.lexists(link):
      os.makedirs(os.path.dirname(link), exist_ok=True)
      os.symlink(os.path.join(pool, rel), link)
  return folder


def load(source, cache, workers):
  seconds, rss, out = run([sys.executable, '-c', _LOAD, source, cache, str(workers)])
  return dict(json.loads(out.splitlines()[-1]), wall=seconds, rss=rss)


def train_args(source, cache, workdir):
  return [sys.executable, '-m', 'bach_jax.main', '--config=configs/lstm.py:test',
          f'--workdir={workdir}', f'--config.data.source={source}',
          f'--config.data.cache_dir={cache}', '--config.train.num_steps=20',
          '--config.train.eval_every=20', '--config.train.num_final_samples=0']


def two_processes(source, cache, workdir):
  """Two processes of one jax.distributed job -> peak RSS of each."""
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
             JAX_NUM_PROCESSES='2')
  os.makedirs(workdir, exist_ok=True)
  logs = [open(os.path.join(workdir, f'process_{i}.log'), 'w+') for i in range(2)]  # pylint: disable=consider-using-with
  records = [os.path.join(workdir, f'process_{i}.peak') for i in range(2)]
  procs = [subprocess.Popen(peak_cmd(train_args(source, cache, workdir), records[i]),
                            cwd=REPO, env=dict(env, JAX_PROCESS_ID=str(i)), stdout=logs[i],
                            stderr=subprocess.STDOUT) for i in range(2)]
  for i, p in enumerate(procs):
    if p.wait():
      sys.exit(f'bench.corpus_scale: process {i} of two exited {p.returncode}')
  peaks = [read_peak(r) for r in records]
  logs[0].seek(0)
  assert '(2 processes)' in logs[0].read(), 'the two processes did not run as one job'
  for log in logs:
    log.close()
  return peaks


def windows(source, cache):
  """Both processes' windows of one epoch: disjoint, and together the windows one
  process alone reads in that epoch."""
  from bach_jax.data import corpora, pipeline  # pylint: disable=g-import-not-at-top
  train = corpora.load_corpus({'source': source}, cache, progress=False).splits['train']

  def epoch(k, count):
    it = pipeline.BatchIterator(train, batch_size=16, window_steps=16, hop_steps=8, seed=0,
                                process_index=k, process_count=count)
    rows = [it._rows(b)[0] for b in range(it.batches_per_epoch)]  # pylint: disable=protected-access
    return it, np.concatenate(rows)

  it, alone = epoch(0, 1)
  seen = np.concatenate([epoch(k, 2)[1] for k in range(2)])
  return {'windows': it.num_windows, 'read': int(seen.size),
          'order': 'exact permutation' if it.exact_shuffle else 'IndexShuffle',
          'disjoint': bool(np.unique(seen).size == seen.size),
          'cover': bool(np.array_equal(np.sort(seen), np.sort(alone)))}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--sizes', default='500,2000,8000,32000')
  parser.add_argument('--root', default='/tmp/corpus_scale')
  parser.add_argument('--compare_workers', default='2000')
  parser.add_argument('--two_processes', default='')
  parser.add_argument('--out', default='')
  parser.add_argument('--keep_prepared', action='store_true',
                      help='Sizes already prepared keep their prepare figures from --out.')
  args = parser.parse_args()
  earlier = {}
  if args.keep_prepared and os.path.exists(args.out):
    with open(args.out) as f:
      earlier = {r['files']: r for r in json.load(f)}
  sizes = [int(s) for s in args.sizes.split(',')]
  pool = os.path.join(args.root, 'pool')
  t = time.perf_counter()
  lakh_like.write_folder(pool, max(sizes), workers=2)
  print(f'{max(sizes)} files in {pool} ({time.perf_counter() - t:.0f} s)', file=sys.stderr)
  rows = []
  for n in sizes:
    source = f'midi_dir:{size_folder(args.root, pool, n)}'
    cache = os.path.join(args.root, f'cache-{n}')
    row = {'files': n}
    if n in earlier and os.path.isdir(cache):
      row.update({k: v for k, v in earlier[n].items() if k.startswith('prepare') or k in (
          'frames', 'pieces', 'skipped')})
    else:
      if str(n) in args.compare_workers.split(','):
        one = load(source, os.path.join(args.root, f'cache-{n}-w1'), 1)
        row['prepare_1_worker_s'] = one['wall']
        subprocess.run(['rm', '-rf', os.path.join(args.root, f'cache-{n}-w1')], check=True)
      built = load(source, cache, 2)
      row.update(prepare_2_workers_s=built['wall'], prepare_rss=built['rss'],
                 frames=built['frames'], pieces=built['pieces'], skipped=built['skipped'])
    opened = load(source, cache, 2)
    assert opened['hit'], opened
    row.update(open_s=opened['wall'], open_rss=opened['rss'])
    workdir = os.path.join(args.root, f'run-{n}')
    subprocess.run(['rm', '-rf', workdir], check=True)
    row['train_s'], row['train_rss'], _ = run(train_args(source, cache, workdir))
    row['windows'] = windows(source, cache)
    if str(n) in args.two_processes.split(','):
      subprocess.run(['rm', '-rf', workdir + '-2p'], check=True)
      row['two_process_rss'] = two_processes(source, cache, workdir + '-2p')
    rows.append(row)
    print(json.dumps(row), file=sys.stderr, flush=True)
  print(table(rows))
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(rows, f, indent=1)
    chart(rows, os.path.splitext(args.out)[0] + '.png')


def table(rows):
  gb = lambda b: f'{b / 1e9:.2f} GB'
  lines = ['| files | frames | prepare, 1 worker | prepare, 2 workers | open prepared | '
           'training start, peak RSS | before | two processes, peak RSS each | '
           'windows of 2 processes |',
           '|---:|---:|---:|---:|---:|---:|---:|---:|---|']
  for r in rows:
    one = (f'{r["prepare_1_worker_s"]:.0f} s ({r["files"] / r["prepare_1_worker_s"]:.1f} files/s)'
           if 'prepare_1_worker_s' in r else '')
    two = f'{r["prepare_2_workers_s"]:.0f} s ({r["files"] / r["prepare_2_workers_s"]:.1f} files/s)'
    w = r['windows']
    lines.append(
        f'| {r["files"]:,} | {r["frames"] / 1e6:.1f} M | {one} | {two} | {r["open_s"]:.1f} s | '
        f'{gb(r["train_rss"])} | {gb(BEFORE[r["files"]]) if r["files"] in BEFORE else ""} | '
        f'{" / ".join(gb(b) for b in r.get("two_process_rss", []))} | '
        f'{w["windows"]:,} ({w["order"]}): disjoint {w["disjoint"]}, cover {w["cover"]} |')
  return '\n'.join(lines)


def chart(rows, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 3.6))
  files = [r['files'] for r in rows]
  ax.plot(files, [r['train_rss'] / 1e9 for r in rows], 'o-', label='sharded corpus (now)')
  ax.plot(sorted(BEFORE), [BEFORE[n] / 1e9 for n in sorted(BEFORE)], 's--', label='before')
  ax.axhline(1.5, color='gray', lw=0.8, ls=':', label='aim: 1.5 GB')
  ax.set_xscale('log')
  ax.set_xlabel('MIDI files in the corpus')
  ax.set_ylabel('training start, peak RSS (GB)')
  ax.set_title('configs/lstm.py:test on Lakh-like folders')
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


if __name__ == '__main__':
  main()
