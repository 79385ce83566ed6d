"""The documentation points at things that exist (no training, no JAX).

* every relative link and image of README.md, docs/*.md and launch/README.md
  resolves to a file or folder of the repository, and a '#anchor' into a
  Markdown file names one of its headings (GitHub's slugs);
* every `configs/NAME.py[:VARIANT]` in README.md's code exists and accepts the
  variant (get_config raises ValueError on an unknown one);
* every `--config.KEY=VALUE` in README.md names a key of the config it is used
  with: the config named in the same command, code span or table row; a table
  row of `... --config.KEY=V` (short for the rows above) that of the rows above;
  a command on an existing run (--workdir, no config) base_config()'s keys;
  anything else configs/lstm_attn.py's;
* every `python -m MODULE` in README.md names a module of this repository
  (bach_jax.*, bench.*) that `-m` can run, found without importing it, or one of
  the few tools the README installs or runs (pip, venv, pytest);
* every repository path in README.md's code (`scripts/vqvae.sh`,
  `bach_jax/models/`) exists.

Each check is a function from (file name, text) to a list of problems, each naming
the file, the line and the bad link or key; the unit tests below feed each one a
bad string to show that it fails.
"""

import functools
import glob
import importlib.machinery
import os
import re
import urllib.parse

import pytest

from bach_jax import config_base
from train_helpers import REPO, load_config

README = 'README.md'
LINKED_DOCS = [README, 'launch/README.md'] + sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, 'docs', '*.md')))
DEFAULT_CONFIG = 'configs/lstm_attn.py'  # The config of an override named alone.
BASE = 'base_config()'  # The keys of a command on an existing run (its own config).
TOOLS = ('pip', 'venv', 'pytest')  # `python -m` modules that are not the repository's.
REPO_DIRS = ('bach_jax', 'bench', 'configs', 'docs', 'launch', 'notebooks', 'scripts',
             'tests')

CONFIG_RE = re.compile(r'configs/([A-Za-z_]\w*)\.py(?::(\w+))?')
KEY_RE = re.compile(r'--config\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)')
MODULE_RE = re.compile(r'\bpython3?\s+-m\s+([A-Za-z_][\w.]*)')
PATH_RE = re.compile(r'(?:%s)/[\w./-]*' % '|'.join(REPO_DIRS))
LINK_RE = re.compile(r'(!?)\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*<?([^)\s>]*)>?(?:\s+"[^"]*")?\s*\)')
REF_LINK_RE = re.compile(r'^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+"[^"]*")?\s*$', re.MULTILINE)
HTML_SRC_RE = re.compile(r'<(?:img|a)\b[^>]*?\b(?:src|href)="([^"]+)"', re.IGNORECASE)
SPAN_RE = re.compile(r'(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)', re.DOTALL)
FENCE_RE = re.compile(r'^ {0,3}(```|~~~)')


def _read(name):
  with open(os.path.join(REPO, name), encoding='utf-8') as f:
    return f.read()


def _line_of(text, offset):
  return text.count('\n', 0, offset) + 1


def split_fences(text):
  """-> (prose, blocks): the text with fenced code blanked (line numbers kept), and
  [(first line number, [lines])] of each fenced block's contents."""
  prose, blocks, block = [], [], None
  for number, line in enumerate(text.split('\n'), 1):
    if FENCE_RE.match(line):
      if block is None:
        block = (number + 1, [])
      else:
        blocks.append(block)
        block = None
      prose.append('')
    elif block is not None:
      block[1].append(line)
      prose.append('')
    else:
      prose.append(line)
  return '\n'.join(prose), blocks


# ------------------------------------------------------------------ links


def slug(heading):
  """GitHub's anchor of a heading: lowercase, punctuation dropped, spaces to '-'."""
  heading = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading.strip())  # Links: their text.
  return re.sub(r'[^\w\- ]', '', heading.lower()).replace(' ', '-')


def anchors(text):
  """The anchors of a Markdown text's headings (repeats get -1, -2, ... as on GitHub)."""
  prose, _ = split_fences(text)
  seen, out = {}, set()
  for m in re.finditer(r'^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$', prose, re.MULTILINE):
    base = slug(m.group(1))
    n = seen.get(base, 0)
    seen[base] = n + 1
    out.add(base if n == 0 else f'{base}-{n}')
  return out


def link_targets(text):
  """[(line, target)] of a Markdown text's links and images, outside code."""
  prose, _ = split_fences(text)
  spans = [m.span() for m in SPAN_RE.finditer(prose) if '\n\n' not in m.group(0)]
  found = []
  for regex, group in ((LINK_RE, 3), (REF_LINK_RE, 1), (HTML_SRC_RE, 1)):
    for m in regex.finditer(prose):
      start = m.start()
      if any(a <= start < b for a, b in spans):  # Inside a code span: not a link.
        continue
      found.append((_line_of(prose, start), m.group(group)))
  return sorted(found)


def link_problems(name, text, repo=REPO):
  """Problems of the relative links of `text` (the file `name`, relative to repo)."""
  problems = []
  here = os.path.dirname(os.path.join(repo, name))
  for line, target in link_targets(text):
    where = f'{name}:{line}: link {target!r}'
    if re.match(r'^[a-zA-Z][\w+.-]*:', target):  # http(s):, mailto: ...
      continue
    if not target:
      problems.append(f'{where}: empty target')
      continue
    path, _, anchor = urllib.parse.unquote(target).partition('#')
    if not path:  # '#anchor': a heading of this file.
      if anchor.lower() not in anchors(text):
        problems.append(f'{where}: {name} has no heading #{anchor}')
      continue
    full = os.path.normpath(os.path.join(here, path))
    if os.path.relpath(full, repo).startswith('..'):
      problems.append(f'{where}: points outside the repository')
    elif not os.path.exists(full):
      problems.append(f'{where}: {os.path.relpath(full, repo)} does not exist')
    elif anchor and full.endswith('.md'):
      with open(full, encoding='utf-8') as f:
        if anchor.lower() not in anchors(f.read()):
          problems.append(f'{where}: {os.path.relpath(full, repo)} has no heading '
                          f'#{anchor}')
  return problems


@pytest.mark.parametrize('name', LINKED_DOCS)
def test_relative_links_resolve(name):
  problems = link_problems(name, _read(name))
  assert not problems, '\n'.join(problems)


# ------------------------------------------------------------------ README's code


def readme_snippets(text):
  """-> [(line, snippet, fallback)]: each command of README's code blocks and each
  inline code span, with the config its overrides refer to when it names none:
  a table row's config (or, in a row of '... --config.X', that of the rows above),
  BASE for a command on an existing run, else DEFAULT_CONFIG. A span `:VARIANT`
  in a row naming configs/NAME.py reads as configs/NAME.py:VARIANT."""
  prose, blocks = split_fences(text)
  out = []
  for first, lines in blocks:
    command, start = '', first
    for number, line in enumerate(lines, first):
      line = re.sub(r'(^|\s)#.*$', '', line)  # Shell comments.
      if not command:
        start = number
      command += line.strip()
      if command.endswith('\\'):
        command = command[:-1] + '\n'  # Continued: the newline keeps line numbers.
        continue
      pos = 0
      for part in re.split(r'(&&|;|\|\|)', command):  # Commands, separators between.
        if part.strip() and part not in ('&&', ';', '||'):
          fallback = (BASE if '--workdir' in part and not CONFIG_RE.search(part)
                      else DEFAULT_CONFIG)
          lead = len(part) - len(part.lstrip())
          out.append((start + command.count('\n', 0, pos + lead), part.strip(), fallback))
        pos += len(part)
      command = ''
  lines = prose.split('\n')
  table, tables = 0, []  # tables[i]: the table line i + 1 is a row of (0: none).
  for i, row in enumerate(lines):
    is_row = row.lstrip().startswith('|')
    table += is_row and not (i and tables[-1])
    tables.append(table if is_row else 0)
  table_config = {}  # Table -> the config its last row naming one named.
  for m in SPAN_RE.finditer(prose):
    if '\n\n' in m.group(0):
      continue
    line = _line_of(prose, m.start())
    fallback, snippet = DEFAULT_CONFIG, m.group(2)
    named = CONFIG_RE.search(lines[line - 1]) if tables[line - 1] else None
    if named:
      table_config[tables[line - 1]] = fallback = named.group(0)
      if re.fullmatch(r':\w+', snippet):  # `configs/gan.py` (`:clip`) in a row.
        snippet = named.group(0).split(':')[0] + snippet
    elif tables[line - 1] and '...' in lines[line - 1]:
      fallback = table_config.get(tables[line - 1], DEFAULT_CONFIG)
    out.append((line, snippet, fallback))
  return out


@functools.lru_cache(maxsize=None)
def _config(mention):
  """The ConfigDict of 'configs/NAME.py[:VARIANT]' or BASE; ValueError when unknown."""
  if mention == BASE:
    return config_base.base_config()
  m = CONFIG_RE.fullmatch(mention)
  return load_config(m.group(1), m.group(2) or '')


def config_problems(name, text, repo=REPO):
  """Problems of every configs/NAME.py[:VARIANT] in the code of `text`."""
  problems = []
  for line, snippet, _ in readme_snippets(text):
    for m in CONFIG_RE.finditer(snippet):
      where = f'{name}:{_line(line, snippet, m)}: {m.group(0)!r}'
      if not os.path.exists(os.path.join(repo, 'configs', f'{m.group(1)}.py')):
        problems.append(f'{where}: configs/{m.group(1)}.py does not exist')
        continue
      try:
        _config(m.group(0))
      except ValueError as e:
        problems.append(f'{where}: {e}')
  return problems


def _line(line, snippet, match):
  """The line number of a match in a snippet (commands and spans may span lines)."""
  return line + snippet.count('\n', 0, match.start())


def _has_key(config, key):
  node = config
  for part in key.split('.'):
    if not hasattr(node, 'keys') or part not in node:
      return False
    node = node[part]
  return True


def key_problems(name, text, repo=REPO):
  """Problems of every --config.KEY in the code of `text`: KEY is not a key of the
  config it goes with (the nearest configs/... before it in its snippet, else the
  first after it, else the snippet's fallback)."""
  problems = []
  for line, snippet, fallback in readme_snippets(text):
    configs = list(CONFIG_RE.finditer(snippet))
    for m in KEY_RE.finditer(snippet):
      key = m.group(1)
      if key.upper() == key:  # A placeholder: --config.KEY=VALUE.
        continue
      before = [c for c in configs if c.start() < m.start()]
      mention = (before[-1] if before else configs[0]).group(0) if configs else fallback
      if mention != BASE and not os.path.exists(os.path.join(repo, mention.split(':')[0])):
        continue  # config_problems names the missing file.
      try:
        config = _config(mention)
      except ValueError:
        continue  # config_problems names the unknown variant.
      if not _has_key(config, key):
        problems.append(f'{name}:{_line(line, snippet, m)}: --config.{key}: no such key in '
                        f'{mention}')
  return problems


def _module_spec(module, repo=REPO):
  """The spec of a repository module (found from repo, nothing imported), or None."""
  path, spec = [repo], None
  for depth, part in enumerate(module.split('.')):
    if depth and (spec is None or spec.submodule_search_locations is None):
      return None
    spec = importlib.machinery.PathFinder.find_spec(part, path)
    if spec is None:
      return None
    path = spec.submodule_search_locations
  return spec


def module_problems(name, text, repo=REPO):
  """Problems of every `python -m MODULE` in the code of `text`."""
  problems = []
  for line, snippet, _ in readme_snippets(text):
    for m in MODULE_RE.finditer(snippet):
      module = m.group(1).rstrip('.')
      where = f'{name}:{_line(line, snippet, m)}: python -m {module}'
      if module.split('.')[0] in TOOLS:  # Not the repository's.
        continue
      spec = _module_spec(module, repo)
      if spec is None:
        problems.append(f'{where}: no such module in the repository')
      elif spec.submodule_search_locations is not None and _module_spec(
          module + '.__main__', repo) is None:
        problems.append(f'{where}: a package without __main__.py (-m cannot run it)')
  return problems


def path_problems(name, text, repo=REPO):
  """Problems of every repository path (scripts/x.sh, bach_jax/models/) in the code."""
  problems = []
  for line, snippet, _ in readme_snippets(text):
    for m in PATH_RE.finditer(snippet):
      if m.start() and re.match(r'[\w./~$-]', snippet[m.start() - 1]):
        continue  # Part of another path (DIR/checkpoints/, ~/.cache/bach_jax).
      if CONFIG_RE.match(snippet, m.start()):
        continue  # config_problems checks configs/NAME.py.
      path = m.group(0).rstrip('.')
      if not os.path.exists(os.path.join(repo, path)):
        problems.append(f'{name}:{_line(line, snippet, m)}: {path} does not exist')
  return problems


@pytest.mark.parametrize('check', [config_problems, key_problems, module_problems,
                                   path_problems])
def test_readme_code_names_what_exists(check):
  problems = check(README, _read(README))
  assert not problems, '\n'.join(problems)


def test_readme_has_code_to_check():
  """The parser sees README's commands (a format change must not make the checks vacuous)."""
  snippets = readme_snippets(_read(README))
  text = ' '.join(s for _, s, _ in snippets)
  assert CONFIG_RE.search(text) and KEY_RE.search(text) and MODULE_RE.search(text)


# ------------------------------------------------------------------ each check can fail

BAD_README = """# Title

## Usage

See [the docs](docs/no_such_file.md), [results](docs/results.md#no-such-heading),
![a plot](docs/missing.png), [ok](docs/results.md) and [web](https://example.com/x).

```bash
python -m bach_jax.main --config=configs/lstm.py:nope --workdir=DIR \\
    --config.train.num_stepz=3           # a comment: --config.not.checked=1
python -m bach_jax.main --workdir=DIR --config.model.hidden_size=3
python -m bach_jax.no_such_module --help && python -m bench.nothing
```

Train with `configs/nosuch.py` or `python -m bach_jax.models` (a package, no
`__main__`); see `scripts/nosuch.sh DIR` and `--config.sample.no_key=1` and
`--config.KEY=VALUE`.

| family | config | NLL |
|---|---|---|
| VAE | `configs/vae.py:jsb` | 1 |
| VAE, flat | `configs/vae.py:jsb --config.model.decoder=flat` | 1 |
| VAE, no input | `... --config.model.decoder_inputs=none` | 1 |
| LSTM | `configs/lstm.py --config.model.decoder=flat` | 1 |
| GAN | `configs/gan.py` (`:jsb`) | none |
"""


def test_link_check_names_file_line_and_link():
  problems = link_problems('docs/bad.md', BAD_README.replace('docs/', ''))
  assert problems == [
      "docs/bad.md:5: link 'no_such_file.md': docs/no_such_file.md does not exist",
      "docs/bad.md:5: link 'results.md#no-such-heading': docs/results.md has no heading "
      '#no-such-heading',
      "docs/bad.md:6: link 'missing.png': docs/missing.png does not exist"], problems
  assert link_problems('x.md', '[up](../../etc/passwd)')[0].endswith(
      'points outside the repository')
  assert not link_problems('x.md', '`[not a link](nowhere.md)`\n\n```\n[nor](this.md)\n```')
  assert not link_problems('x.md', '# A Heading: `code`, too\n\n[self](#a-heading-code-too)')
  assert link_problems('x.md', '# A Heading\n\n[self](#another)') == [
      "x.md:3: link '#another': x.md has no heading #another"]


def test_config_check_names_unknown_files_and_variants():
  problems = config_problems(README, BAD_README)
  assert problems[0].startswith("README.md:9: 'configs/lstm.py:nope': ")
  assert "unknown variant 'nope'" in problems[0]
  assert problems[1] == "README.md:15: 'configs/nosuch.py': configs/nosuch.py does not exist"
  assert problems[2].startswith("README.md:25: 'configs/gan.py:jsb': ")
  assert "unknown variant 'jsb'" in problems[2] and len(problems) == 3, problems


def test_key_check_uses_the_command_the_row_or_the_rows_above():
  problems = key_problems(README, BAD_README)
  assert problems == [
      # --config.train.num_stepz (line 10, the command of line 9): its config
      # (lstm.py:nope) is unknown, which config_problems names.
      'README.md:11: --config.model.hidden_size: no such key in base_config()',
      'README.md:16: --config.sample.no_key: no such key in configs/lstm_attn.py',
      'README.md:23: --config.model.decoder_inputs: no such key in configs/vae.py:jsb',
      'README.md:24: --config.model.decoder: no such key in configs/lstm.py'], problems
  fixed = BAD_README.replace(':nope', '')
  assert ('README.md:10: --config.train.num_stepz: no such key in configs/lstm.py'
          in key_problems(README, fixed))


def test_module_check_names_missing_modules_and_packages_without_main():
  problems = module_problems(README, BAD_README)
  assert problems == [
      'README.md:12: python -m bach_jax.no_such_module: no such module in the repository',
      'README.md:12: python -m bench.nothing: no such module in the repository',
      'README.md:15: python -m bach_jax.models: a package without __main__.py '
      '(-m cannot run it)'], problems
  assert not module_problems(README, '`python -m bach_jax.data download jsb`, '
                             '`python -m bench.train_step`, `python -m pytest -q`')


def test_path_check_names_missing_paths():
  assert path_problems(README, BAD_README) == [
      'README.md:16: scripts/nosuch.sh does not exist']
  assert not path_problems(README, '`DIR/checkpoints/`, `~/.cache/bach_jax`, '
                           '`bach_jax/models/`, `scripts/vqvae.sh DIR`')
