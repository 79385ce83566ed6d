"""python -m bach_jax.curves: several runs' metrics in one PNG, one panel per metric."""

import json
import os
import subprocess
import sys

from train_helpers import REPO


def _run(tmp_path, name, rows):
  workdir = tmp_path / name
  workdir.mkdir()
  with open(workdir / 'metrics.jsonl', 'w') as f:
    for row in rows:
      f.write(json.dumps(row) + '\n')
  return str(workdir)


def test_curves_of_two_runs_and_a_missing_one(tmp_path):
  a = _run(tmp_path, 'a', [{'step': s, 'train/w': 1.0 / s} for s in range(1, 20)])
  b = _run(tmp_path, 'b', [{'step': s, 'train/w': 2.0 / s, 'valid/d': s} for s in range(1, 9)])
  out = str(tmp_path / 'c.png')
  cmd = [sys.executable, '-m', 'bach_jax.curves', f'{a}:clip', b, '--keys=train/w,valid/d',
         f'--out={out}']
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert os.path.getsize(out) > 5000
  proc = subprocess.run(cmd[:3] + [str(tmp_path / 'nowhere'), f'--out={out}'], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and 'no metrics.jsonl' in proc.stderr
  assert 'Traceback' not in proc.stderr
