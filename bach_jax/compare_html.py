"""report.html and listen.html of `bach_jax.compare`: self-contained pages (relative
paths only, no network, no library), so a report folder opens from disk or a bucket.

report.html: the tables of report.md, then every run's first samples and held-out
Bach, each an <audio> player beside its piano-roll, then the PNGs. listen.html: the
blind listening test (compare_listen): one question per pair of clips, the answers
downloaded as one JSON file by the page's own script.
"""

import html
import json
import os

from bach_jax import compare_report

STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.clips { display: flex; flex-wrap: wrap; gap: 1em; }
.clip { border: 1px solid #ddd; padding: 0.5em; width: 360px; }
.clip img { width: 100%; }
audio { width: 100%; }
.pair { border: 1px solid #ccc; margin: 1em 0; padding: 0.8em; }
.pair .side { display: inline-block; width: 45%; margin-right: 2%; vertical-align: top; }
.pair label { font-weight: bold; }
"""


def _table(header, rows):
  head = ''.join(f'<th>{html.escape(str(h))}</th>' for h in header)
  body = ''.join('<tr>' + ''.join(f'<td>{html.escape(str(c))}</td>' for c in row) + '</tr>'
                 for row in rows)
  return f'<table><tr>{head}</tr>{body}</table>'


def _clip(wav, png, title):
  return (f'<div class="clip"><div>{html.escape(title)}</div>'
          f'<audio controls preload="metadata" src="{html.escape(wav)}"></audio>'
          f'<img src="{html.escape(png)}" alt="{html.escape(title)} piano-roll"></div>')


def report_page(out, report, clips):
  """out/report.html: the report dict (compare.build_report) and {label: [(wav, png)]}."""
  s, ref, floor = report['settings'], report['reference'], report['noise_floor']
  header, rows = compare_report.table_rows(report)
  parts = [f'<!doctype html><html><head><meta charset="utf-8"><title>bach_jax comparison'
           f'</title><style>{STYLE}</style></head><body><h1>Comparison report</h1>',
           f'<p>{s["num_pieces"]} pieces x {s["num_steps"]} steps sampled per run '
           f'(temperature {s["temperature"]}, seed {s["seed"]}). Held-out Bach: the test split '
           f'of <code>{html.escape(str(ref["source"]))}</code>, {ref["pieces"]} pieces. Noise '
           f'floor (valid against test): distance {compare_report._num(floor["distance"])}. '  # pylint: disable=protected-access
           'Lower distance is closer to Bach; see report.md for every column\'s definition.</p>',
           _table(header, rows), '<h2>Listen</h2>',
           '<p>The first samples of every run and pieces of held-out Bach, each with its '
           'piano-roll. <a href="listen.html">A blind listening test</a> asks which is '
           'Bach.</p>']
  for label, items in clips.items():
    parts.append(f'<h3>{html.escape(label)}</h3><div class="clips">')
    parts += [_clip(wav, png, f'{label} {i}') for i, (wav, png) in enumerate(items)]
    parts.append('</div>')
  parts.append('<h2>Plots</h2>')
  parts += [f'<p><img src="{html.escape(f)}" alt="{html.escape(f)}" style="max-width:100%">'
            '</p>' for f in report.get('files', ()) if f.endswith('.png')]
  parts.append('</body></html>')
  with open(os.path.join(out, 'report.html'), 'w') as f:
    f.write('\n'.join(parts))
  return 'report.html'


_LISTEN_SCRIPT = """
const answers = {};
function choose(pair, side) {
  answers[pair] = side;
  document.getElementById('done').textContent =
      Object.keys(answers).length + ' of ' + PAIRS.length + ' answered';
}
function download() {
  const result = {test_id: TEST_ID, listener: document.getElementById('listener').value,
                  finished_at: new Date().toISOString(),
                  answers: PAIRS.filter(p => answers[p.id]).map(
                      p => ({pair: p.id, choice: answers[p.id]}))};
  const blob = new Blob([JSON.stringify(result, null, 1)], {type: 'application/json'});
  const link = document.createElement('a');
  link.href = URL.createObjectURL(blob);
  link.download = 'listening_answers.json';
  document.body.appendChild(link);
  link.click();
  link.remove();
}
"""


def listen_page(out, pairs, test_id):
  """out/listen.html: one question per pair; the answers download as JSON."""
  parts = [f'<!doctype html><html><head><meta charset="utf-8"><title>Which is Bach?'
           f'</title><style>{STYLE}</style></head><body><h1>Which is Bach?</h1>',
           '<p>Each question plays two excerpts of the same length and sound. Listen to '
           'both, then choose. Nothing but the music tells them apart. When done, press '
           '<b>Download answers</b> and send the file.</p>',
           '<p><label>Your name or initials: <input id="listener" type="text"></label></p>']
  for n, p in enumerate(pairs, 1):
    sides = ''.join(
        f'<div class="side"><label>{side.upper()}</label>'
        f'<audio controls preload="metadata" src="{html.escape(p[side])}"></audio>'
        f'<label><input type="radio" name="{p["id"]}" value="{side}" '
        f'id="{p["id"]}-{side}" onclick="choose(\'{p["id"]}\', \'{side}\')"> '
        f'{side.upper()}</label></div>' for side in ('a', 'b'))
    parts.append(f'<div class="pair" id="{p["id"]}"><div>{n}. '
                 f'{html.escape(p["question"])}</div>{sides}</div>')
  parts += ['<p id="done">0 of %d answered</p>' % len(pairs),
            '<p><button id="download" onclick="download()">Download answers</button></p>',
            f'<script>const PAIRS = {json.dumps(pairs)};\n'
            f'const TEST_ID = {json.dumps(test_id)};\n{_LISTEN_SCRIPT}</script>',
            '</body></html>']
  with open(os.path.join(out, 'listen.html'), 'w') as f:
    f.write('\n'.join(parts))
  return 'listen.html'
