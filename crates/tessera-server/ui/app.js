// The Tessera console: one page, routed by the URL's fragment, reading and changing through the
// admin API under /admin with the session cookie (and its CSRF token on every change).
// Every value from the server reaches the page as text (textContent, attributes set one by one):
// nothing is ever parsed as HTML, so a workload named `<script>` shows as just that.
'use strict';

const state = { session: null };
const main = () => document.getElementById('main');

// ---- DOM --------------------------------------------------------------------------------------

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, kids);
  return el;
}

function append(el, kids) {
  for (const kid of kids) {
    if (kid === null || kid === undefined || kid === false) continue;
    if (Array.isArray(kid)) append(el, kid);
    else if (kid instanceof Node) el.appendChild(kid);
    else el.appendChild(document.createTextNode(String(kid)));
  }
}

const SVG = 'http://www.w3.org/2000/svg';
function s(tag, attrs, ...kids) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    el.setAttribute(k, String(v));
  }
  append(el, kids);
  return el;
}

function show(...kids) {
  const m = main();
  m.replaceChildren();
  append(m, kids);
}

function when(unix) {
  if (unix === null || unix === undefined) return '—';
  return new Date(unix * 1000).toISOString().replace('.000Z', 'Z').replace('T', ' ');
}

function workloadLink(id) {
  if (typeof id === 'string' && id.startsWith('spiffe://')) {
    return h('a', { href: '#/workload?id=' + encodeURIComponent(id), class: 'mono' }, id);
  }
  return h('span', { class: 'mono' }, id);
}

function table(headers, rows) {
  return h('table', {},
    h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col' }, x)))),
    h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: headers.length, class: 'muted' }, 'Nothing here.'))));
}

function errorBox(e) {
  return h('p', { class: 'error', role: 'alert' }, String(e && e.message ? e.message : e));
}

// ---- The admin API ----------------------------------------------------------------------------

class ApiError extends Error {}

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  const init = { method, headers, credentials: 'same-origin' };
  if (method !== 'GET') {
    headers['X-CSRF-Token'] = state.session ? state.session.csrf : '';
  }
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  if (resp.status === 401 && path.startsWith('/admin/')) {
    state.session = null;
    location.hash = '#/signin';
    throw new ApiError('your session ended: sign in again');
  }
  if (resp.status === 204) return null;
  let data = null;
  try { data = await resp.json(); } catch (_) { data = null; }
  if (!resp.ok) {
    const why = data && (data.error_description || data.error);
    throw new ApiError(why ? String(why) : 'HTTP ' + resp.status);
  }
  return data;
}

const admin = (path, params) => {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== null && v !== undefined && v !== '' && v !== false) q.set(k, v);
  }
  const qs = q.toString();
  return api('GET', '/admin' + path + (qs ? '?' + qs : ''));
};

// ---- Routing ----------------------------------------------------------------------------------

function route() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, qs] = raw.split('?', 2);
  return { path, params: new URLSearchParams(qs || '') };
}

function go(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== null && v !== undefined && v !== '' && v !== false) q.set(k, v);
  }
  const qs = q.toString();
  location.hash = '#' + path + (qs ? '?' + qs : '');
}

const PAGES = {
  '/': overview,
  '/signin': signin,
  '/workloads': workloads,
  '/workload': workload,
  '/graph': graph,
  '/reviews': reviews,
  '/expiries': expiries,
  '/audit': audit,
  '/explain': explain,
  '/policy': policy,
  '/advisor': advisor,
};

const TITLES = {
  '/': 'Overview', '/signin': 'Sign in', '/workloads': 'Workloads', '/workload': 'Workload',
  '/graph': 'Access graph', '/reviews': 'Reviews', '/expiries': 'Expiries',
  '/audit': 'Audit trail', '/explain': 'Explain', '/policy': 'Policy sets', '/advisor': 'Advisor',
};

async function render() {
  const { path, params } = route();
  if (!state.session || !state.session.signed_in) {
    await loadSession();
  }
  const signedIn = state.session && state.session.signed_in;
  document.getElementById('nav').hidden = !signedIn;
  renderWho();
  const page = signedIn ? (PAGES[path] || notFound) : signin;
  document.title = (TITLES[signedIn ? path : '/signin'] || 'Not found') + ' · Tessera console';
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.getAttribute('href') === '#' + path) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  try {
    await page(params);
  } catch (e) {
    show(h('h1', {}, TITLES[path] || 'Error'), errorBox(e));
  }
}

async function loadSession() {
  try {
    state.session = await api('GET', '/ui/session');
  } catch (_) {
    state.session = { signed_in: false };
  }
}

function renderWho() {
  const who = document.getElementById('who');
  who.replaceChildren();
  const sess = state.session;
  if (!sess || !sess.signed_in) return;
  append(who, [
    h('span', {}, sess.name + ' (' + sess.role + ')'),
    h('button', { class: 'secondary', type: 'button', onclick: signout }, 'Sign out'),
  ]);
}

async function signout() {
  try { await api('POST', '/ui/signout'); } catch (_) { /* signed out either way */ }
  state.session = null;
  location.hash = '#/signin';
  await render();
}

function notFound() {
  show(h('h1', {}, 'Not found'), h('p', {}, 'No such page. ', h('a', { href: '#/' }, 'Back to the overview.')));
}

const isAdmin = () => state.session && state.session.role === 'admin';

// ---- Sign in ----------------------------------------------------------------------------------

const SIGNIN_ERRORS = {
  link: 'That sign-in link is unknown, used or expired: ask for a new one (tessera console link).',
  state: 'The sign-in could not be matched to this browser: start again.',
  provider: 'The identity provider did not complete the sign-in.',
  id_token: 'The identity provider’s answer was refused.',
  no_role: 'You are in none of the groups allowed to use this console.',
  not_configured: 'No identity provider is configured.',
};

async function signin() {
  const err = new URLSearchParams(location.search).get('error');
  const msg = h('div', { 'aria-live': 'polite' });
  if (err) msg.appendChild(h('p', { class: 'error', role: 'alert' }, SIGNIN_ERRORS[err] || 'The sign-in failed.'));
  const cred = h('input', { id: 'credential', name: 'credential', type: 'password', autocomplete: 'off', required: true });
  const form = h('form', { class: 'stack', onsubmit: async (ev) => {
    ev.preventDefault();
    msg.replaceChildren();
    try {
      await api('POST', '/ui/signin', { credential: cred.value });
      history.replaceState(null, '', '/ui/#/');
      state.session = null;
      await render();
    } catch (e) {
      msg.appendChild(errorBox(e));
    }
  } },
  h('label', { for: 'credential' }, 'Admin credential (DATA/admin-token)'), cred,
  h('button', { type: 'submit' }, 'Sign in'));
  show(
    h('h1', {}, 'Sign in'), msg,
    state.session && state.session.oidc
      ? h('p', {}, h('a', { href: '/ui/oidc/start', id: 'oidc-signin' }, 'Sign in with your identity provider'))
      : null,
    h('h2', {}, 'With the admin credential'), form,
  );
}

// ---- Overview ---------------------------------------------------------------------------------

function pct(x) {
  return x === null || x === undefined ? '—' : (x * 100).toFixed(2) + '%';
}

async function overview() {
  const o = await admin('/v1/overview');
  const card = (k, v, cls) => h('div', { class: 'card' }, h('div', { class: 'v ' + (cls || '') }, v), h('div', { class: 'k' }, k));
  show(
    h('h1', {}, 'Overview'),
    h('p', { class: 'muted' }, 'The last 24 hours (seed 003’s SLIs), and what falls due.'),
    h('div', { class: 'cards' },
      card('Issuance success (M1)', pct(o.issuance_success), o.issuance_success !== null && o.issuance_success < 0.9995 ? 'warn' : ''),
      card('Credentials issued', o.issued),
      card('Issuance refused', o.issuance_refused),
      card('Verification success (M2)', pct(o.verification_success)),
      card('Calls denied', o.calls_denied, o.calls_denied ? 'warn' : ''),
      card('Unauthorized attempts (M8)', o.unauthorized_attempts, o.unauthorized_attempts ? 'warn' : ''),
      card('Revocations', o.revocations),
      card('Expiring within 6 h', o.expiring_6h, o.expiring_6h ? 'bad' : ''),
      card('Expiring within 24 h', o.expiring_24h),
      card('Expiring within 72 h', o.expiring_72h),
      card('Workloads (revoked)', o.workloads + ' (' + o.revoked_workloads + ')'),
      card('Grants overdue for review', o.grants_overdue + ' of ' + o.grants, o.grants_overdue ? 'warn' : ''),
      card('Policy set', 'v' + o.policy_version + (o.shadow_version ? ' · shadow v' + o.shadow_version : '')),
    ),
    h('p', {}, h('a', { href: '#/expiries' }, 'What falls due'), ' · ', h('a', { href: '#/reviews' }, 'Grants to review')),
  );
}

// ---- Workloads --------------------------------------------------------------------------------

function select(name, label, values, current) {
  return h('label', { for: 'f-' + name }, label,
    h('select', { id: 'f-' + name, name },
      h('option', { value: '' }, 'any'),
      values.map((v) => h('option', { value: v, selected: v === current }, v))));
}

async function workloads(params) {
  const q = Object.fromEntries(params);
  const page = await admin('/v1/workloads', { ...q, limit: 50 });
  const search = h('input', { id: 'f-q', name: 'q', type: 'search', value: q.q || '' });
  const overdue = h('input', { id: 'f-overdue', name: 'overdue', type: 'checkbox', checked: q.overdue === 'true' });
  const form = h('form', { class: 'inline', role: 'search', onsubmit: (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    go('/workloads', { q: f.get('q'), environment: f.get('environment'), owner: f.get('owner'),
      trust_domain: f.get('trust_domain'), overdue: overdue.checked ? 'true' : '' });
  } },
  h('label', { for: 'f-q' }, 'Search (ID, owner, purpose)', search),
  select('environment', 'Environment', page.environments, q.environment),
  select('owner', 'Owner', page.owners, q.owner),
  select('trust_domain', 'Trust domain', page.trust_domains, q.trust_domain),
  h('label', { for: 'f-overdue' }, 'Review overdue', overdue),
  h('button', { type: 'submit' }, 'Find'));
  const rows = page.rows.map((w) => h('tr', {},
    h('td', {}, workloadLink(w.id), w.revoked_at ? [' ', h('span', { class: 'badge bad' }, 'revoked')] : null),
    h('td', {}, w.owner), h('td', {}, w.environment || '—'), h('td', {}, w.purpose),
    h('td', {}, String(w.grants_out) + ' out · ' + w.grants_in + ' in',
      w.overdue ? [' ', h('span', { class: 'badge warn' }, w.overdue + ' overdue')] : null),
    h('td', {}, when(w.last_issued))));
  const offset = page.offset;
  show(
    h('h1', {}, 'Workloads'), form,
    h('p', { class: 'muted' }, page.total + ' found'),
    table(['Workload', 'Owner', 'Environment', 'Purpose', 'Grants', 'Last token'], rows),
    h('div', { class: 'pager' },
      offset > 0 ? h('button', { type: 'button', class: 'secondary', onclick: () => go('/workloads', { ...q, offset: Math.max(0, offset - 50) }) }, 'Previous') : null,
      offset + page.rows.length < page.total ? h('button', { type: 'button', class: 'secondary', onclick: () => go('/workloads', { ...q, offset: offset + 50 }) }, 'Next') : null),
  );
}

// ---- One workload: seed 000's four questions -------------------------------------------------

function grantRows(list, dir) {
  return list.map((g) => h('tr', {},
    h('td', {}, workloadLink(g.workload)),
    h('td', {}, (g.scopes || []).join(' ') || '—'),
    h('td', {}, g.why),
    h('td', {}, g.review_by || '—', g.overdue ? [' ', h('span', { class: 'badge warn' }, 'overdue')] : null),
    h('td', {}, g.effective === 'allowed' ? h('span', { class: 'ok' }, 'allowed') : h('span', { class: 'bad' }, g.effective)),
    h('td', {}, h('span', { class: 'mono' }, g.source)),
    dir === 'out' || dir === 'in' ? h('td', {}, reviewButtons(dir === 'out' ? g._self : g.workload, dir === 'out' ? g.workload : g._self)) : null));
}

async function workload(params) {
  const id = params.get('id') || '';
  const d = await admin('/v1/describe/workload', { id });
  for (const g of d.can_reach) g._self = d.id;
  for (const g of d.reached_by) g._self = d.id;
  const heads = ['Workload', 'Scopes', 'Why', 'Review by', 'In force', 'Source', 'Review'];
  const revokeBox = h('div', {});
  if (d.revoked_at) {
    revokeBox.appendChild(h('p', { class: 'bad' }, 'Revoked at ' + when(d.revoked_at) + '.'));
  } else if (isAdmin()) {
    const confirmInput = h('input', { id: 'revoke-confirm', type: 'text', autocomplete: 'off', size: 50 });
    const button = h('button', { type: 'submit', class: 'danger', disabled: true }, 'Revoke this workload');
    confirmInput.addEventListener('input', () => { button.disabled = confirmInput.value !== d.id; });
    const out = h('div', { 'aria-live': 'polite' });
    append(revokeBox, [h('form', { class: 'stack', onsubmit: async (ev) => {
      ev.preventDefault();
      if (confirmInput.value !== d.id) return;
      out.replaceChildren();
      try {
        const r = await api('POST', '/admin/v1/revoke/workload', { id: d.id });
        out.appendChild(h('p', { class: 'notice', role: 'status' }, 'Revoked at ' + when(r.revoked_at) + '. Its tokens and SVIDs are refused from now on.'));
        button.disabled = true;
      } catch (e) { out.appendChild(errorBox(e)); }
    } },
    h('label', { for: 'revoke-confirm' }, 'Type the workload’s SPIFFE ID to confirm'), confirmInput, button), out]);
  }
  show(
    h('h1', {}, 'Workload ', h('span', { class: 'mono' }, d.id)),
    h('p', {}, h('a', { href: '#/graph?center=' + encodeURIComponent(d.id) }, 'Show in the access graph'), ' · ',
      h('a', { href: '#/audit?subject=' + encodeURIComponent(d.id) }, 'Its audit records')),
    h('div', { class: 'questions' },
      h('section', { 'aria-labelledby': 'q-owner' },
        h('h2', { id: 'q-owner' }, 'Who owns it?'),
        h('p', {}, h('strong', {}, d.owner), ' — ', d.purpose),
        h('p', {}, 'Environment: ', d.environment || '—', ' · kind: ', d.kind),
        h('p', {}, 'Declared in ', h('span', { class: 'mono' }, d.source)),
        h('p', {}, 'Selectors: ', (d.selectors || []).map((x) => h('code', {}, x + ' ')))),
      h('section', { 'aria-labelledby': 'q-creds' },
        h('h2', { id: 'q-creds' }, 'What credentials does it hold?'),
        h('p', {}, 'JWT-SVIDs for ', d.jwt_ttl, ', X.509-SVIDs for ', d.x509_ttl, '.'),
        h('p', {}, 'Last token: ', d.last_issuance ? when(d.last_issuance.at) : 'none yet'),
        h('p', {}, 'Clients: ', d.clients.length ? d.clients.map((c) => h('code', {}, c.id + ' (' + c.auth + ') ')) : 'none'),
        h('p', {}, 'Recent X.509-SVIDs: ', (d.recent_x509_svids || []).length))),
    h('h2', { id: 'q-reach' }, 'What can it reach, and why?'),
    table(heads, grantRows(d.can_reach, 'out')),
    h('h2', { id: 'q-reached' }, 'Who can reach it?'),
    table(heads, grantRows(d.reached_by, 'in')),
    h('h2', { id: 'q-revoke' }, 'How would we revoke it?'),
    h('ul', {}, d.how_to_revoke.map((x) => h('li', {}, h('code', {}, x)))),
    revokeBox,
  );
}

// ---- Reviews ----------------------------------------------------------------------------------

function reviewButtons(from, to) {
  if (!isAdmin()) return h('span', { class: 'muted' }, '—');
  return h('button', { type: 'button', class: 'secondary', onclick: () => reviewDialog(from, to) }, 'Review');
}

function reviewDialog(from, to) {
  const out = h('div', { 'aria-live': 'polite' });
  const date = h('input', { id: 'review-date', type: 'date' });
  const reason = h('input', { id: 'review-reason', type: 'text', maxlength: 500, size: 50 });
  const dlg = h('dialog', { 'aria-labelledby': 'review-title' });
  const send = async (action) => {
    out.replaceChildren();
    try {
      const r = await api('POST', '/admin/v1/grants/review', {
        from, to, action, review_by: action === 'extend' ? date.value : null, reason: reason.value,
      });
      out.appendChild(h('p', { class: 'notice', role: 'status' }, r.applied
        ? 'Done, and written to ' + r.source + ':' : 'Done. Commit this change to the identity file so the next apply keeps it:'));
      out.appendChild(h('pre', { id: 'review-change' }, r.change));
    } catch (e) { out.appendChild(errorBox(e)); }
  };
  append(dlg, [
    h('h2', { id: 'review-title' }, 'Review the grant'),
    h('p', {}, workloadLink(from), ' → ', workloadLink(to)),
    h('form', { class: 'stack', onsubmit: (ev) => ev.preventDefault() },
      h('label', { for: 'review-reason' }, 'Reason (recorded)'), reason,
      h('label', { for: 'review-date' }, 'New review date (to extend)'), date,
      h('div', {},
        h('button', { type: 'button', onclick: () => send('extend') }, 'Extend'), ' ',
        h('button', { type: 'button', class: 'danger', onclick: () => send('withdraw') }, 'Withdraw'), ' ',
        h('button', { type: 'button', class: 'secondary', onclick: () => { dlg.close(); dlg.remove(); render(); } }, 'Close'))),
    out,
  ]);
  document.body.appendChild(dlg);
  dlg.showModal();
}

async function reviews(params) {
  const owner = params.get('owner') || '';
  const due = await admin('/v1/get/grants', { overdue: 'true', owner });
  const page = await admin('/v1/workloads', { limit: 1 });
  const form = h('form', { class: 'inline', onsubmit: (ev) => { ev.preventDefault(); go('/reviews', { owner: new FormData(form).get('owner') }); } },
    select('owner', 'Owner', page.owners, owner), h('button', { type: 'submit' }, 'Show'));
  show(
    h('h1', {}, 'Grants to review'),
    h('p', { class: 'muted' }, 'Grants past their review date: extend them (a new date and a reason) or withdraw them.'),
    form,
    table(['From', 'To', 'Scopes', 'Why', 'Owners', 'Review by', 'Source', 'Review'], due.map((g) => h('tr', {},
      h('td', {}, workloadLink(g.from)), h('td', {}, workloadLink(g.to)), h('td', {}, (g.scopes || []).join(' ')),
      h('td', {}, g.why), h('td', {}, g.from_owner || '—', ' / ', g.to_owner || '—'), h('td', { class: 'warn' }, g.review_by), h('td', {}, h('span', { class: 'mono' }, g.source)),
      h('td', {}, reviewButtons(g.from, g.to))))),
  );
}

// ---- The access graph -------------------------------------------------------------------------

function edgeClass(e) {
  if (!e.granted) return 'edge ungranted';
  if (e.effective && e.effective !== 'allowed') return 'edge blocked';
  if (e.overdue) return 'edge overdue';
  return 'edge';
}

function shortName(id) {
  const p = String(id).replace(/^spiffe:\/\//, '');
  return p.length > 34 ? '…' + p.slice(-33) : p;
}

function drawGraph(g) {
  const W = 1000; const boxW = 250; const boxH = 28;
  const center = g.center;
  const pos = {};
  let H;
  if (center) {
    const callers = new Set(); const callees = new Set();
    for (const e of g.edges) {
      if (e.to === center && e.from !== center) callers.add(e.from);
      if (e.from === center && e.to !== center) callees.add(e.to);
    }
    for (const n of g.nodes) if (n.id !== center && !callers.has(n.id) && !callees.has(n.id)) callees.add(n.id);
    const left = [...callers]; const right = [...callees].filter((x) => !callers.has(x));
    const rows = Math.max(left.length, right.length, 1);
    H = Math.max(160, rows * 40 + 40);
    left.forEach((id, i) => { pos[id] = [20, 30 + i * 40]; });
    right.forEach((id, i) => { pos[id] = [W - boxW - 20, 30 + i * 40]; });
    pos[center] = [(W - boxW) / 2, H / 2 - boxH / 2];
  } else {
    const n = g.nodes.length; const cols = 3;
    H = Math.max(160, Math.ceil(n / cols) * 40 + 40);
    g.nodes.forEach((node, i) => { pos[node.id] = [20 + (i % cols) * ((W - boxW - 40) / (cols - 1)), 30 + Math.floor(i / cols) * 40]; });
  }
  const svg = s('svg', { class: 'graph', viewBox: '0 0 ' + W + ' ' + H, role: 'group', 'aria-label': 'Access graph' + (center ? ' around ' + center : '') });
  svg.appendChild(s('defs', {}, s('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
    s('path', { d: 'M 0 0 L 10 5 L 0 10 z', fill: '#53606d' }))));
  for (const e of g.edges) {
    const a = pos[e.from]; const b = pos[e.to];
    if (!a || !b) continue;
    const x1 = a[0] + boxW; const y1 = a[1] + boxH / 2; const x2 = b[0]; const y2 = b[1] + boxH / 2;
    const mx = (x1 + x2) / 2;
    const label = (e.granted ? 'grant' + (e.effective && e.effective !== 'allowed' ? ' (blocked)' : '') : 'no grant') +
      (e.calls_allowed || e.calls_denied ? ', calls ' + e.calls_allowed + ' allowed / ' + e.calls_denied + ' denied' : '');
    svg.appendChild(s('path', { class: edgeClass(e), d: 'M ' + x1 + ' ' + y1 + ' C ' + mx + ' ' + y1 + ', ' + mx + ' ' + y2 + ', ' + x2 + ' ' + y2, 'marker-end': 'url(#arrow)' },
      s('title', {}, e.from + ' → ' + e.to + ': ' + label)));
    if (e.calls_allowed || e.calls_denied) {
      svg.appendChild(s('text', { x: mx, y: (y1 + y2) / 2 - 4, 'text-anchor': 'middle' }, String(e.calls_allowed + e.calls_denied)));
    }
  }
  for (const n of g.nodes) {
    const p = pos[n.id];
    if (!p) continue;
    const cls = 'node' + (n.id === center ? ' center' : '') + (n.revoked ? ' revoked' : '') + (n.unknown ? ' unknown' : '');
    const link = s('a', { href: '#/graph?center=' + encodeURIComponent(n.id), class: 'graph-node', 'data-id': n.id },
      s('title', {}, n.id + (n.owner ? ' (owner ' + n.owner + ')' : '') + (n.revoked ? ', revoked' : '')),
      s('g', { class: cls }, s('rect', { x: p[0], y: p[1], width: boxW, height: boxH, rx: 4 }),
        s('text', { x: p[0] + 8, y: p[1] + 18 }, shortName(n.id))));
    svg.appendChild(link);
  }
  return svg;
}

async function graph(params) {
  const q = Object.fromEntries(params);
  const g = await admin('/v1/graph', q);
  const page = await admin('/v1/workloads', { limit: 1 });
  const form = h('form', { class: 'inline', onsubmit: (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    go('/graph', { center: f.get('center'), environment: f.get('environment'), owner: f.get('owner'), trust_domain: f.get('trust_domain') });
  } },
  h('label', { for: 'f-center' }, 'Around workload', h('input', { id: 'f-center', name: 'center', type: 'text', size: 45, value: q.center || '' })),
  select('environment', 'Environment', page.environments, q.environment),
  select('owner', 'Owner', page.owners, q.owner),
  select('trust_domain', 'Trust domain', page.trust_domains, q.trust_domain),
  h('button', { type: 'submit' }, 'Draw'));
  const edgeRows = g.edges.map((e) => h('tr', {},
    h('td', {}, workloadLink(e.from)), h('td', {}, workloadLink(e.to)),
    h('td', {}, e.granted ? (e.effective === 'allowed' ? 'yes' : h('span', { class: 'bad' }, 'granted, but ' + e.effective)) : h('span', { class: 'warn' }, 'no grant')),
    h('td', {}, e.why || '—'),
    h('td', {}, String(e.calls_allowed) + ' / ' + e.calls_denied),
    h('td', {}, when(e.last_call))));
  show(
    h('h1', {}, 'Access graph'),
    h('p', { class: 'muted' }, 'Who may call whom (grants, as the policy in force decides them) and who did (decision records, last ' +
      Math.round(g.window_seconds / 3600) + ' h). Select a workload to centre on it.'),
    form,
    h('p', { class: 'legend' }, h('span', {}, '— granted'), h('span', { class: 'bad' }, '- - granted but blocked by policy'),
      h('span', { class: 'warn' }, '━ called without a grant'), h('span', { class: 'warn' }, '··· review overdue')),
    g.truncated ? h('p', { class: 'notice' }, g.truncated + ' more workloads left out: narrow the filter or centre on one.') : null,
    drawGraph(g),
    h('h2', {}, 'Edges'),
    table(['Caller', 'Service', 'Granted', 'Why', 'Calls allowed / denied', 'Last call'], edgeRows),
  );
}

// ---- Expiries ---------------------------------------------------------------------------------

async function expiries() {
  const x = await admin('/v1/expiries');
  const cls = { overdue: 'bad', '6h': 'bad', '24h': 'warn', '72h': '' };
  show(
    h('h1', {}, 'Expiries'),
    h('p', { class: 'muted' }, 'What ends or falls due within 72 hours, marked at 72, 24 and 6 hours.'),
    table(['When', 'Mark', 'Kind', 'Subject', 'Detail'], x.items.map((e) => h('tr', {},
      h('td', {}, when(e.at)), h('td', {}, h('span', { class: 'badge ' + (cls[e.mark] || '') }, e.mark)),
      h('td', {}, e.kind), h('td', {}, workloadLink(e.subject)), h('td', {}, e.detail)))),
  );
}

// ---- The audit trail --------------------------------------------------------------------------

function toUnix(v) {
  if (!v) return '';
  const t = Date.parse(v);
  return Number.isNaN(t) ? '' : Math.floor(t / 1000);
}

async function audit(params) {
  const q = Object.fromEntries(params);
  const page = await admin('/v1/audit/search', {
    subject: q.subject, actor: q.actor, kind: q.kind, since: toUnix(q.since), until: toUnix(q.until), before: q.before, limit: 100,
  });
  const field = (name, label, type) => h('label', { for: 'f-' + name }, label,
    h('input', { id: 'f-' + name, name, type: type || 'text', value: q[name] || '', size: type ? null : 30 }));
  const form = h('form', { class: 'inline', role: 'search', onsubmit: (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    go('/audit', { subject: f.get('subject'), actor: f.get('actor'), kind: f.get('kind'), since: f.get('since'), until: f.get('until') });
  } },
  field('subject', 'Subject'), field('actor', 'Actor'), field('kind', 'Kind (e.g. token.issued)'),
  field('since', 'Since', 'datetime-local'), field('until', 'Until', 'datetime-local'),
  h('button', { type: 'submit' }, 'Search'));
  show(
    h('h1', {}, 'Audit trail'), form,
    table(['#', 'When', 'Kind', 'Actor', 'Subject', 'Outcome', 'Detail'], page.records.map((r) => h('tr', {},
      h('td', {}, r.seq), h('td', {}, when(r.at)), h('td', {}, r.kind), h('td', {}, h('span', { class: 'mono' }, r.actor)),
      h('td', {}, workloadLink(r.subject)), h('td', { class: r.outcome === 'ok' ? 'ok' : 'bad' }, r.outcome),
      h('td', {}, h('code', {}, JSON.stringify(r.detail)))))),
    page.next_before ? h('div', { class: 'pager' }, h('button', { type: 'button', class: 'secondary', onclick: () => go('/audit', { ...q, before: page.next_before }) }, 'Older')) : null,
  );
}

// ---- Explain ----------------------------------------------------------------------------------

async function explain(params) {
  const out = h('div', { 'aria-live': 'polite' });
  const input = (name, label, value) => [h('label', { for: 'x-' + name }, label), h('input', { id: 'x-' + name, name, type: 'text', value: value || '', size: 50 })];
  const shadow = h('input', { id: 'x-shadow', name: 'shadow', type: 'checkbox' });
  const form = h('form', { class: 'stack', onsubmit: async (ev) => {
    ev.preventDefault();
    out.replaceChildren();
    const f = new FormData(form);
    const body = { from: f.get('from'), to: f.get('to'), shadow: shadow.checked };
    const scopes = String(f.get('scopes') || '').split(/\s+/).filter(Boolean);
    if (scopes.length) body.scopes = scopes;
    if (f.get('method')) body.method = f.get('method');
    if (f.get('path')) body.path = f.get('path');
    try {
      const x = await api('POST', '/admin/v1/explain', body);
      out.appendChild(h('section', { id: 'explanation' },
        h('h2', {}, x.allowed ? 'Allowed' : 'Denied'),
        h('p', { class: x.allowed ? 'ok' : 'bad' }, x.request),
        x.determined_by.length ? [h('h3', {}, 'Decided by'), h('ul', {}, x.determined_by.map((d) => h('li', {}, d)))] : null,
        x.missing.length ? [h('h3', {}, 'What is missing'), h('ul', {}, x.missing.map((d) => h('li', {}, d)))] : null,
        x.errors.length ? [h('h3', {}, 'Errors'), h('ul', {}, x.errors.map((d) => h('li', {}, d)))] : null));
    } catch (e) { out.appendChild(errorBox(e)); }
  } },
  input('from', 'Caller (SPIFFE ID)', params.get('from')), input('to', 'Target (SPIFFE ID)', params.get('to')),
  input('scopes', 'Scopes, for a token (space-separated)'), input('method', 'Method, for a call'), input('path', 'Path, for a call'),
  h('label', { for: 'x-shadow' }, 'With the shadow policy set', shadow),
  h('button', { type: 'submit' }, 'Explain'));
  show(h('h1', {}, 'Explain a decision'), form, out);
}

// ---- Policy sets ------------------------------------------------------------------------------

function confirmAction(label, word, action) {
  const input = h('input', { type: 'text', autocomplete: 'off', 'aria-label': 'Type ' + word + ' to confirm', placeholder: word });
  const button = h('button', { type: 'submit', class: 'danger', disabled: true }, label);
  input.addEventListener('input', () => { button.disabled = input.value !== word; });
  return h('form', { class: 'inline', onsubmit: async (ev) => { ev.preventDefault(); if (input.value === word) await action(); } },
    h('span', {}, 'Type “' + word + '” to confirm: '), input, button);
}

async function policy() {
  const st = await admin('/v1/policy');
  const out = h('div', { 'aria-live': 'polite' });
  const act = (path, body) => async () => {
    out.replaceChildren();
    try {
      const r = await api('POST', '/admin' + path, body || {});
      out.appendChild(h('p', { class: 'notice', role: 'status' }, r.version ? 'Version ' + r.version + ' is now active.' : 'Done.'));
      setTimeout(render, 800);
    } catch (e) { out.appendChild(errorBox(e)); }
  };
  let diff = null;
  if (st.shadow) {
    try {
      const d = await admin('/v1/policy/diff');
      diff = [
        h('p', {}, d.evaluated + ' real decisions evaluated against shadow v' + d.shadow_version + ': ' + d.newly_denied + ' newly denied, ' + d.newly_allowed + ' newly allowed.'),
        table(['Caller', 'Target', 'Action', 'Active', 'Shadow', 'Count', 'Example', 'Why'], d.changed.map((c) => h('tr', {},
          h('td', {}, workloadLink(c.caller)), h('td', {}, workloadLink(c.target)), h('td', {}, c.action),
          h('td', {}, c.active), h('td', { class: c.shadow === 'deny' ? 'bad' : 'ok' }, c.shadow), h('td', {}, c.count),
          h('td', {}, h('code', {}, c.example)), h('td', {}, c.shadow_reason)))),
      ];
    } catch (e) { diff = errorBox(e); }
  }
  show(
    h('h1', {}, 'Policy sets'),
    h('p', {}, 'Active: version ', h('strong', {}, st.active_version), ' (' + st.policies + ' policy files).'),
    st.shadow ? h('p', {}, 'Shadow: version ', h('strong', {}, st.shadow.version), ' beside it.') : h('p', { class: 'muted' }, 'No shadow set is loaded (tessera apply --shadow).'),
    st.shadow_error ? h('p', { class: 'error' }, st.shadow_error) : null,
    st.shadow ? [h('h2', {}, 'The shadow diff'), diff] : null,
    isAdmin() && st.shadow ? [h('h2', {}, 'Promote the shadow set'), confirmAction('Promote', 'promote', act('/v1/policy/promote')),
      confirmAction('Discard', 'discard', act('/v1/policy/discard'))] : null,
    isAdmin() ? [h('h2', {}, 'Roll back'), confirmAction('Roll back to the previous version', 'rollback', act('/v1/policy/rollback', {}))] : null,
    out,
    h('h2', {}, 'History'),
    table(['Version', 'Status', 'When', 'By', 'Note', 'Grants', 'Policies'], st.history.map((p) => h('tr', {},
      h('td', {}, p.version), h('td', {}, p.status), h('td', {}, when(p.created_at)), h('td', {}, h('span', { class: 'mono' }, p.actor)),
      h('td', {}, p.note), h('td', {}, p.grants), h('td', {}, p.policies)))),
  );
}

// ---- The advisor ------------------------------------------------------------------------------

async function advisor(params) {
  const days = Number(params.get('days') || 30);
  const a = await admin('/v1/advise', { window: Math.max(1, days) * 86400 });
  const form = h('form', { class: 'inline', onsubmit: (ev) => { ev.preventDefault(); go('/advisor', { days: new FormData(form).get('days') }); } },
    h('label', { for: 'f-days' }, 'Days of records', h('input', { id: 'f-days', name: 'days', type: 'number', min: 1, max: 366, value: days })),
    h('button', { type: 'submit' }, 'Advise'));
  show(
    h('h1', {}, 'Least-privilege advisor'), form,
    h('p', { class: 'muted' }, a.records_read + ' records read; ' + a.findings.length + ' findings. The CLI writes the narrower file: tessera advise --write DIR.'),
    a.findings.map((f) => h('section', { class: 'card finding' },
      h('h2', {}, f.kind.replace(/_/g, ' '), ': ', h('span', { class: 'mono' }, f.subject), f.target ? [' → ', h('span', { class: 'mono' }, f.target)] : null),
      h('p', {}, f.summary),
      h('ul', {}, f.evidence.map((e) => h('li', {}, e))),
      f.source ? h('p', { class: 'muted' }, 'From ', h('span', { class: 'mono' }, f.source)) : null,
      f.suggestion === '' ? h('p', {}, 'Suggested: remove it.') : null,
      f.suggestion ? h('pre', {}, f.suggestion) : null)),
  );
}

// ---- Start ------------------------------------------------------------------------------------

window.addEventListener('hashchange', () => { render(); });
document.addEventListener('DOMContentLoaded', () => { render(); });
