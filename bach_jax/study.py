r"""The study: every family on one training budget, several seeds, scored along the way.

  python -m bach_jax.study --preset=cpu --out=study_cpu            # about an hour, 2 CPU cores
  python -m bach_jax.study --preset=paper --out=DIR --dry_run --time_steps=20   # plan + cost
  python -m bach_jax.study --preset=cpu --families=lstm,gan --seeds=2 --budget=300000 --out=DIR

The budget is counted in training frames seen: a step sees train.batch_size windows
of data.window_steps - 1 target frames (the GAN's critic sees one such batch per
step), so every family reads the same amount of Bach whatever its batch, window or
speed (docs/results.md says why frames and not wall-clock). A family that builds on
another (the VQ-VAE prior, CAPABILITIES.builds_on) gets the same total: half for its
base run, half for itself.

Every (family, seed) is a workdir trained by `python -m bach_jax.main` (a subprocess:
the normal trainer, its resume, its exit codes). Its checkpoints at the budget
fractions (train.keep_steps) are each scored once: samples' musical metrics (64 x 256
frames) against held-out Bach, and the exact likelihood or the bound of the test
split piece by piece (evaluate.piece_sums). For a builds_on family, fraction f is its
own run started from the base run's checkpoint at fraction f, trained for f of its
half. A killed study resumes: a finished run (its study_done.json) and a scored
checkpoint (its evals/ JSON) are never redone; an unfinished run resumes from its
checkpoint. Then compare_study writes the report with intervals.

OUT/study.json          the plan (preset, families, seeds, budget, fractions, runs)
OUT/runs/FAMILY/seedK/  workdirs (a builds_on family: .../base and .../f0.125, ...)
OUT/evals/FAMILY/seedK/fFRACTION.json   one scored checkpoint (per-piece values)
OUT/report/             report.md, report.json, study_budget.png, study_metrics.png
"""

import dataclasses
import json
import os
import subprocess
import sys
import time

from bach_jax import errors
from bach_jax import workdir as workdir_lib
from bach_jax.errors import UserError


class StudyError(UserError):
  """A study option or one of its runs failed; the message names it."""


CPU_SIZES = {  # The CPU preset's models: the paper's architectures, smaller (docs/results.md).
    'lstm': {'model.hidden_size': 128},
    'lstm_attn': {'model.hidden_size': 128, 'model.head_hidden': 128, 'model.attn_heads': 4},
    'vae': {'model.segment_steps': 32, 'data.window_steps': 33, 'model.latent_dim': 32,
            'model.encoder_hidden': 128, 'model.conductor_hidden': 128,
            'model.decoder_hidden': 128, 'model.head_hidden': 64, 'model.iwae_samples': 16,
            'model.free_bits': 4.0},
    'vqvae': {'model.segment_steps': 32, 'data.window_steps': 33, 'model.encoder_hidden': 128,
              'model.context_hidden': 64, 'model.decoder_hidden': 128,
              'model.head_hidden': 64, 'model.codebook_size': 32, 'model.code_dim': 32},
    'vqvae_prior': {'model.prior_hidden': 128},
    'gan': {'model.generator_hidden': 128, 'model.critic_hidden': 64, 'data.window_steps': 33,
            'sample.num_steps': 32, 'train.warmup_steps': 0},
}
CPU_COMMON = {'train.batch_size': 32, 'data.window_steps': 33, 'train.warmup_steps': 50}


@dataclasses.dataclass(frozen=True)
class Preset:
  """What a study trains and how it scores: the same for every family."""
  families: tuple
  seeds: int
  budget: int  # Training frames per run (a builds_on family: for both stages together).
  fractions: tuple = (0.125, 0.25, 0.5, 1.0)  # Budgets scored, as fractions of `budget`.
  variant: str = ''  # The config variant of every family (configs/FAMILY.py:VARIANT).
  overrides: tuple = ()  # ((family or '*', {key: value}), ...), '*' for every family.
  num_samples: int = 64  # Pieces sampled per scored checkpoint...
  sample_steps: int = 256  # ... of this many frames (the reference cut to as many).
  bootstrap: int = 1000  # Bootstrap replicates of every interval.


PRESETS = {
    # About an hour on the 2-core CPU: the architectures at hidden 64-128, 32-frame windows.
    'cpu': Preset(families=('lstm', 'lstm_attn', 'vae', 'vqvae_prior', 'gan'), seeds=3,
                  budget=2_457_600,
                  overrides=(('*', CPU_COMMON),) + tuple(CPU_SIZES.items())),
    # The configs as shipped (hidden 256-512): 3000 steps of the LSTM's 64 x 32 frames.
    'paper': Preset(families=('lstm', 'lstm_attn', 'vae', 'vqvae_prior', 'gan'), seeds=3,
                    budget=6_144_000),
    # The tests: ':test' configs, seconds each.
    'test': Preset(families=('lstm', 'lstm_attn'), seeds=2, budget=7_680, variant='test',
                   overrides=(('*', {'train.warmup_steps': 2}), ('gan', {'train.warmup_steps': 0})),
                   num_samples=8,
                   sample_steps=32, bootstrap=200),
}


def family_overrides(preset, family):
  """The preset's {config key: value} for one family ('*' first, then the family's)."""
  out = {}
  for name, keys in preset.overrides:
    if name in ('*', family):
      out.update(keys)
  return out


def load_config(config_dir, family, variant, overrides):
  """configs/FAMILY.py:VARIANT with dotted-key overrides, as main's --config.KEY does."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = os.path.join(config_dir, f'{family}.py')
  if not os.path.isfile(path):
    raise StudyError(f'--config_dir={config_dir}: no {family}.py there')
  spec = importlib.util.spec_from_file_location(f'study_config_{family}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(variant)
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise StudyError(f'{path}: no config.{key} to override')
    node[leaf] = value
  return config


def frames_per_step(config):
  """Training frames one step reads: batch_size windows of window_steps - 1 targets."""
  return int(config.train.batch_size) * (int(config.data.window_steps) - 1)


@dataclasses.dataclass
class Run:
  """One training run of the study: a workdir trained by bach_jax.main."""
  family: str
  seed: int
  workdir: str
  config_spec: str  # --config=...
  overrides: dict  # --config.KEY=VALUE
  num_steps: int
  frames: int  # Training frames of the whole run.
  keep: tuple  # ((fraction, step), ...): its checkpoints kept at the budget fractions.
  scores: tuple  # ((fraction, step), ...): the checkpoints scored for the report.

  @property
  def done_file(self):
    return os.path.join(self.workdir, 'study_done.json')

  def command(self):
    """The bach_jax.main command line that trains (or resumes) this run."""
    return ([sys.executable, '-m', 'bach_jax.main', f'--config={self.config_spec}',
             f'--workdir={self.workdir}']
            + [f'--config.{k}={v}' for k, v in self.overrides.items()])


def plan(preset, out, config_dir='configs'):
  """The runs of a study, in training order (a base run before its family's runs)."""
  from bach_jax import models  # pylint: disable=g-import-not-at-top
  runs = []
  for family in preset.families:
    base = models.get_family(family).CAPABILITIES.builds_on
    for seed in range(preset.seeds):
      root = os.path.join(out, 'runs', family, f'seed{seed}')
      if not base:
        run = _run(preset, config_dir, family, seed, root, preset.budget)
        runs.append(dataclasses.replace(run, scores=run.keep))
        continue
      base_run = _run(preset, config_dir, base, seed, os.path.join(root, 'base'),
                      preset.budget // 2)
      runs.append(base_run)
      for fraction, base_step in base_run.keep:
        stage = _run(preset, config_dir, family, seed, os.path.join(root, f'f{fraction:g}'),
                     round(fraction * preset.budget / 2),
                     init_from=f'{base_run.workdir}:{base_step}')
        runs.append(dataclasses.replace(stage, keep=(), scores=((fraction, stage.num_steps),)))
  return runs


def _check(config, family, init_from):
  """A run's config checked before anything trains (StudyError naming the family)."""
  from bach_jax import config_base, models  # pylint: disable=g-import-not-at-top
  try:
    config_base.validate(config, 1)
    if not init_from:  # A stage's model config needs its base run's (copied in by main).
      models.get_family(family).validate(config)
  except errors.ConfigError as e:
    raise StudyError(f'{family}: {e}') from None


def _run(preset, config_dir, family, seed, workdir, budget, init_from=''):
  """One Run of `budget` frames, its checkpoints kept at the preset's fractions."""
  keys = family_overrides(preset, family)
  if init_from:
    keys['train.init_from'] = init_from
  config = load_config(config_dir, family, preset.variant, keys)
  _check(config, family, init_from)
  num_steps = max(1, round(budget / frames_per_step(config)))
  keep = tuple((f, max(1, round(f * num_steps))) for f in preset.fractions)
  overrides = dict(keys, **{
      'seed': seed, 'train.num_steps': num_steps,
      'train.keep_steps': ','.join(str(s) for _, s in keep),
      'train.checkpoint_every': max(1, num_steps // 8), 'train.keep_checkpoints': 1,
      'train.eval_every': 0, 'train.num_final_samples': 0,
      'train.log_every': max(1, min(50, num_steps // 10))})
  spec = os.path.join(config_dir, f'{family}.py') + (f':{preset.variant}' if preset.variant else '')
  return Run(family, seed, workdir, spec, overrides, num_steps,
             num_steps * frames_per_step(config), keep, ())


class StudyInterrupted(StudyError):
  """A run was interrupted (SIGTERM / Ctrl-C) after saving: run the study again."""
  exit_code = errors.EXIT_INTERRUPTED


def _forward_sigterm(child):
  """While a run trains: SIGTERM to the study goes to the run too (Ctrl-C from a
  terminal reaches both already); either way the run saves, and the study stops."""
  import signal  # pylint: disable=g-import-not-at-top
  stopped = []

  def handle(signum, frame):
    stopped.append(signum)
    if signum == signal.SIGTERM and child.poll() is None:
      child.send_signal(signal.SIGTERM)

  previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
  return stopped, lambda: [signal.signal(s, h) for s, h in previous.items()]


def train(run, log=print):
  """Trains (or resumes) one run through bach_jax.main; a finished run is left alone."""
  if os.path.exists(run.done_file):
    return False
  label = f'{run.family} seed {run.seed} ({os.path.basename(run.workdir)})'
  log(f'train {label}: {run.num_steps} steps, {run.frames:,} frames')
  os.makedirs(os.path.dirname(run.workdir), exist_ok=True)
  child = subprocess.Popen(run.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, bufsize=1)
  stopped, restore = _forward_sigterm(child)
  tail = []
  try:
    for line in child.stdout:
      tail = (tail + [line.rstrip()])[-20:]
      if line.startswith(('step ', 'resumed', 'warning', 'error', 'init_from', 'SIG')):
        log(f'  [{run.family} seed {run.seed}] {line.rstrip()}')
    code = child.wait()
  finally:
    restore()
  if code in (errors.EXIT_INTERRUPTED, errors.EXIT_FORCED) or stopped:
    raise StudyInterrupted(f'{run.workdir}: interrupted (exit {code}); run the same study '
                           'command again to resume')
  if code != 0:
    errs = [x for x in tail if x.startswith('error:')] or tail[-3:]
    raise StudyError(f'{run.workdir}: training failed (exit {code}): {" ".join(errs)}')
  with workdir_lib.writing(workdir_lib.as_path(run.done_file)) as path:
    path.write_text(json.dumps({'steps': run.num_steps, 'frames': run.frames}))
  return True


def eval_path(out, family, seed, fraction):
  return os.path.join(out, 'evals', family, f'seed{seed}', f'f{fraction:g}.json')


def score(run, fraction, step, preset, out, corpora, log=print):
  """Scores one checkpoint -> its JSON in OUT/evals (left alone when it exists): the
  samples' per-piece metrics, and the test split's likelihood piece by piece with its
  bootstrap replicates (family.summarize of resampled per-piece sums)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from bach_jax import compare, evaluate, experiment, loaded, metric_writers, metrics
  path = eval_path(out, run.family, run.seed, fraction)
  if os.path.exists(path):
    return False
  model = loaded.load_model(run.workdir, step=step)
  model.config.seed = 0  # One compiled sampler and scorer for every seed's run.
  key = model.config.data.to_json()
  if key not in corpora:
    corpora[key] = experiment.setup(model.config).corpus
  test = corpora[key].splits['test']
  label = f'{run.family} seed {run.seed} at {fraction:g}'
  pieces, sampling = compare.sample_timed(model, preset.num_samples, preset.sample_steps,
                                          seed=0, label=label, log=log)
  result = {'family': run.family, 'seed': run.seed, 'fraction': fraction,
            'frames': round(fraction * preset.budget), 'step': step, 'workdir': run.workdir,
            'sampling': sampling, 'likelihood': None,
            'metrics': metrics.set_metrics(pieces, model.steps_per_quarter)}
  caps = model.family.CAPABILITIES
  if caps.likelihood != 'none':
    sums = evaluate.piece_sums(model.family, model.config, model.params, test,
                               model.voices_for(test))
    summarize = lambda rows: model.family.summarize(
        model.config, {k: v[rows].sum(axis=0) for k, v in sums.items()})[caps.select_by]
    rng = np.random.default_rng([run.seed, round(fraction * 1000)])
    rows = rng.integers(0, len(test), (preset.bootstrap, len(test)))
    result['likelihood'] = {
        'kind': caps.likelihood, 'metric': caps.select_by, 'pieces': len(test),
        'value': summarize(np.arange(len(test))), 'replicates': [summarize(r) for r in rows]}
    log(f'{label}: test {caps.select_by} {result["likelihood"]["value"]:.4f} '
        f'({caps.likelihood})')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump(metric_writers.json_safe(result), f)
  os.replace(path + '.tmp', path)
  return True


def run_study(preset, out, config_dir='configs', log=print):
  """Trains every run, scores every checkpoint, writes the report -> the report dict."""
  from bach_jax import compare_study  # pylint: disable=g-import-not-at-top
  runs = plan(preset, out, config_dir)
  os.makedirs(out, exist_ok=True)
  _write_plan(out, preset, runs, config_dir)
  corpora, t0, work = {}, time.perf_counter(), 0
  total = len(runs) + sum(len(r.scores) for r in runs)
  for i, run in enumerate(runs):
    if train(run, log):
      work += 1
    for fraction, step in run.scores:
      if score(run, fraction, step, preset, out, corpora, log):
        work += 1
    done = i + 1 + sum(len(r.scores) for r in runs[:i + 1])
    spent = time.perf_counter() - t0
    eta = f'{(total - done) * spent / work / 60:.0f} min' if work else '?'
    log(f'study: {done}/{total} runs and scored checkpoints, {spent / 60:.1f} min, ETA {eta}')
  return compare_study.write_report(out, log=log)


def _write_plan(out, preset, runs, config_dir):
  """OUT/study.json: what the study is (compare_study reads it back)."""
  plan_json = {'preset': dataclasses.asdict(preset), 'config_dir': config_dir,
               'runs': [dataclasses.asdict(r) for r in runs]}
  with open(os.path.join(out, 'study.json.tmp'), 'w') as f:
    json.dump(plan_json, f, indent=1, default=str)
  os.replace(os.path.join(out, 'study.json.tmp'), os.path.join(out, 'study.json'))


def time_runs(preset, config_dir, steps, log=print):
  """Measures each family's training speed (`steps` steps through bach_jax.main in a
  temporary workdir; the last progress line's rate, after compiling) -> estimated
  hours of the plan's training on this machine."""
  import re  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  runs = plan(preset, tempfile.mkdtemp(prefix='bach_jax_study_plan_'), config_dir)
  rate, probes, seconds = {}, {}, 0.0
  for run in runs:
    if run.family not in rate:
      probes[run.family] = tempfile.mkdtemp(prefix='bach_jax_time_')
      base = run.overrides.get('train.init_from', '')
      base_family = next((r.family for r in runs if base.startswith(r.workdir + ':')), '')
      probe = dataclasses.replace(run, workdir=probes[run.family], overrides=dict(
          run.overrides, **{'train.num_steps': steps, 'train.keep_steps': '',
                            'train.log_every': max(1, steps // 2),
                            'train.init_from': probes.get(base_family, '')}))
      proc = subprocess.run(probe.command(), capture_output=True, text=True)
      found = re.findall(r'\| ([\d.]+) steps/s \|', proc.stdout)
      if proc.returncode != 0 or not found:
        raise StudyError(f'timing {run.family} failed: {proc.stderr.strip()[-300:]}')
      rate[run.family] = float(found[-1])
      log(f'{run.family}: {rate[run.family]:.2f} steps/s, {run.frames // run.num_steps:,} frames '
          f'a step: {rate[run.family] * run.frames // run.num_steps:,.0f} frames/s')
    seconds += run.num_steps / rate[run.family]
  return seconds / 3600


def describe_plan(preset, runs):
  """The plan as lines: every run's steps and frames."""
  lines = [f'{len(runs)} runs; budget {preset.budget:,} frames per family; fractions '
           f'{", ".join(f"{f:g}" for f in preset.fractions)}; {preset.seeds} seeds']
  for r in runs:
    lines.append(f'  {r.family:12s} seed {r.seed} {os.path.basename(r.workdir):8s} '
                 f'{r.num_steps:6d} steps x {r.frames // r.num_steps:6,} frames = '
                 f'{r.frames:,}')
  return lines


def preset_from_flags(f):
  """--preset with --families / --seeds / --budget / --fractions on top."""
  if f.preset not in PRESETS:
    raise StudyError(f'--preset={f.preset!r}: one of {", ".join(PRESETS)}')
  preset = PRESETS[f.preset]
  changes = {}
  if f.families:
    changes['families'] = tuple(x for x in f.families.split(',') if x)
  if f.seeds is not None:
    changes['seeds'] = f.seeds
  if f.budget is not None:
    changes['budget'] = f.budget
  if f.fractions:
    changes['fractions'] = tuple(float(x) for x in f.fractions.split(','))
  preset = dataclasses.replace(preset, **changes)
  from bach_jax import models  # pylint: disable=g-import-not-at-top
  for name in preset.families:
    if name not in models.REGISTRY:
      raise StudyError(f'--families: unknown family {name!r} (known: '
                       f'{", ".join(sorted(models.REGISTRY))})')
  if preset.seeds < 1 or preset.budget < 1:
    raise StudyError('--seeds and --budget must be >= 1')
  if not preset.fractions or not all(0 < x <= 1 for x in preset.fractions):
    raise StudyError(f'--fractions must be in (0, 1], got {preset.fractions}')
  return preset


def define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('out', None, 'Folder of the study (runs, scores, report); required.')
  flags.DEFINE_string('preset', 'cpu', f'One of {", ".join(PRESETS)}.')
  flags.DEFINE_string('families', '', 'Comma-separated families (default: the preset\'s).')
  flags.DEFINE_integer('seeds', None, 'Seeds per family (default: the preset\'s).')
  flags.DEFINE_integer('budget', None, 'Training frames per family (default: the preset\'s).')
  flags.DEFINE_string('fractions', '', 'Budget fractions scored, e.g. 0.125,0.25,0.5,1.')
  flags.DEFINE_string('config_dir', 'configs', 'Folder of the family configs.')
  flags.DEFINE_bool('dry_run', False, 'Print the plan and stop.')
  flags.DEFINE_integer('time_steps', 0, 'With --dry_run: time this many steps of each '
                       'family here and estimate the training time.')
  flags.DEFINE_bool('report_only', False, 'Only write the report from the scores there.')


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from bach_jax import compare_study  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  errors.quiet_library_logs()
  with errors.one_line_errors(interrupted='interrupted by Ctrl-C: the runs saved what '
                              'they had; run the same command again to resume'):
    if len(argv) > 1:
      raise errors.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
    if not f.out:
      raise errors.UsageError('--out=DIR is required (the study\'s folder)')
    if f.report_only:
      compare_study.write_report(f.out)
      return
    preset = preset_from_flags(f)
    if f.dry_run:
      print('\n'.join(describe_plan(preset, plan(preset, f.out, f.config_dir))))
      if f.time_steps:
        hours = time_runs(preset, f.config_dir, f.time_steps)
        print(f'estimated training time here: {hours:.2f} h (scoring not included)')
      return
    run_study(preset, f.out, f.config_dir)


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  from bach_jax import hostmem  # pylint: disable=g-import-not-at-top
  hostmem.tune_malloc()
  define_flags()
  app.run(main)
