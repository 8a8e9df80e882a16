// The Tandem console: hand-written, no build step, no library. Every piece of data comes from
// the coordinator's /v1 API with the admin token in the Authorization header (the token is in
// sessionStorage only, never in a URL); a refusal shows the API's code and message next to
// the control that caused it. Text from the fleet is only ever set as text, never as HTML.
'use strict';

const KEY = 'tandem.admin_token';
const main = () => document.getElementById('main');
let timers = [];
let aborts = [];

// ---- API ----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(code, message) { super(message); this.code = code; }
  toString() { return `${this.code}: ${this.message}`; }
}

async function api(method, path, body, token) {
  const headers = { Authorization: 'Bearer ' + (token || sessionStorage.getItem(KEY) || '') };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let r;
  try {
    r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError('unreachable', String(e));
  }
  const text = await r.text();
  let v;
  try { v = JSON.parse(text); } catch { v = text; }
  if (!r.ok) {
    const e = v && v.error ? v.error : { code: 'http_' + r.status, message: String(text) };
    if (r.status === 401 && !token) { logout(); }
    throw new ApiError(e.code, e.message);
  }
  return v;
}
const get = (p) => api('GET', p);
const enc = encodeURIComponent;

// ---- DOM helpers ----------------------------------------------------------------------------

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const k of kids.flat()) {
    if (k === undefined || k === null || k === false) continue;
    el.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return el;
}
const link = (href, text) => h('a', { href }, text);
const state = (s) => h('span', { class: 'state ' + s, 'data-state': s }, s);
const table = (id, heads, rows) =>
  h('table', { id }, h('thead', {}, h('tr', {}, heads.map((x) => h('th', {}, x)))),
    h('tbody', {}, rows.map((r) => h('tr', {}, r.map((c) => h('td', {}, c))))));
const kv = (pairs) => h('dl', { class: 'kv' }, pairs.flatMap(([k, v, id]) => [h('dt', {}, k), h('dd', { id }, v)]));
function fill(id, ...kids) {
  const el = document.getElementById(id);
  if (el) el.replaceChildren(...kids.flat().filter((k) => k !== undefined && k !== null));
}
const time = (ms) => (ms ? new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z') : '-');
const gib = (b) => (b / 2 ** 30).toFixed(1) + ' GiB';
const cores = (m) => (m / 1000).toString();
function bar(free, total, fmt) {
  const used = total > 0 ? (total - free) / total : 0;
  const fillEl = h('span');
  fillEl.style.width = `${Math.round(used * 100)}%`; // CSSOM: allowed by the CSP, unlike a style attribute
  return h('span', {}, h('span', { class: 'bar', title: `${Math.round(used * 100)} % held` }, fillEl),
    ` ${fmt(free)} / ${fmt(total)} free`);
}

// An action: a button, and an error/result span beside it.
function action(id, label, run, extra) {
  const out = h('span', { id: id + '-result', class: 'err' });
  const btn = h('button', {
    id, type: 'button',
    onclick: async () => {
      out.textContent = ''; out.className = 'err';
      btn.disabled = true;
      try {
        const msg = await run();
        if (msg) { out.className = 'ok'; out.textContent = msg; }
        refresh();
      } catch (e) {
        out.className = 'err';
        out.textContent = e instanceof ApiError ? e.toString() : String(e);
      } finally { btn.disabled = false; }
    },
  }, label);
  return h('div', {}, extra || [], btn, out);
}

// ---- Pages ----------------------------------------------------------------------------------

let refresh = () => {};
function every(ms, f) {
  refresh = () => f().catch(showError);
  refresh();
  timers.push(setInterval(refresh, ms));
}
function showError(e) {
  fill('page-error', e instanceof ApiError ? e.toString() : String(e));
}
function page(title, ...kids) {
  main().replaceChildren(h('h1', {}, title), h('div', { id: 'page-error', class: 'err' }), ...kids);
}

function login() {
  document.getElementById('nav').hidden = true;
  const input = h('input', { id: 'token', type: 'password', autocomplete: 'off', size: 44, placeholder: 'admin token' });
  const err = h('div', { id: 'login-error', class: 'err' });
  const form = h('form', {
    id: 'login-form',
    onsubmit: async (ev) => {
      ev.preventDefault();
      err.textContent = '';
      const t = input.value.trim();
      try {
        await api('GET', '/v1/clusters', undefined, t);
        sessionStorage.setItem(KEY, t);
        route();
      } catch (e) {
        err.textContent = e instanceof ApiError ? e.toString() : String(e);
      }
    },
  }, h('p', {}, 'Log in with the admin token (', h('code', {}, 'DATA_DIR/admin.token'),
    '; dev mode prints it). It is kept for this browser tab only.'),
  input, ' ', h('button', { id: 'login', type: 'submit' }, 'Log in'), err);
  main().replaceChildren(h('section', { id: 'login-box' }, h('h1', {}, 'Tandem console'), form));
}

function logout() {
  sessionStorage.removeItem(KEY);
  route();
}

function count(by, key) {
  const m = {};
  for (const x of by) m[key(x)] = (m[key(x)] || 0) + 1;
  return m;
}
function counts(id, m, order) {
  const keys = [...new Set([...order, ...Object.keys(m)])];
  return h('div', { class: 'counts', id }, keys.map((k) =>
    h('div', {}, h('span', { class: 'count', id: `${id}-${k}` }, m[k] || 0), state(k))));
}

async function overview() {
  page('Overview',
    h('section', {}, h('h2', {}, 'Clusters'), h('div', { id: 'clusters' }), createCluster()),
    h('section', {}, h('h2', {}, 'Nodes by state'), h('div', { id: 'node-states' })),
    h('section', {}, h('h2', {}, 'Jobs by state'), h('div', { id: 'job-states' })),
    h('section', {}, h('h2', {}, 'Latest failovers'), h('div', { id: 'failovers' })));
  every(2000, async () => {
    // Counted by the coordinator (GET /v1/overview), and one page of nodes: small at any size.
    const [c, o, n] = await Promise.all([get('/v1/clusters'), get('/v1/overview'), get('/v1/nodes?limit=100')]);
    const cname = Object.fromEntries(c.clusters.map((x) => [x.id, x.name]));
    fill('clusters', table('cluster-table', ['cluster', 'mode', 'status', 'nodes', 'cores', 'memory', 'GPUs', 'CU'],
      c.clusters.map((x) => [link('#/cluster/' + enc(x.id), x.name), x.mode, state(x.status), x.nodes.length,
        `${x.capacity.cores_free} / ${x.capacity.cores_total}`,
        `${gib(x.capacity.memory_free_bytes)} / ${gib(x.capacity.memory_total_bytes)}`,
        `${x.capacity.gpus_free} / ${x.capacity.gpus_total}`, `${x.capacity.cu_free} / ${x.capacity.cu_total}`])));
    fill('node-states', counts('nodes', o.nodes_by_state, ['ready', 'suspect', 'down', 'draining']),
      table('node-table', ['node', 'state', 'cluster', 'last beat'], n.nodes.map((x) => [
        link('#/node/' + enc(x.id), x.name), state(x.state), cname[x.cluster] || '-',
        x.last_heartbeat_age_ms === null ? '-' : `${x.last_heartbeat_age_ms} ms ago`])),
      o.nodes_total > n.nodes.length ? h('p', { class: 'muted', id: 'node-total' },
        `the first ${n.nodes.length} of ${o.nodes_total} nodes, by name`) : null);
    fill('job-states', counts('jobs', o.jobs_by_state, ['running', 'pending', 'completed', 'failed', 'stopped']));
    fill('failovers', o.failovers.length ? table('failover-table', ['job', 'from', 'to', 'declared down', 'running again after'],
      o.failovers.map((f) => [link('#/job/' + enc(f.job), f.job_name), f.from_name, f.to_name, time(f.declared_down_ms),
        f.took_ms === null ? 'starting' : `${f.took_ms} ms`]))
      : h('p', { class: 'muted' }, 'none yet'));
  });
}

function createCluster() {
  const name = h('input', { id: 'new-cluster-name', type: 'text', placeholder: 'name' });
  const mode = h('select', { id: 'new-cluster-mode' }, h('option', {}, 'pool'), h('option', {}, 'ha_pairs'));
  const prot = h('input', { id: 'new-cluster-protected', type: 'checkbox' });
  return h('div', { class: 'actions' }, action('create-cluster', 'Create cluster', async () => {
    const r = await api('POST', '/v1/clusters', { name: name.value.trim(), mode: mode.value, deletion_protection: prot.checked });
    return `created ${r.cluster.name} (operation ${r.operation_id})`;
  }, [name, mode, h('label', {}, prot, ' deletion protection')]));
}

async function clusterPage(id) {
  page('Cluster', h('section', { id: 'cluster-info' }),
    h('section', {}, h('h2', {}, 'Actions'), h('div', { class: 'actions', id: 'cluster-actions' })),
    h('section', {}, h('h2', {}, 'Nodes'), h('div', { id: 'cluster-nodes' })),
    h('section', {}, h('h2', {}, 'Pairs'), h('div', { id: 'cluster-pairs' })),
    h('section', {}, h('h2', {}, 'Jobs'), h('div', { id: 'cluster-jobs' })));
  const c0 = await get('/v1/clusters/' + enc(id));
  const alias = h('input', { id: 'edit-alias', type: 'text', value: c0.alias, placeholder: 'alias' });
  const desc = h('input', { id: 'edit-description', type: 'text', value: c0.description, placeholder: 'description' });
  const label = h('input', { id: 'edit-label', type: 'text', placeholder: 'key=value, or key= to remove' });
  const prot = h('input', { id: 'edit-protected', type: 'checkbox', checked: c0.deletion_protection });
  fill('cluster-actions',
    action('edit-cluster', 'Save', async () => {
      const patch = { alias: alias.value, description: desc.value, deletion_protection: prot.checked };
      const l = label.value.trim();
      if (l) {
        const [k, v] = l.split(/=(.*)/s);
        patch.labels = { [k]: v ? v : null };
      }
      await api('PATCH', '/v1/clusters/' + enc(id), patch);
      label.value = '';
      return 'saved';
    }, [alias, desc, label, h('label', {}, prot, ' deletion protection')]),
    action('recycle-cluster', 'Recycle dead nodes', async () => {
      const c = await get('/v1/clusters/' + enc(id));
      const dead = c.nodes.filter((n) => n.state === 'down');
      const errs = [];
      for (const n of dead) {
        try { await api('DELETE', '/v1/nodes/' + enc(n.id)); } catch (e) { errs.push(`${n.name}: ${e}`); }
      }
      if (errs.length) throw new Error(errs.join('; '));
      return `removed ${dead.length} down node(s)`;
    }),
    action('delete-cluster', 'Delete cluster', async () => {
      await api('DELETE', '/v1/clusters/' + enc(id));
      location.hash = '#/';
    }));
  every(2000, async () => {
    const c = await get('/v1/clusters/' + enc(id));
    const cap = c.capacity;
    fill('cluster-info', h('h2', {}, c.name, ' ', state(c.status)), kv([
      ['id', c.id], ['mode', c.mode], ['alias', c.alias || '-'], ['description', c.description || '-'],
      ['labels', Object.entries(c.labels).map(([k, v]) => `${k}=${v}`).join(' ') || '-', 'cluster-labels'],
      ['deletion protection', c.deletion_protection ? 'on' : 'off', 'cluster-protection'],
      ['minimums', c.min_node ? `${c.min_node.cores} cores, ${gib(c.min_node.memory_bytes)}` : '-'],
      ['model', c.model || '-'], ['created', c.created_at],
      ['cores', bar(cap.cores_free, cap.cores_total, (x) => x)],
      ['memory', bar(cap.memory_free_bytes, cap.memory_total_bytes, gib)],
      ['GPUs', bar(cap.gpus_free, cap.gpus_total, (x) => x)],
      ['CU', bar(cap.cu_free, cap.cu_total, (x) => x)],
    ]));
    fill('cluster-nodes', table('cluster-node-table', ['node', 'state', 'model'],
      c.nodes.map((n) => [link('#/node/' + enc(n.id), n.name), state(n.state), n.model])));
    fill('cluster-pairs', c.pairs.length ? table('pair-table', ['pair', 'primary ⇄ standby', 'state', 'reason'],
      c.pairs.map((p) => [p.id, `${p.primary_name || p.primary} ⇄ ${p.standby_name || p.standby}`, state(p.state), p.reason]))
      : h('p', { class: 'muted' }, c.mode === 'ha_pairs' ? 'no pairs' : 'pool clusters have no pairs'));
    fill('cluster-jobs', table('cluster-job-table', ['job', 'state', 'node'], c.jobs.map((j) => [
      link('#/job/' + enc(j.id), j.name), state(j.state),
      (c.nodes.find((n) => n.id === j.node) || {}).name || j.node || '-'])));
  });
}

async function nodePage(id) {
  page('Node', h('section', { id: 'node-info' }),
    h('section', {}, h('h2', {}, 'Actions'), h('div', { class: 'actions', id: 'node-actions' })),
    h('section', {}, h('h2', {}, 'GPUs'), h('div', { id: 'node-gpus' })),
    h('section', {}, h('h2', {}, 'Jobs'), h('div', { id: 'node-jobs' })),
    h('section', {}, h('h2', {}, 'Events'), h('div', { id: 'node-events' })));
  const clusters = (await get('/v1/clusters')).clusters;
  const to = h('select', { id: 'move-cluster' }, clusters.map((c) => h('option', { value: c.id }, c.name)));
  fill('node-actions',
    action('check-node', 'Check heartbeat', async () => {
      const r = await api('POST', `/v1/nodes/${enc(id)}/check`);
      if (!r.alive) throw new ApiError('not_alive', r.reason);
      return `alive, round trip ${r.rtt_ms} ms`;
    }),
    action('drain-node', 'Drain', async () => { await api('POST', `/v1/nodes/${enc(id)}/drain`); return 'draining'; }),
    action('undrain-node', 'Undrain', async () => { await api('POST', `/v1/nodes/${enc(id)}/undrain`); return 'in service'; }),
    action('move-node', 'Move', async () => {
      const n = await api('POST', `/v1/nodes/${enc(id)}/move`, { cluster: to.value });
      return `now in ${to.selectedOptions[0].textContent} (${n.cluster})`;
    }, [to]),
    action('protect-node', 'Protect', async () => { await api('PATCH', '/v1/nodes/' + enc(id), { protected: true }); return 'protected'; }),
    action('unprotect-node', 'Unprotect', async () => { await api('PATCH', '/v1/nodes/' + enc(id), { protected: false }); return 'not protected'; }),
    action('remove-node', 'Remove', async () => { await api('DELETE', '/v1/nodes/' + enc(id)); return 'removed'; }));
  every(1000, async () => {
    const n = await get('/v1/nodes/' + enc(id));
    const hw = n.hardware;
    const cl = clusters.find((c) => c.id === n.cluster);
    fill('node-info', h('h2', {}, n.name, ' ', state(n.state)), kv([
      ['id', n.id], ['reason', n.state_reason, 'node-reason'], ['since', n.state_since],
      ['last heartbeat', n.last_heartbeat_age_ms === null ? '-' : `${n.last_heartbeat_age_ms} ms ago`, 'node-beat'],
      ['cluster', cl ? link('#/cluster/' + enc(cl.id), cl.name) : n.cluster || '-'],
      ['protected', n.protected ? 'yes' : 'no', 'node-protected'], ['address', n.address],
      ['agent', n.agent_version], ['model', n.model],
      ['CPU', `${hw.cpu.brand} — ${hw.cpu.logical_cores} logical cores`],
      ['memory', gib(hw.memory.total_bytes)],
      ['OS', `${hw.os.name || ''} ${hw.os.version || ''} (kernel ${hw.os.kernel || '?'}, ${hw.os.arch})`],
      ['labels', Object.entries(n.labels).map(([k, v]) => `${k}=${v}`).join(' ') || '-'],
      ['certificate', `serial ${n.cert_serial}, until ${n.cert_not_after}`],
    ]));
    fill('node-gpus', hw.gpus.length ? table('gpu-table',
      ['#', 'model', 'UUID', 'memory', 'util', 'temp', 'power', 'ECC', 'health'],
      hw.gpus.map((g) => [g.index, g.name || '-', g.uuid,
        g.memory.total_bytes ? gib(g.memory.total_bytes) : '-',
        g.utilization_gpu_percent == null ? '-' : g.utilization_gpu_percent + ' %',
        g.temperature_c == null ? '-' : g.temperature_c + ' °C',
        g.power_draw_mw == null ? '-' : (g.power_draw_mw / 1000).toFixed(0) + ' W',
        g.ecc.enabled == null ? '-' : `${g.ecc.enabled ? 'on' : 'off'}, ${g.ecc.volatile_uncorrected || 0} uncorrected`,
        h('span', { title: g.health.reason || '' }, state(g.health.state))]))
      : h('p', { class: 'muted' }, `no GPUs (NVML ${hw.nvml.status}${hw.nvml.reason ? ': ' + hw.nvml.reason : ''})`));
    const [jobs, ev] = await Promise.all([get('/v1/jobs?node=' + enc(id)), get(`/v1/events?node=${enc(id)}&limit=30`)]);
    fill('node-jobs', table('node-job-table', ['job', 'state', 'token'], jobs.jobs.map((j) => [
      link('#/job/' + enc(j.id), j.name), state(j.state), j.fencing_token ?? '-'])));
    fill('node-events', table('node-event-table', ['time', 'kind', 'message'],
      ev.events.slice().reverse().map((e) => [e.time, e.kind, e.message])));
  });
}

function runForm() {
  const f = (id, attrs) => h('input', Object.assign({ id, type: 'text' }, attrs));
  const name = f('run-name', { placeholder: 'web' });
  const cluster = h('select', { id: 'run-cluster' });
  const command = f('run-command', { placeholder: 'while sleep 1; do date; done', size: 50 });
  const cpu = f('run-cpu', { type: 'number', value: 100, min: 1 });
  const mem = f('run-memory', { type: 'number', value: 64, min: 1 });
  const gpus = f('run-gpus', { type: 'number', value: 0, min: 0 });
  const restart = h('select', { id: 'run-restart' }, ['on-failure', 'always', 'never'].map((r) => h('option', {}, r)));
  get('/v1/clusters').then((c) => cluster.replaceChildren(...c.clusters.map((x) => h('option', { value: x.name }, x.name))), showError);
  const err = h('span', { id: 'run-result', class: 'err' });
  return h('form', {
    id: 'run-form', class: 'grid',
    onsubmit: async (ev) => {
      ev.preventDefault();
      err.textContent = '';
      try {
        const r = await api('POST', '/v1/jobs', {
          name: name.value.trim(), cluster: cluster.value, command: ['/bin/sh', '-c', command.value],
          resources: { cpu_millis: Number(cpu.value), memory_bytes: Number(mem.value) * 2 ** 20, gpus: Number(gpus.value) },
          restart: restart.value,
        });
        location.hash = '#/job/' + enc(r.job.id);
      } catch (e) { err.textContent = e instanceof ApiError ? e.toString() : String(e); }
    },
  }, h('label', {}, 'name'), name, h('label', {}, 'cluster'), cluster,
  h('label', {}, 'command (/bin/sh -c)'), command, h('label', {}, 'CPU (millicores)'), cpu,
  h('label', {}, 'memory (MiB)'), mem, h('label', {}, 'GPUs'), gpus, h('label', {}, 'restart'), restart,
  h('span'), h('div', {}, h('button', { id: 'run-submit', type: 'submit' }, 'Run job'), err));
}

async function jobsPage() {
  page('Jobs', h('section', {}, h('h2', {}, 'Run a job'), runForm()),
    h('section', {}, h('h2', {}, 'Jobs'), h('div', { id: 'jobs' })));
  every(2000, async () => {
    const [j, n] = await Promise.all([get('/v1/jobs'), get('/v1/nodes')]);
    const names = Object.fromEntries(n.nodes.map((x) => [x.id, x.name]));
    fill('jobs', table('job-table', ['job', 'state', 'node', 'token', 'restarts'], j.jobs.map((x) => [
      link('#/job/' + enc(x.id), x.name), state(x.state), names[x.node] || x.node || '-', x.fencing_token ?? '-', x.restarts])));
  });
}

async function jobPage(id) {
  page('Job', h('section', { id: 'job-info' }),
    h('section', {}, h('h2', {}, 'Actions'), h('div', { class: 'actions' },
      action('stop-job', 'Stop', async () => { const r = await api('DELETE', '/v1/jobs/' + enc(id)); return r.state; }))),
    h('section', {}, h('h2', {}, 'Placements'), h('div', { id: 'placements' })),
    h('section', {}, h('h2', {}, 'Log (follows)'), h('pre', { class: 'log', id: 'log' })));
  every(1000, async () => {
    const [j, n] = await Promise.all([get('/v1/jobs/' + enc(id)), get('/v1/nodes')]);
    const names = Object.fromEntries(n.nodes.map((x) => [x.id, x.name]));
    const node = j.node ? link('#/node/' + enc(j.node), names[j.node] || j.node) : '-';
    fill('job-info', h('h2', {}, j.name, ' ', state(j.state)), kv([
      ['id', j.id], ['state', j.state_reason || j.state, 'job-reason'], ['node', node, 'job-node'],
      ...(j.stopping ? [['stopping', `its copy on ${names[j.stopping.node] || j.stopping.node} (token ${j.stopping.fencing_token}) has not ended yet; the name is free once it has`, 'job-stopping']] : []),
      ['fencing token', j.fencing_token ?? '-', 'job-token'],
      ['restarts', `${j.restarts} of ${j.spec.max_restarts} (${j.spec.restart})`],
      ['command', j.spec.command.join(' ')], ['GPUs', (j.gpus || []).join(', ') || '-'],
    ]));
    const ps = [...(j.history || []), ...(j.current ? [j.current] : [])];
    fill('placements', table('placement-table', ['node', 'token', 'started', 'ended', 'why it ended'],
      ps.map((p) => [names[p.node] || p.node, p.fencing_token, time(p.started_ms), time(p.ended_ms),
        p.end_reason || (p === j.current ? 'current' : '-')])));
    const logs = await get(`/v1/jobs/${enc(id)}/logs?tail=50`).catch((e) => ({ stdout: [`(${e})`], stderr: [] }));
    const pre = document.getElementById('log');
    if (pre) {
      const stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent = [...(logs.stdout || []), ...(logs.stderr || []).map((l) => 'stderr: ' + l)].join('\n');
      if (stick) pre.scrollTop = pre.scrollHeight;
    }
  });
}

async function tokensPage() {
  const cluster = h('select', { id: 'token-cluster' }, h('option', { value: '' }, '(no cluster)'));
  const uses = h('input', { id: 'token-uses', type: 'number', value: 1, min: 1 });
  const ttl = h('input', { id: 'token-ttl', type: 'number', value: 3600, min: 1 });
  const made = h('pre', { id: 'token-made', class: 'log', hidden: true });
  get('/v1/clusters').then((c) => cluster.append(...c.clusters.map((x) => h('option', { value: x.name }, x.name))), showError);
  page('Join tokens',
    h('section', {}, h('h2', {}, 'Create'), h('div', { class: 'actions' }, action('create-token', 'Create token', async () => {
      const body = { uses: Number(uses.value), ttl_s: Number(ttl.value) };
      if (cluster.value) body.cluster = cluster.value;
      const r = await api('POST', '/v1/join-tokens', body);
      made.hidden = false;
      made.textContent = r.token;
      return `token ${r.id}: give it to the agents (tandem-agent run --token ...); it is shown only now`;
    }, [h('label', {}, 'cluster ', cluster), h('label', {}, 'uses ', uses), h('label', {}, 'TTL (s) ', ttl)])), made),
    h('section', {}, h('h2', {}, 'Tokens'), h('div', { id: 'tokens' })));
  every(2000, async () => {
    const [t, c] = await Promise.all([get('/v1/join-tokens'), get('/v1/clusters')]);
    const cname = Object.fromEntries(c.clusters.map((x) => [x.id, x.name]));
    fill('tokens', table('token-table', ['id', 'state', 'uses', 'cluster', 'created', 'expires', ''],
      t.tokens.map((x) => [x.id, state(x.state), `${x.uses} / ${x.uses_allowed}`, cname[x.cluster] || x.cluster || '-',
        x.created_at, x.expires_at,
        x.state === 'revoked' ? x.revoked_at : action('revoke-' + x.id, 'Revoke', async () => {
          await api('DELETE', '/v1/join-tokens/' + enc(x.id));
          return 'revoked';
        })])));
  });
}

// Server-sent events over fetch (EventSource cannot send the Authorization header).
async function streamEvents(after, onEvents, signal) {
  const r = await fetch('/v1/events/stream?after=' + after, {
    headers: { Authorization: 'Bearer ' + sessionStorage.getItem(KEY) }, signal,
  });
  if (!r.ok) {
    const v = await r.json().catch(() => ({}));
    throw new ApiError((v.error || {}).code || 'http_' + r.status, (v.error || {}).message || '');
  }
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const msg = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const data = msg.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
      if (data) onEvents(JSON.parse(data));
    }
  }
}

async function eventsPage() {
  const node = h('input', { id: 'filter-node', type: 'text', placeholder: 'node name or id' });
  const cluster = h('input', { id: 'filter-cluster', type: 'text', placeholder: 'cluster name' });
  const kind = h('input', { id: 'filter-kind', type: 'text', placeholder: 'kind, e.g. node_state' });
  const status = h('span', { id: 'stream-status', class: 'muted' }, 'connecting…');
  page('Events', h('section', {}, h('div', { class: 'actions' }, node, cluster, kind, status)),
    h('section', {}, h('div', { id: 'events' })));
  const [n, c, recent] = await Promise.all([get('/v1/nodes'), get('/v1/clusters'), get('/v1/events?limit=200')]);
  const nodes = Object.fromEntries(n.nodes.map((x) => [x.id, x]));
  const clusters = Object.fromEntries(c.clusters.map((x) => [x.id, x.name]));
  let all = recent.events;
  const show = () => {
    const fn = node.value.trim(), fc = cluster.value.trim(), fk = kind.value.trim();
    const rows = all.filter((e) => {
      const nd = e.node ? nodes[e.node] : null;
      if (fn && !(e.node === fn || (nd && nd.name === fn) || e.message.includes(fn))) return false;
      if (fk && e.kind !== fk) return false;
      if (fc && !((nd && clusters[nd.cluster] === fc) || e.message.includes('cluster ' + fc))) return false;
      return true;
    }).slice(-300).reverse();
    fill('events', table('event-table', ['time', 'kind', 'node', 'message'], rows.map((e) => [
      e.time, e.kind, e.node ? (nodes[e.node] || {}).name || e.node : '-', e.message])));
    document.querySelectorAll('#event-table tbody tr').forEach((tr) => tr.classList.add('event'));
  };
  for (const i of [node, cluster, kind]) i.addEventListener('input', show);
  show();
  const ctl = new AbortController();
  aborts.push(ctl);
  const after = all.length ? all[all.length - 1].seq : 0;
  status.textContent = 'live';
  status.id = 'stream-status';
  streamEvents(after, (evs) => { all = all.concat(evs).slice(-5000); show(); }, ctl.signal)
    .then(() => { status.textContent = 'stream ended; reload to reconnect'; })
    .catch((e) => { if (!ctl.signal.aborted) status.textContent = 'stream failed: ' + e; });
}

// ---- Router ---------------------------------------------------------------------------------

async function route() {
  for (const t of timers) clearInterval(t);
  for (const a of aborts) a.abort();
  timers = []; aborts = []; refresh = () => {};
  if (!sessionStorage.getItem(KEY)) return login();
  document.getElementById('nav').hidden = false;
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  try {
    switch (parts[0]) {
      case 'cluster': return await clusterPage(parts[1]);
      case 'node': return await nodePage(parts[1]);
      case 'job': return await jobPage(parts[1]);
      case 'jobs': return await jobsPage();
      case 'events': return await eventsPage();
      case 'tokens': return await tokensPage();
      default: return await overview();
    }
  } catch (e) { showError(e); }
}

window.addEventListener('hashchange', route);
window.addEventListener('DOMContentLoaded', () => {
  document.getElementById('logout').addEventListener('click', logout);
  route();
});
