// The actrec web page: a thin client of the service's JSON API (docs/service.md, "Web page").
// No framework and no build step. Everything the server sends is put in the page as text
// (textContent), never as markup, and the page only talks to its own origin (see the
// Content-Security-Policy in service/api/web.py).

const NDJSON = 'application/x-ndjson';
const KEY_STORE = 'actrec.apiKey';
// Colour-blind-friendly first (Okabe-Ito), then a few more distinct hues.
const PALETTE = [
  '#0072b2', '#e69f00', '#009e73', '#cc79a7', '#56b4e9', '#d55e00',
  '#6a3d9a', '#b8a800', '#1b9e77', '#b15928', '#e7298a', '#66a61e',
];
const SCORE_MEANING = {
  c3d_vll: 'Score: the share of clip votes (ties ranked by mean softmax probability).',
  attention_lstm: 'Score: the share of clip votes (ties ranked by mean softmax probability).',
  full_video: 'Score: the mean softmax probability.',
  ms3d: 'Score: exp(−distance) to the class centre; "unknown" when the nearest centre is '
    + 'at least gamma away.',
};
const WINDOWED = new Set(['ms3d', 'full_video']);
const ERROR_TITLES = {
  400: 'The server could not read this as a video',
  401: 'Not authorised',
  403: 'Not allowed',
  404: 'Not found',
  408: 'The upload stalled',
  409: 'Conflict',
  413: 'Too large',
  415: 'No video stream in this file',
  422: 'Bad request',
  503: 'The server is busy or not ready',
};

const $ = (id) => document.getElementById(id);

// The run whose answer is on screen (running or ended).
let shown = null;

const state = {
  apiKey: readStoredKey(),
  models: new Map(),
  file: null,
  previewUrl: null,
  run: null,
};

// ------------------------------------------------------------------------------ HTTP

class HttpError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.name = 'HttpError';
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter; // seconds, from a 503's Retry-After
  }
}

// A mistake in the form, found before anything is sent.
function formProblem(message) {
  const err = new Error(message);
  err.name = 'FormProblem';
  return err;
}

function bearer(secret) {
  return secret ? { Authorization: `Bearer ${secret}` } : {};
}

async function errorOf(resp) {
  const text = await resp.text();
  const retry = Number.parseInt(resp.headers.get('retry-after') || '', 10);
  const retryAfter = Number.isFinite(retry) ? retry : null;
  try {
    const body = JSON.parse(text);
    if (body && body.error) {
      const { code, message } = body.error;
      return new HttpError(resp.status, code || 'error', message || '', retryAfter);
    }
  } catch {
    // not JSON: a proxy's page, say; fall through
  }
  const message = text.slice(0, 300) || resp.statusText;
  return new HttpError(resp.status, 'http_' + resp.status, message, retryAfter);
}

async function api(path, { method = 'GET', body, secret, signal } = {}) {
  const resp = await fetch(path, {
    method, body, signal, headers: { Accept: 'application/json', ...bearer(secret) },
  });
  if (!resp.ok) throw await errorOf(resp);
  return resp.json();
}

// Feeds each line of an NDJSON body to onLine as it arrives (whole body at once where the
// browser has no readable streams).
async function readLines(resp, onLine) {
  if (!resp.body || typeof resp.body.getReader !== 'function') {
    for (const line of (await resp.text()).split('\n')) if (line.trim()) onLine(JSON.parse(line));
    return;
  }
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, end).trim();
        buffer = buffer.slice(end + 1);
        if (line) onLine(JSON.parse(line));
      }
    }
    buffer += decoder.decode();
    if (buffer.trim()) onLine(JSON.parse(buffer));
  } finally {
    reader.releaseLock();
  }
}

// ------------------------------------------------------------------------------ messages

function setStatus(el, text) {
  el.textContent = text;
}

function clearError(el) {
  el.hidden = true;
  el.replaceChildren();
}

// Shows err in an alert region: a title, the server's message verbatim, its status and code,
// and what to do about it where that is clear. `secretKind` says which secret the request
// carried ('key' or 'admin'), so a 401 can say which one to fix.
function showError(el, err, secretKind = 'key') {
  el.replaceChildren();
  const title = document.createElement('strong');
  title.className = 'error-title';
  const message = document.createElement('span');
  message.className = 'error-message';
  const code = document.createElement('code');
  code.className = 'error-code';
  let hint = '';
  if (err instanceof HttpError) {
    title.textContent = ERROR_TITLES[err.status] || (err.status === 200
      ? 'The recognition failed part-way' : `Error ${err.status}`);
    message.textContent = err.message;
    code.textContent = err.status === 200 ? err.code : `${err.status} ${err.code}`;
    if (err.status === 401 && secretKind === 'admin') {
      hint = 'The admin token was refused: check it and try again.';
    } else if (err.status === 401) {
      hint = 'This server needs an API key: enter it under “API key” at the top of the page.';
    } else if (err.code === 'admin_disabled') {
      hint = 'Classes cannot be changed on this server: it has no admin token configured.';
    } else if (err.retryAfter !== null) {
      hint = `Try again in ${err.retryAfter} s.`;
    }
  } else if (err && err.name === 'FormProblem') {
    title.textContent = 'Check the form';
    message.textContent = err.message;
  } else if (err && err.name === 'AbortError') {
    title.textContent = 'Stopped';
    message.textContent = 'The request was cancelled.';
  } else {
    title.textContent = 'Could not reach the server';
    message.textContent = String(err && err.message ? err.message : err);
  }
  const head = document.createElement('p');
  head.className = 'error-head';
  head.append(title);
  if (code.textContent) head.append(' ', code);
  el.append(head, message);
  if (hint) {
    const p = document.createElement('p');
    p.className = 'error-hint';
    p.textContent = hint;
    el.append(p);
  }
  el.hidden = false;
  if (err instanceof HttpError && err.status === 401 && secretKind === 'key') askForKey();
}

// ------------------------------------------------------------------------------ API key

function readStoredKey() {
  try {
    return sessionStorage.getItem(KEY_STORE) || '';
  } catch {
    return '';
  }
}

function storeKey(key, remember) {
  try {
    if (key && remember) sessionStorage.setItem(KEY_STORE, key);
    else sessionStorage.removeItem(KEY_STORE);
  } catch {
    // storage refused (privacy mode): the key stays in memory only
  }
}

function showKeyState() {
  $('key-state').textContent = state.apiKey ? 'set' : 'not set';
  $('key-state').classList.toggle('on', Boolean(state.apiKey));
}

function askForKey() {
  $('key-panel').open = true;
  $('api-key').focus();
}

function initKeyPanel() {
  $('api-key').value = state.apiKey;
  $('remember-key').checked = Boolean(state.apiKey);
  showKeyState();
  $('key-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    state.apiKey = $('api-key').value.trim();
    storeKey(state.apiKey, $('remember-key').checked);
    showKeyState();
    $('key-panel').open = false;
    loadModels();
  });
  $('forget-key').addEventListener('click', () => {
    state.apiKey = '';
    $('api-key').value = '';
    storeKey('', false);
    showKeyState();
  });
}

// ------------------------------------------------------------------------------ models

let retryTimer = null;

async function loadModels() {
  clearTimeout(retryTimer);
  const select = $('model');
  let body;
  try {
    body = await api('/models', { secret: state.apiKey });
  } catch (err) {
    setStatus($('status'), '');
    select.options[0].textContent = 'No models (see the message below)';
    showError($('error'), err);
    return;
  }
  clearError($('error'));
  const previous = select.value;
  state.models = new Map(body.models.map((m) => [m.name, m]));
  select.replaceChildren();
  for (const m of body.models) {
    const option = document.createElement('option');
    option.value = m.name;
    option.textContent = m.name;
    select.append(option);
  }
  const failed = Object.keys(body.failed || {});
  if (!body.models.length) {
    const option = document.createElement('option');
    option.value = '';
    option.textContent = 'No model loaded';
    select.append(option);
    select.disabled = true;
    setStatus($('status'), failed.length
      ? `No model could be loaded (${failed.join(', ')}); see the server log.`
      : 'The server is still loading its models; trying again in a few seconds…');
    if (!failed.length) retryTimer = setTimeout(loadModels, 2000);
  } else {
    select.disabled = false;
    select.value = state.models.has(previous) ? previous
      : (state.models.has(body.default) ? body.default : body.models[0].name);
    setStatus($('status'), failed.length ? `Not loaded: ${failed.join(', ')}.` : '');
  }
  onModelChange();
}

// "onnxruntime (CUDA, CPU)", "torch (cuda)": the backend and where it runs.
function backendText(model) {
  const info = model.backend_info || {};
  const where = [];
  if (Array.isArray(info.providers)) {
    where.push(...info.providers.map((p) => String(p).replace(/ExecutionProvider$/, '')));
  }
  if (typeof info.device === 'string') where.push(info.device);
  return where.length ? `${model.backend} (${where.join(', ')})` : model.backend;
}

function currentModel() {
  return state.models.get($('model').value) || null;
}

function onModelChange() {
  const model = currentModel();
  const info = $('model-info');
  if (!model) {
    info.textContent = '';
  } else {
    const n = model.labels.length;
    info.textContent = `${model.family} on ${backendText(model)} · ${n} class${n === 1 ? '' : 'es'}: `
      + model.labels.join(', ');
  }
  $('window-field').hidden = !(model && WINDOWED.has(model.family));
  updateRecogniseButton();
  showEnrolPanel(model);
}

// ------------------------------------------------------------------------------ the file

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

function setFile(file) {
  state.file = file || null;
  $('file-info').textContent = file ? `${file.name} · ${formatBytes(file.size)}` : 'No file chosen.';
  $('dropzone').classList.toggle('has-file', Boolean(file));
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = file ? URL.createObjectURL(file) : null;
  const preview = $('preview');
  preview.hidden = !file;
  if (file) preview.src = state.previewUrl;
  else preview.removeAttribute('src');
  updateRecogniseButton();
}

function initDropzone() {
  const zone = $('dropzone');
  const input = $('video-file');
  input.addEventListener('change', () => setFile(input.files[0]));
  for (const type of ['dragenter', 'dragover']) {
    zone.addEventListener(type, (ev) => {
      ev.preventDefault();
      zone.classList.add('dragging');
    });
  }
  zone.addEventListener('dragleave', (ev) => {
    if (!zone.contains(ev.relatedTarget)) zone.classList.remove('dragging');
  });
  zone.addEventListener('drop', (ev) => {
    ev.preventDefault();
    zone.classList.remove('dragging');
    const files = ev.dataTransfer && ev.dataTransfer.files;
    if (!files || !files.length) return;
    input.files = files;
    setFile(files[0]);
  });
  // A file dropped beside the zone must not make the browser leave the page to open it.
  for (const type of ['dragover', 'drop']) {
    window.addEventListener(type, (ev) => {
      if (!zone.contains(ev.target)) ev.preventDefault();
    });
  }
}

function updateRecogniseButton() {
  $('recognise-btn').disabled = !(currentModel() && state.file) || Boolean(state.run);
}

// ------------------------------------------------------------------------------ recognition

// A label's colour: by its index in the model's labels (stable across runs), else a hash.
function colourOf(label, model) {
  let index = model ? model.labels.indexOf(label) : -1;
  if (index < 0) {
    index = 0;
    for (const ch of label) index = (index * 31 + ch.codePointAt(0)) >>> 0;
  }
  return PALETTE[index % PALETTE.length];
}

function formatSeconds(s) {
  if (s < 60) return `${s.toFixed(2)} s`;
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = (s % 60).toFixed(1).padStart(4, '0');
  return h ? `${h}:${String(m).padStart(2, '0')}:${rest}` : `${m}:${rest}`;
}

const formatScore = (x) => x.toFixed(3);

async function recognise(ev) {
  ev.preventDefault();
  const model = currentModel();
  clearError($('error'));
  if (!model) return;
  if (!state.file) {
    showError($('error'), formProblem('Choose a video file first.'));
    $('video-file').focus();
    return;
  }
  const form = new FormData();
  form.append('file', state.file, state.file.name);
  form.append('model', model.name);
  form.append('timeline', 'true');
  if (WINDOWED.has(model.family)) {
    const windowS = Number($('window-s').value);
    if (!(windowS > 0)) {
      showError($('error'), formProblem('The timeline window must be a number of seconds above 0.'));
      $('window-s').focus();
      return;
    }
    form.append('window_s', String(windowS));
  }
  const run = {
    model,
    controller: new AbortController(),
    segments: [],
    counts: new Map(), // segments per top label (null: unknown), for the legend
    result: null,
    announced: false,
  };
  state.run = run;
  shown = run;
  startRunView(run);
  try {
    const resp = await fetch('/recognize', {
      method: 'POST',
      body: form,
      signal: run.controller.signal,
      headers: { Accept: NDJSON, ...bearer(state.apiKey) },
    });
    if (!resp.ok) throw await errorOf(resp);
    if ((resp.headers.get('content-type') || '').startsWith(NDJSON)) {
      await readLines(resp, (line) => onLine(run, line));
    } else {
      finishRun(run, await resp.json());
    }
    if (!run.result) {
      throw new HttpError(200, 'incomplete_answer',
        'the answer ended before its result (the connection was cut)');
    }
  } catch (err) {
    run.controller.abort();
    $('results').setAttribute('aria-busy', 'false');
    setStatus($('progress'), '');
    setStatus($('status'), err.name === 'AbortError' ? 'Stopped.' : 'The recognition failed.');
    if (err.name !== 'AbortError') showError($('error'), err);
    $('results').classList.add('failed');
    // Nothing came back to show: no empty result panel (the alert says why).
    if (!run.segments.length) $('results').hidden = true;
  } finally {
    state.run = null;
    $('stop-btn').hidden = true;
    updateRecogniseButton();
  }
}

function onLine(run, line) {
  if (line.segment) addSegment(run, line.segment);
  else if (line.result) finishRun(run, line.result);
  else if (line.error) throw new HttpError(200, line.error.code, line.error.message);
}

function startRunView(run) {
  const results = $('results');
  results.hidden = false;
  results.classList.remove('failed', 'done');
  results.setAttribute('aria-busy', 'true');
  $('unknown-badge').hidden = true;
  $('top5').replaceChildren();
  const waiting = document.createElement('li');
  waiting.className = 'waiting';
  waiting.textContent = 'Waiting for the whole video…';
  $('top5').append(waiting);
  $('details').replaceChildren();
  $('legend').replaceChildren();
  $('raw').textContent = '';
  $('score-hint').textContent = SCORE_MEANING[run.model.family] || '';
  for (const seg of $('timeline').querySelectorAll('.segment')) seg.remove();
  hideTip();
  $('axis').replaceChildren();
  setStatus($('progress'), 'Uploading…');
  setStatus($('status'), `Recognising ${state.file.name} with ${run.model.name}…`);
  $('stop-btn').hidden = false;
  updateRecogniseButton();
}

function addSegment(run, segment) {
  const index = run.segments.length;
  run.segments.push(segment);
  const top = segment.top5[0];
  const label = top ? top.label : '';
  const key = segment.unknown ? null : label;
  run.counts.set(key, (run.counts.get(key) || 0) + 1);
  const button = document.createElement('button');
  button.type = 'button';
  button.className = 'segment';
  button.dataset.index = String(index);
  button.dataset.label = label;
  button.dataset.unknown = String(Boolean(segment.unknown));
  button.tabIndex = index === 0 ? 0 : -1;
  button.style.setProperty('--start', String(segment.start_s));
  button.style.setProperty('--len', String(Math.max(0, segment.end_s - segment.start_s)));
  button.style.setProperty('--colour', colourOf(label, run.model));
  const named = segment.unknown ? `unknown (nearest: ${label})` : label;
  button.setAttribute('aria-label', `Segment ${index + 1}, ${formatSeconds(segment.start_s)} to `
    + `${formatSeconds(segment.end_s)}: ${named}${top ? ` ${formatScore(top.score)}` : ''}`);
  $('timeline').insertBefore(button, $('playhead'));
  rescale(run);
  renderLegend(run);
  setStatus($('progress'), `${run.segments.length} segment${run.segments.length === 1 ? '' : 's'}`
    + ` · ${formatSeconds(segment.end_s)} read`);
  if (!run.announced) {
    run.announced = true;
    setStatus($('status'), 'Reading the video: the timeline fills in as it goes.');
  }
}

function knownDuration(run) {
  if (run.result) return run.result.duration_s;
  const last = run.segments.length ? run.segments[run.segments.length - 1].end_s : 0;
  const preview = $('preview').duration;
  return Math.max(last, Number.isFinite(preview) ? preview : 0);
}

// Segments and ticks are placed by CSS from --start/--len (seconds) and the strip's --scale
// (percent per second), so a longer known duration is one property change.
function rescale(run) {
  const duration = knownDuration(run);
  if (!(duration > 0)) return;
  $('timeline').style.setProperty('--scale', String(100 / duration));
  $('axis').style.setProperty('--scale', String(100 / duration));
  renderAxis(duration);
}

function niceStep(duration) {
  const raw = duration / 6;
  const power = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * power >= raw) return m * power;
  return 10 * power;
}

function renderAxis(duration) {
  const axis = $('axis');
  const step = niceStep(duration);
  const ticks = [];
  for (let t = 0; t <= duration + 1e-9; t += step) {
    const tick = document.createElement('span');
    tick.className = 'tick';
    tick.style.setProperty('--at', String(t));
    if (t > 0 && t / duration > 0.92) tick.classList.add('end');
    tick.textContent = step < 1 ? `${t.toFixed(1)} s` : formatSeconds(t).replace('.00 s', ' s');
    ticks.push(tick);
  }
  axis.replaceChildren(...ticks);
}

function renderLegend(run) {
  const items = [];
  for (const [label, count] of run.counts) {
    const li = document.createElement('li');
    const swatch = document.createElement('span');
    swatch.className = label === null ? 'swatch unknown' : 'swatch';
    if (label !== null) swatch.style.setProperty('--colour', colourOf(label, run.model));
    swatch.setAttribute('aria-hidden', 'true');
    li.append(swatch, `${label === null ? 'unknown' : label} (${count})`);
    items.push(li);
  }
  $('legend').replaceChildren(...items);
}

function finishRun(run, result) {
  run.result = result;
  const timeline = result.timeline || [];
  if (timeline.length !== run.segments.length) {
    // Not streamed (or the lines and the answer disagree): the answer's own timeline wins.
    for (const seg of $('timeline').querySelectorAll('.segment')) seg.remove();
    run.segments = [];
    run.counts = new Map();
    for (const seg of timeline) addSegment(run, seg);
  }
  rescale(run);
  renderTop5(run.model, result);
  renderDetails(result);
  $('unknown-badge').hidden = !result.unknown;
  $('raw').textContent = JSON.stringify(result, null, 2);
  $('results').setAttribute('aria-busy', 'false');
  $('results').classList.add('done');
  const best = result.top5[0];
  const n = timeline.length;
  setStatus($('progress'), '');
  setStatus($('status'), `Done: ${result.unknown ? 'unknown, nearest ' : ''}`
    + `${best ? `${best.label} (${formatScore(best.score)})` : 'no label'}, `
    + `${n} timeline segment${n === 1 ? '' : 's'}, ${Math.round(result.timing_ms.total)} ms.`);
}

function renderTop5(model, result) {
  const items = result.top5.map((entry) => {
    const li = document.createElement('li');
    li.dataset.label = entry.label;
    const label = document.createElement('span');
    label.className = 't5-label';
    label.textContent = entry.label;
    const bar = document.createElement('span');
    bar.className = 't5-bar';
    bar.setAttribute('aria-hidden', 'true');
    const fill = document.createElement('span');
    fill.className = 't5-fill';
    fill.style.setProperty('--score', String(Math.min(1, Math.max(0, entry.score))));
    fill.style.setProperty('--colour', colourOf(entry.label, model));
    bar.append(fill);
    const score = document.createElement('span');
    score.className = 't5-score';
    score.textContent = formatScore(entry.score);
    li.append(label, bar, score);
    return li;
  });
  $('top5').replaceChildren(...items);
}

function renderDetails(result) {
  const t = result.timing_ms;
  const model = state.models.get(result.model);
  const rows = [
    ['Model', result.model],
    ['Family', result.family],
    ['Backend', model && model.backend === result.backend ? backendText(model) : result.backend],
    ['Duration', formatSeconds(result.duration_s)],
    ['Frames', String(result.frames)],
    ['Network inputs', String(result.clips)],
    ['Decode', `${t.decode.toFixed(1)} ms`],
    ['Inference', `${t.infer.toFixed(1)} ms`],
    ['Total', `${t.total.toFixed(1)} ms`],
  ];
  if (result.detail && result.detail.gamma != null) {
    rows.push(['Gamma', result.detail.gamma.toFixed(3)]);
  }
  const nodes = [];
  for (const [name, value] of rows) {
    const dt = document.createElement('dt');
    dt.textContent = name;
    const dd = document.createElement('dd');
    dd.textContent = value;
    dd.dataset.field = name.toLowerCase().replace(/ /g, '-');
    nodes.push(dt, dd);
  }
  $('details').replaceChildren(...nodes);
}

// ------------------------------------------------------------------------------ timeline UI

function segmentOf(el) {
  return el && el.closest ? el.closest('.segment') : null;
}

let tipFor = null;

function showTip(button) {
  const segment = shown && shown.segments[Number(button.dataset.index)];
  if (!segment) return;
  const tip = $('segment-tip');
  const head = document.createElement('strong');
  head.textContent = `${formatSeconds(segment.start_s)} – ${formatSeconds(segment.end_s)}`;
  const parts = [head];
  if (segment.unknown) {
    const unknown = document.createElement('span');
    unknown.className = 'badge';
    unknown.textContent = 'unknown';
    parts.push(' ', unknown);
  }
  const list = document.createElement('ol');
  for (const entry of segment.top5) {
    const li = document.createElement('li');
    const swatch = document.createElement('span');
    swatch.className = 'swatch';
    swatch.style.setProperty('--colour', colourOf(entry.label, shown.model));
    const score = document.createElement('span');
    score.className = 'tip-score';
    score.textContent = formatScore(entry.score);
    li.append(swatch, entry.label, ' ', score);
    list.append(li);
  }
  parts.push(list);
  tip.replaceChildren(...parts);
  tip.hidden = false;
  if (tipFor && tipFor !== button) tipFor.removeAttribute('aria-describedby');
  tipFor = button;
  button.setAttribute('aria-describedby', 'segment-tip');
  // Centred over the segment, kept inside the strip.
  const wrap = tip.parentElement.getBoundingClientRect();
  const rect = button.getBoundingClientRect();
  const width = tip.offsetWidth;
  const centre = rect.left + rect.width / 2 - wrap.left;
  tip.style.left = `${Math.max(0, Math.min(wrap.width - width, centre - width / 2))}px`;
}

function hideTip() {
  $('segment-tip').hidden = true;
  if (tipFor) tipFor.removeAttribute('aria-describedby');
  tipFor = null;
}

function focusSegment(button) {
  for (const seg of $('timeline').querySelectorAll('.segment[tabindex="0"]')) seg.tabIndex = -1;
  button.tabIndex = 0;
  button.focus();
}

function initTimeline() {
  const strip = $('timeline');
  strip.addEventListener('mouseover', (ev) => {
    const button = segmentOf(ev.target);
    if (button) showTip(button);
  });
  strip.addEventListener('mouseleave', () => {
    if (!strip.contains(document.activeElement)) hideTip();
    else showTip(document.activeElement);
  });
  strip.addEventListener('focusin', (ev) => {
    const button = segmentOf(ev.target);
    if (button) showTip(button);
  });
  strip.addEventListener('focusout', (ev) => {
    if (!strip.contains(ev.relatedTarget)) hideTip();
  });
  strip.addEventListener('click', (ev) => {
    const button = segmentOf(ev.target);
    if (!button) return;
    focusSegment(button);
    showTip(button);
    const segment = shown && shown.segments[Number(button.dataset.index)];
    const preview = $('preview');
    if (segment && preview.src && Number.isFinite(preview.duration)) {
      preview.currentTime = segment.start_s;
    }
  });
  strip.addEventListener('keydown', (ev) => {
    const button = segmentOf(ev.target);
    if (!button) return;
    const all = [...strip.querySelectorAll('.segment')];
    const at = all.indexOf(button);
    const to = { ArrowRight: at + 1, ArrowDown: at + 1, ArrowLeft: at - 1, ArrowUp: at - 1,
      Home: 0, End: all.length - 1 }[ev.key];
    if (to === undefined) {
      if (ev.key === 'Escape') hideTip();
      return;
    }
    ev.preventDefault();
    focusSegment(all[Math.max(0, Math.min(all.length - 1, to))]);
  });
  // The tip is placed in pixels: a new width would leave it where the segment no longer is.
  window.addEventListener('resize', hideTip);
  const preview = $('preview');
  preview.addEventListener('timeupdate', () => {
    $('playhead').style.setProperty('--at', String(preview.currentTime));
    $('playhead').classList.toggle('on', preview.currentTime > 0);
  });
  preview.addEventListener('loadedmetadata', () => {
    if (shown) rescale(shown);
  });
  preview.addEventListener('error', () => {
    preview.hidden = true; // a codec this browser cannot play; the server may still read it
  });
}

// ------------------------------------------------------------------------------ ms3d classes

function showEnrolPanel(model) {
  const panel = $('enrol-panel');
  const enrollable = Boolean(model && (model.enrollable || model.family === 'ms3d'));
  panel.hidden = !enrollable;
  clearError($('enrol-error'));
  setStatus($('enrol-status'), '');
  if (!enrollable) return;
  $('enrol-model').textContent = model.name;
  loadClasses(model);
}

async function loadClasses(model) {
  try {
    const body = await api(`/models/${encodeURIComponent(model.name)}/classes`,
      { secret: state.apiKey });
    if (currentModel() === model) renderClasses(model, body);
  } catch (err) {
    showError($('enrol-error'), err);
  }
}

function renderClasses(model, body) {
  // New labels get their colour like the trained ones.
  for (const c of body.classes) if (!model.labels.includes(c.label)) model.labels.push(c.label);
  const rows = body.classes.map((c) => {
    const tr = document.createElement('tr');
    tr.dataset.label = c.label;
    const name = document.createElement('td');
    const swatch = document.createElement('span');
    swatch.className = 'swatch';
    swatch.setAttribute('aria-hidden', 'true');
    swatch.style.setProperty('--colour', colourOf(c.label, model));
    name.append(swatch, c.label);
    const count = document.createElement('td');
    count.textContent = String(c.count);
    const action = document.createElement('td');
    const remove = document.createElement('button');
    remove.type = 'button';
    remove.className = 'secondary small';
    remove.textContent = 'Remove';
    remove.setAttribute('aria-label', `Remove class ${c.label}`);
    remove.addEventListener('click', () => removeClass(model, c.label));
    action.append(remove);
    tr.append(name, count, action);
    return tr;
  });
  $('classes').tBodies[0].replaceChildren(...rows);
}

async function enrol(ev) {
  ev.preventDefault();
  const model = currentModel();
  if (!model) return;
  const files = $('enrol-files').files;
  const label = $('enrol-label').value.trim();
  const form = new FormData();
  form.append('label', label);
  for (const file of files) form.append('file', file, file.name);
  clearError($('enrol-error'));
  $('enrol-btn').disabled = true;
  setStatus($('enrol-status'), `Embedding ${files.length} video${files.length === 1 ? '' : 's'}`
    + ` for “${label}”…`);
  try {
    const body = await api(`/models/${encodeURIComponent(model.name)}/classes`, {
      method: 'POST', body: form, secret: $('admin-token').value,
    });
    renderClasses(model, body);
    setStatus($('enrol-status'), `${body.created ? 'Added' : 'Updated'} class “${body.label}” `
      + `from ${body.videos} video${body.videos === 1 ? '' : 's'}.`);
    $('enrol-files').value = '';
  } catch (err) {
    setStatus($('enrol-status'), '');
    showError($('enrol-error'), err, 'admin');
  } finally {
    $('enrol-btn').disabled = false;
  }
}

async function removeClass(model, label) {
  clearError($('enrol-error'));
  const token = $('admin-token').value;
  if (!token) {
    showError($('enrol-error'), formProblem('Enter the admin token to remove a class.'));
    $('admin-token').focus();
    return;
  }
  try {
    const body = await api(
      `/models/${encodeURIComponent(model.name)}/classes/${encodeURIComponent(label)}`,
      { method: 'DELETE', secret: token },
    );
    renderClasses(model, body);
    setStatus($('enrol-status'), `Removed class “${label}”.`);
  } catch (err) {
    showError($('enrol-error'), err, 'admin');
  }
}

// ------------------------------------------------------------------------------ start

function init() {
  initKeyPanel();
  initDropzone();
  initTimeline();
  $('model').addEventListener('change', onModelChange);
  $('recognise-form').addEventListener('submit', recognise);
  $('stop-btn').addEventListener('click', () => {
    if (state.run) state.run.controller.abort();
  });
  $('enrol-form').addEventListener('submit', enrol);
  $('preview').hidden = true;
  document.body.classList.add('ready');
  loadModels();
}

init();
