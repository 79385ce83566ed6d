"""report.html and listen.html in a real browser (Debian's chromium, headless, driven by
selenium through chromedriver), and the audio they play.

The browser tests skip, saying why, where chromium, chromedriver or selenium is
missing (`apt-get install chromium chromium-driver`; .ci/run installs them where it
can). They open both pages from disk, check that every <audio> element loads a
playable file and every image shows, answer the listening test twice (as two
listeners), download the answers and aggregate the two files.
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import time
import wave

import numpy as np
import pytest

from bach_jax import audio
from bach_jax import compare
from bach_jax.data import pianoroll
from train_helpers import REPO

CHROMIUM, CHROMEDRIVER = '/usr/bin/chromium', '/usr/bin/chromedriver'


@pytest.fixture(scope='module')
def report(trained_run, tmp_path_factory, cache_dir):
  out = str(tmp_path_factory.mktemp('pages') / 'report')
  runs = [(trained_run('lstm')[0], 'lstm'), (trained_run('lstm_attn')[0], 'attn')]
  settings = compare.Settings(num_pieces=4, num_steps=32, sample_batch=4, clips_per_run=2,
                              listening_pairs=6, excerpt_steps=16, cache_dir=cache_dir)
  compare.build_report(runs, out, settings, log=lambda _: None)
  return out


@pytest.fixture
def browser(tmp_path):
  """open() -> (webdriver, its download folder): a fresh headless chromium each call (a
  listener each), all quit after the test; or a skip saying what is missing."""
  webdriver = pytest.importorskip('selenium.webdriver', reason='selenium is not installed')
  for path in (CHROMIUM, CHROMEDRIVER):
    if not os.path.exists(path):
      pytest.skip(f'{path} is missing (apt-get install chromium chromium-driver)')
  from selenium.webdriver.chrome.service import Service  # pylint: disable=g-import-not-at-top
  drivers = []

  def open_browser():
    downloads = str(tmp_path / f'downloads{len(drivers)}')
    os.makedirs(downloads)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
                 '--no-first-run', '--disable-background-networking', '--disable-sync',
                 '--disable-component-update', '--window-size=1280,1800'):
      opts.add_argument(flag)
    opts.add_experimental_option('prefs', {'download.default_directory': downloads,
                                           'download.prompt_for_download': False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drivers.append(driver)
    driver.execute_cdp_cmd('Page.setDownloadBehavior', {'behavior': 'allow',
                                                        'downloadPath': downloads})
    return driver, downloads

  yield open_browser
  for driver in drivers:
    driver.quit()


def _wait(fn, seconds=20):
  deadline = time.time() + seconds
  while not fn():
    assert time.time() < deadline, 'timed out'
    time.sleep(0.2)


def _media(driver):
  return driver.execute_script(
      "return Array.from(document.querySelectorAll('audio')).map("
      "a => ({ready: a.readyState, duration: a.duration, error: a.error && a.error.code}))")


def test_report_page_plays_every_clip(report, browser, tmp_path):
  driver, _ = browser()
  driver.get('file://' + os.path.join(report, 'report.html'))
  _wait(lambda: all(m['ready'] >= 1 for m in _media(driver)))
  media = _media(driver)
  assert len(media) == 6  # 2 clips of each run and of Bach.
  assert all(m['error'] is None and m['duration'] > 1 for m in media), media
  widths = driver.execute_script(
      "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
  assert len(widths) >= 11 and all(w > 100 for w in widths), widths
  text = driver.find_element('tag name', 'body').text
  assert 'Bach (held-out test)' in text and 'attn' in text and 'lstm' in text
  driver.save_screenshot(str(tmp_path / 'report.png'))


def _answer(driver, downloads, report, listener, side):
  driver.get('file://' + os.path.join(report, 'listen.html'))
  _wait(lambda: all(m['ready'] >= 1 for m in _media(driver)))
  assert len(_media(driver)) == 12 and all(m['duration'] > 0.5 for m in _media(driver))
  driver.find_element('id', 'listener').send_keys(listener)
  for radio in driver.find_elements('css selector', f'input[type=radio][value={side}]'):
    radio.click()
  assert driver.find_element('id', 'done').text == '6 of 6 answered'
  before = set(glob.glob(os.path.join(downloads, '*.json')))
  driver.find_element('id', 'download').click()
  _wait(lambda: set(glob.glob(os.path.join(downloads, '*.json'))) - before)
  (path,) = set(glob.glob(os.path.join(downloads, '*.json'))) - before
  return path


def test_listening_test_answers_download_and_aggregate(report, browser, tmp_path):
  alice = _answer(*browser(), report, 'alice', 'a')  # Two listeners, two browsers.
  bob = _answer(*browser(), report, 'bob', 'b')
  answers = json.load(open(alice))
  assert answers['listener'] == 'alice' and len(answers['answers']) == 6
  assert {a['choice'] for a in answers['answers']} == {'a'}
  out = str(tmp_path / 'results')
  shutil.copytree(report, out)
  proc = subprocess.run([sys.executable, '-m', 'bach_jax.compare', f'--out={out}',
                         f'--listening={alice},{bob}'], cwd=REPO, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.load(open(os.path.join(out, 'listening.json')))
  assert results['listeners'] == ['alice', 'bob']
  key = json.load(open(os.path.join(out, 'listen_key.json')))['pairs']
  bach_pairs = sum(p['kind'] == 'bach' for p in key.values())
  taken = [f['taken_for_bach'] for f in results['families'].values()]
  assert sum(t['total'] for t in taken) == 2 * bach_pairs
  for t in taken:  # Opposite answers: each model excerpt chosen by exactly one listener.
    assert t['count'] * 2 == t['total'] and abs(t['rate'][0] - 0.5) < 1e-9
    assert t['rate'][1] < 0.5 < t['rate'][2]
  assert os.path.getsize(os.path.join(out, 'listening.png')) > 5000


def test_the_listening_key_stays_out_of_the_page(report):
  page = open(os.path.join(report, 'listen.html')).read()
  assert 'listen_key' not in page and 'lstm' not in page and 'attn' not in page
  names = [os.path.basename(p) for p in glob.glob(os.path.join(report, 'clips', '*.wav'))]
  assert len(names) == 12 and all(n.startswith('clip_') for n in names)


def test_wilson_interval():
  rate, low, high = compare.compare_listen.wilson(5, 10)
  assert rate == 0.5 and abs(low - 0.2366) < 1e-3 and abs(high - 0.7634) < 1e-3
  assert compare.compare_listen.wilson(0, 0) is None


def _wav(path):
  with wave.open(str(path)) as w:
    return np.frombuffer(w.readframes(w.getnframes()), '<i2').astype(np.float64) / 32768


def test_audio_is_normalized_whatever_the_renderer(tmp_path, monkeypatch):
  piece = pianoroll.PianoRoll(np.eye(88, dtype=bool)[[39, 43, 46, 51] * 8], None, 4, {})
  pm = pianoroll.to_midi(piece, qpm=120, program=audio.INSTRUMENTS['organ'])
  kinds = {}
  for name, font in (('default', None), ('sine', str(tmp_path / 'no.sf2'))):
    if font:
      monkeypatch.setenv('BACH_JAX_SOUNDFONT', font)
    kinds[name] = audio.renderer()[0]
    audio.write_wav(tmp_path / f'{name}.wav', pm)
    x = _wav(tmp_path / f'{name}.wav')
    rms, peak = np.sqrt(np.mean(x ** 2)), np.max(np.abs(x))
    assert abs(20 * np.log10(rms) - audio.TARGET_RMS_DBFS) < 0.5 or (
        20 * np.log10(peak) > audio.PEAK_DBFS - 0.1), (name, rms, peak)
    assert 20 * np.log10(peak) <= audio.PEAK_DBFS + 0.01
  assert kinds['sine'] == 'sine'  # A SoundFont that is not there: the built-in synthesis.
  if kinds['default'] == 'sine':
    pytest.skip(f'FluidSynth is not used here: {audio.renderer()[1]}')
  assert not np.allclose(_wav(tmp_path / 'default.wav')[:4000], _wav(tmp_path / 'sine.wav')[:4000])
