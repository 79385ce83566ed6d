"""Tests for bach_jax.data.download against a local HTTP server (no test reaches the internet)."""

import functools
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading

import pytest
import train_helpers

from bach_jax import config_base
from bach_jax.data import corpora, download
from bach_jax.data.download import DownloadError

MINI = {'train': [[[60, 64, 67]] * 4], 'valid': [[[62]] * 4], 'test': [[[59, 62]] * 4]}


@pytest.fixture(autouse=True)
def _local_only(monkeypatch):
  """No proxy for 127.0.0.1, and the default URL would fail loudly if ever used."""
  for var in ('http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY', 'all_proxy',
              'ALL_PROXY'):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv('no_proxy', '127.0.0.1,localhost')
  monkeypatch.setattr(download, 'BASE_URL', 'http://127.0.0.1:9/not-the-internet/')
  monkeypatch.delenv('BACH_JAX_JSB_URL', raising=False)


class _Quiet(http.server.SimpleHTTPRequestHandler):
  requests = []

  def log_message(self, *args):  # pylint: disable=arguments-differ
    _Quiet.requests.append(self.path)


@pytest.fixture
def server(tmp_path):
  """Serves tmp_path/'served' on 127.0.0.1; yields (base URL, folder, requested paths)."""
  root = tmp_path / 'served'
  root.mkdir()
  _Quiet.requests = []
  httpd = http.server.ThreadingHTTPServer(
      ('127.0.0.1', 0), functools.partial(_Quiet, directory=str(root)))
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  try:
    yield f'http://127.0.0.1:{httpd.server_address[1]}/', root, _Quiet.requests
  finally:
    httpd.shutdown()
    httpd.server_close()


def _fixture(root, name):
  data = json.dumps(MINI).encode()
  (root / name).write_bytes(data)
  return hashlib.sha256(data).hexdigest()


def test_happy_path_writes_checked_file(server, tmp_path):
  url, root, requests = server
  sha = _fixture(root, 'Upstream-Mini.json')
  dest = tmp_path / 'data' / 'jsb'
  paths = download.download_jsb(str(dest), url, files={'mini.json': ('Upstream-Mini.json', sha)},
                                log=lambda line: None)
  assert paths == [str(dest / 'mini.json')]
  assert json.loads((dest / 'mini.json').read_text()) == MINI
  assert download.sha256_file(paths[0]) == sha
  assert os.listdir(dest) == ['mini.json']  # No temp file left.
  assert requests == ['/Upstream-Mini.json']
  lines = []
  download.download_jsb(str(dest), url, files={'mini.json': ('Upstream-Mini.json', sha)},
                        log=lines.append)
  assert requests == ['/Upstream-Mini.json'] and 'already there' in lines[0]  # Not fetched.
  corpus = corpora.load_corpus({'source': f'jsb:{dest}/mini.json', 'min_steps': 2},
                               tmp_path / 'c', progress=False)
  assert [len(corpus.splits[s]) for s in corpora.SPLITS] == [1, 1, 1]


def test_hash_mismatch_is_refused_and_writes_nothing(server, tmp_path):
  url, root, _ = server
  got = _fixture(root, 'jsb-chorales-quarter.json')  # Not the real file.
  _fixture(root, 'Jsb16thSeparated.json')
  dest = tmp_path / 'data'
  with pytest.raises(DownloadError) as e:
    download.download_jsb(str(dest), url, log=lambda line: None)
  message = str(e.value)
  assert '\n' not in message and message.startswith('jsb-chorales-quarter.json: SHA-256')
  assert download.FILES['jsb-chorales-quarter.json'][1] in message and got in message
  assert not dest.exists()


def test_command_line_uses_env_url_and_data_dir(server, tmp_path):
  url, root, requests = server
  _fixture(root, 'jsb-chorales-quarter.json')
  env = dict(os.environ, BACH_JAX_JSB_URL=url, BACH_JAX_DATA=str(tmp_path / 'data'),
             no_proxy='127.0.0.1,localhost')
  for var in ('http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY'):
    env.pop(var, None)
  cmd = [sys.executable, '-m', 'bach_jax.data', 'download', 'jsb']
  run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
  assert run.returncode == 1 and requests == ['/jsb-chorales-quarter.json']
  assert run.stderr.strip().count('\n') == 0, run.stderr
  assert 'error: jsb-chorales-quarter.json: SHA-256 mismatch (expected 2db9329f' in run.stderr
  assert not (tmp_path / 'data').exists()
  bad = subprocess.run(cmd[:3] + ['download', 'everything'], capture_output=True, text=True,
                       env=env, timeout=120)
  assert bad.returncode != 0 and "unexpected arguments ['download', 'everything']" in bad.stderr


def test_offline_is_one_line(tmp_path):
  with socket.socket() as s:  # A port with nothing listening.
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  with pytest.raises(DownloadError, match=f'^cannot fetch http://127.0.0.1:{port}/jsb-chorales'
                     r'-quarter.json: .*offline\?') as e:
    download.download_jsb(str(tmp_path / 'd'), f'http://127.0.0.1:{port}', timeout=5,
                          log=lambda line: None)
  assert '\n' not in str(e.value) and not (tmp_path / 'd').exists()


def test_http_error_is_one_line(server, tmp_path):
  url, _, _ = server
  with pytest.raises(DownloadError, match=r'^cannot fetch .*/jsb-chorales-quarter.json: HTTP 404'):
    download.download_jsb(str(tmp_path / 'd'), url, log=lambda line: None)


def test_data_dir_is_resolved_when_asked(monkeypatch, tmp_path):
  monkeypatch.delenv('BACH_JAX_DATA', raising=False)
  monkeypatch.setenv('BACH_JAX_CACHE', str(tmp_path / 'cache'))
  assert config_base.jsb_quarter() == str(tmp_path / 'cache' / 'jsb' /
                                          'jsb-chorales-quarter.json')
  monkeypatch.setenv('BACH_JAX_DATA', str(tmp_path / 'shared'))
  assert config_base.jsb_quarter() == str(tmp_path / 'shared' / 'jsb-chorales-quarter.json')
  assert download.jsb_path(download.SIXTEENTH) == str(tmp_path / 'shared' /
                                                      'jsb-16th-separated.json')
  for name, variant in (('lstm', 'jsb'), ('lstm_attn', 'jsb'), ('lstm_attn', 'jsb_windows')):
    config = train_helpers.load_config(name, variant)
    assert config.data.source == 'jsb:' + config_base.jsb_quarter()


def test_missing_jsb_file_says_how_to_get_it(monkeypatch, tmp_path):
  monkeypatch.setenv('BACH_JAX_DATA', str(tmp_path / 'jsb'))
  with pytest.raises(corpora.CorpusError) as e:
    corpora.load_corpus({'source': 'jsb:' + config_base.jsb_quarter()}, tmp_path / 'c',
                        progress=False)
  message = str(e.value)
  assert '\n' not in message
  assert '`python -m bach_jax.data download jsb` (writes jsb-chorales-quarter.json' in message
  assert f'to {tmp_path / "jsb"};' in message
  with pytest.raises(corpora.CorpusError, match=f'download jsb --dir={tmp_path / "else"}`'):
    corpora.load_corpus({'source': f'jsb:{tmp_path}/else/x.json'}, tmp_path / 'c',
                        progress=False)
