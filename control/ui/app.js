// Shoal's dashboard: one page, one script, no build step and no dependencies.
//
// Everything it shows comes from API lists followed by watches, and everything it does is an
// API request, all with the session's bearer token (kept in sessionStorage and sent only to
// this origin: the server's Content-Security-Policy allows no other), so authentication and
// RBAC decide exactly as for kubectl. The DOM is built with textContent only (never
// innerHTML), so nothing an object contains can run as script here.

const KINDS = {
  namespaces: { base: '/api/v1', namespaced: false },
  nodes: { base: '/api/v1', namespaced: false },
  pods: { base: '/api/v1', namespaced: true },
  services: { base: '/api/v1', namespaced: true },
  events: { base: '/api/v1', namespaced: true },
  endpointslices: { base: '/apis/discovery.k8s.io/v1', namespaced: true },
  deployments: { base: '/apis/apps/v1', namespaced: true },
  replicasets: { base: '/apis/apps/v1', namespaced: true },
  statefulsets: { base: '/apis/apps/v1', namespaced: true },
  daemonsets: { base: '/apis/apps/v1', namespaced: true },
  jobs: { base: '/apis/batch/v1', namespaced: true },
  cronjobs: { base: '/apis/batch/v1', namespaced: true },
};

const state = {
  token: sessionStorage.getItem('shoal-token'),
  namespace: sessionStorage.getItem('shoal-namespace') ?? '',
  user: null,
  // Values typed into inputs, kept across re-renders (by data-key).
  drafts: new Map(),
  // Scroll positions of long tables, kept across re-renders.
  scroll: new Map(),
  // What rendering costs: the page's own figures, read by the browser tests.
  stats: { renders: 0, totalMs: 0, lastMs: 0, maxMs: 0 },
};

class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function headers(extra = {}) {
  return { Authorization: `Bearer ${state.token}`, Accept: 'application/json', ...extra };
}

/// One API request; the answer's JSON, or an ApiError carrying the server's message.
async function api(method, path, body, contentType = 'application/json') {
  const init = { method, headers: headers() };
  if (body !== undefined) {
    init.headers['Content-Type'] = contentType;
    init.body = typeof body === 'string' ? body : JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (response.status === 401) {
    logout('Your session has ended or the token is not valid: log in again.');
  }
  if (!response.ok) {
    throw new ApiError(response.status, json?.message || text || response.statusText, json);
  }
  return json;
}

/// A collection kept current: listed, then watched; re-listed when the watch ends.
class Collection {
  constructor(path) {
    this.path = path;
    this.items = new Map();
    this.version = 0;
    this.error = null;
    this.loaded = false;
    this.abort = new AbortController();
    this.run();
  }

  stop() {
    this.abort.abort();
  }

  all() {
    return [...this.items.values()];
  }

  /// The objects by namespace and name, sorted once per change (not once per render).
  sorted() {
    if (this.sortedAt !== this.version) {
      this.sortedCache = this.all().sort(byName);
      this.sortedAt = this.version;
    }
    return this.sortedCache;
  }

  static key(object) {
    return `${object.metadata.namespace ?? ''}/${object.metadata.name}`;
  }

  async run() {
    while (!this.abort.signal.aborted) {
      try {
        const list = await api('GET', this.path);
        if (this.abort.signal.aborted) return;
        this.items = new Map(list.items.map((o) => [Collection.key(o), o]));
        this.version += 1;
        this.error = null;
        this.loaded = true;
        changed();
        await this.follow(list.metadata.resourceVersion);
      } catch (error) {
        if (this.abort.signal.aborted) return;
        this.error = error;
        this.loaded = true;
        changed();
        await sleep(error.status === 403 ? 10000 : 1000);
      }
    }
  }

  async follow(resourceVersion) {
    const separator = this.path.includes('?') ? '&' : '?';
    const url = `${this.path}${separator}watch=1&allowWatchBookmarks=true&resourceVersion=${resourceVersion}`;
    const response = await fetch(url, { headers: headers(), signal: this.abort.signal });
    if (!response.ok) throw new ApiError(response.status, response.statusText);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, end).trim();
        buffer = buffer.slice(end + 1);
        if (!line) continue;
        const event = JSON.parse(line);
        if (event.type === 'ERROR') throw new ApiError(event.object?.code, event.object?.message);
        if (event.type === 'BOOKMARK') continue;
        const key = Collection.key(event.object);
        if (event.type === 'DELETED') this.items.delete(key);
        else this.items.set(key, event.object);
        this.version += 1;
        changed();
      }
    }
  }
}

const collections = new Map();

/// The live collection of `kind` (in the chosen namespace, or `namespace`), started on first use.
function watched(kind, namespace = state.namespace, query = '') {
  const { base, namespaced } = KINDS[kind];
  const scope = namespaced && namespace ? `/namespaces/${encodeURIComponent(namespace)}` : '';
  const path = `${base}${scope}/${kind}${query ? `?${query}` : ''}`;
  if (!collections.has(path)) collections.set(path, new Collection(path));
  const collection = collections.get(path);
  collection.used = true;
  return collection;
}

/// Stops the watches the last render did not use.
function stopUnused() {
  for (const [path, collection] of collections) {
    if (!collection.used) {
      collection.stop();
      collections.delete(path);
    }
    collection.used = false;
  }
}

// ---- DOM helpers ----------------------------------------------------------------------------

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else if (name === 'className') node.className = value;
    // Through the CSSOM: the Content-Security-Policy forbids style attributes.
    else if (name === 'style') Object.assign(node.style, value);
    else node.setAttribute(name, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/// The height of a row of a long table, fixed (app.css) so that only the rows in view need
/// to exist: a table of 10,000 pods builds some 60 rows per render, not 10,000.
const ROW_HEIGHT = 36;
/// Tables longer than this are windowed.
const WINDOWED_FROM = 200;

/// A table of `items` with only the rows in view built (`rowOf` makes one), in a scroller
/// whose position survives re-renders (by `key`).
function longTable(key, headings, items, rowOf, empty) {
  if (items.length === 0) return el('p', { className: 'empty' }, empty);
  if (items.length < WINDOWED_FROM) return table(headings, items.map(rowOf), empty);
  const top = state.scroll.get(key) ?? 0;
  const visible = Math.ceil((window.innerHeight * 0.7) / ROW_HEIGHT);
  const first = Math.max(0, Math.floor(top / ROW_HEIGHT) - 10);
  const last = Math.min(items.length, first + visible + 20);
  const spacer = (rows) => el('tr', { className: 'spacer', style: { height: `${rows * ROW_HEIGHT}px` } });
  const scroller = el('div', {
    className: 'scroller', 'data-scroll': key,
    onscroll: (e) => {
      // A re-render restores the position, which fires this again: only a move the user
      // made re-renders.
      if (state.scroll.get(key) === e.target.scrollTop) return;
      state.scroll.set(key, e.target.scrollTop);
      changed();
    },
  }, el('table', { className: 'windowed' },
    el('thead', {}, el('tr', {}, headings.map((h) => el('th', {}, h)))),
    el('tbody', {}, spacer(first), items.slice(first, last).map(rowOf), spacer(items.length - last))));
  return [el('p', { className: 'count', 'data-count': key }, `${items.length} in all`), scroller];
}

function table(headings, rows, empty = 'Nothing here.') {
  if (rows.length === 0) return el('p', { className: 'empty' }, empty);
  return el('table', {},
    el('thead', {}, el('tr', {}, headings.map((h) => el('th', {}, h)))),
    el('tbody', {}, rows));
}

/// What a collection that could not be read says instead of its table.
function unavailable(collection) {
  if (!collection.loaded) return el('p', { className: 'empty' }, 'Loading…');
  if (collection.error) return el('p', { className: 'error' }, collection.error.message);
  return null;
}

function toast(message, isError = false) {
  const box = document.getElementById('toast');
  box.textContent = message;
  box.className = isError ? 'error' : '';
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, isError ? 8000 : 3000);
}

/// Runs an action; its failure (a 403 from RBAC, a 422 from validation) shows the server's words.
async function act(description, action) {
  try {
    await action();
    toast(description);
  } catch (error) {
    toast(`${description} failed: ${error.message}`, true);
  }
}

function age(timestamp) {
  if (!timestamp) return '';
  const seconds = Math.max(0, Math.floor((Date.now() - Date.parse(timestamp)) / 1000));
  if (seconds < 120) return `${seconds}s`;
  if (seconds < 7200) return `${Math.floor(seconds / 60)}m`;
  if (seconds < 172800) return `${Math.floor(seconds / 3600)}h`;
  return `${Math.floor(seconds / 86400)}d`;
}

/// A Kubernetes quantity as a number (cores for CPU, bytes for memory).
function quantity(text) {
  if (text === undefined || text === null) return 0;
  const match = String(text).match(/^([0-9.]+)([a-zA-Z]*)$/);
  if (!match) return 0;
  const factors = { '': 1, m: 1e-3, k: 1e3, M: 1e6, G: 1e9, T: 1e12, Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, Ti: 1024 ** 4 };
  return parseFloat(match[1]) * (factors[match[2]] ?? 1);
}

function bar(used, total, label) {
  const share = total > 0 ? Math.min(1, used / total) : 0;
  return el('span', { title: label },
    el('span', { className: 'bar' }, el('span', { style: { width: `${(share * 100).toFixed(1)}%` } })),
    ` ${label}`);
}

function podRequests(pod, resource) {
  return (pod.spec?.containers ?? [])
    .reduce((sum, c) => sum + quantity(c.resources?.requests?.[resource]), 0);
}

function resourcePath(kind, namespace, name) {
  return `${KINDS[kind].base}/namespaces/${encodeURIComponent(namespace)}/${kind}/${encodeURIComponent(name)}`;
}

// ---- views ----------------------------------------------------------------------------------

function podRow(pod) {
  const { namespace, name } = pod.metadata;
  const statuses = pod.status?.containerStatuses ?? [];
  const ready = statuses.filter((s) => s.ready).length;
  const restarts = statuses.reduce((sum, s) => sum + (s.restartCount ?? 0), 0);
  const phase = pod.metadata.deletionTimestamp ? 'Terminating' : (pod.status?.phase ?? 'Pending');
  return el('tr', { 'data-kind': 'pod', 'data-name': name, 'data-phase': phase, className: pod.metadata.deletionTimestamp ? 'terminating' : '' },
    el('td', {}, el('a', { href: `#/pod/${namespace}/${name}` }, name)),
    state.namespace ? null : el('td', {}, namespace),
    el('td', { className: `phase-${phase}` }, phase),
    el('td', {}, `${ready}/${pod.spec?.containers?.length ?? 0}`),
    el('td', {}, restarts),
    el('td', {}, pod.spec?.nodeName ?? ''),
    el('td', {}, age(pod.metadata.creationTimestamp)),
    el('td', { className: 'actions' },
      el('button', {
        type: 'button', 'data-action': 'delete-pod',
        onclick: () => act(`Deleting pod ${name}`, () => api('DELETE', resourcePath('pods', namespace, name))),
      }, 'Delete')));
}

function revisionOf(object) {
  return Number(object.metadata.annotations?.['deployment.kubernetes.io/revision'] ?? 0);
}

function ownedBy(object, owner) {
  return (object.metadata.ownerReferences ?? []).some((r) => r.uid === owner.metadata.uid);
}

/// `kubectl rollout undo`: the Deployment's template becomes its previous revision's. As
/// kubectl, the previous revision is the second newest of its ReplicaSets, not one below the
/// Deployment's own revision annotation: the controller writes that annotation after it made
/// the new ReplicaSet, so the page may hold the Deployment one revision behind its history.
async function undo(deployment, replicaSets) {
  const history = replicaSets.filter((rs) => ownedBy(rs, deployment) && revisionOf(rs) > 0)
    .sort((a, b) => revisionOf(b) - revisionOf(a));
  const previous = history[1];
  if (!previous) throw new ApiError(400, 'there is no earlier revision to go back to');
  const template = structuredClone(previous.spec.template);
  delete template.metadata?.labels?.['pod-template-hash'];
  const { namespace, name } = deployment.metadata;
  // A replace, as kubectl's: a merge would keep what the current template adds.
  await api('PATCH', resourcePath('deployments', namespace, name),
    [{ op: 'replace', path: '/spec/template', value: template }], 'application/json-patch+json');
}

function deploymentRow(deployment, replicaSets) {
  const { namespace, name } = deployment.metadata;
  const wanted = deployment.spec?.replicas ?? 1;
  const status = deployment.status ?? {};
  const key = `scale/${namespace}/${name}`;
  const revisions = replicaSets.filter((rs) => ownedBy(rs, deployment)).map(revisionOf)
    .filter((r) => r > 0).sort((a, b) => a - b);
  const scale = () => {
    const replicas = Number(state.drafts.get(key) ?? wanted);
    if (!Number.isInteger(replicas) || replicas < 0) {
      toast(`Replicas must be a whole number, not ${state.drafts.get(key)}`, true);
      return;
    }
    act(`Scaling ${name} to ${replicas}`, async () => {
      await api('PATCH', `${resourcePath('deployments', namespace, name)}/scale`,
        { spec: { replicas } }, 'application/merge-patch+json');
      state.drafts.delete(key);
    });
  };
  return el('tr', { 'data-kind': 'deployment', 'data-name': name },
    el('td', {}, name),
    state.namespace ? null : el('td', {}, namespace),
    el('td', { 'data-field': 'ready' }, `${status.readyReplicas ?? 0}/${wanted}`),
    el('td', {}, bar(status.updatedReplicas ?? 0, wanted, `${status.updatedReplicas ?? 0} up to date`)),
    el('td', {}, status.availableReplicas ?? 0),
    el('td', {}, revisions.join(', ')),
    el('td', { className: 'actions' },
      el('input', {
        type: 'number', min: 0, 'data-key': key, value: state.drafts.get(key) ?? wanted,
        oninput: (e) => state.drafts.set(key, e.target.value),
        onkeydown: (e) => { if (e.key === 'Enter') scale(); },
      }),
      el('button', { type: 'button', 'data-action': 'scale', onclick: scale }, 'Scale'),
      el('button', {
        type: 'button', 'data-action': 'restart',
        onclick: () => act(`Restarting ${name}`, () => api('PATCH', resourcePath('deployments', namespace, name),
          { spec: { template: { metadata: { annotations: { 'kubectl.kubernetes.io/restartedAt': new Date().toISOString() } } } } },
          'application/strategic-merge-patch+json')),
      }, 'Restart'),
      el('button', {
        type: 'button', 'data-action': 'undo',
        onclick: () => act(`Undoing ${name}`, () => undo(deployment, replicaSets)),
      }, 'Undo')));
}

function workloadRow(kind, o, readyOf) {
  return el('tr', { 'data-kind': kind, 'data-name': o.metadata.name },
    el('td', {}, o.metadata.name),
    state.namespace ? null : el('td', {}, o.metadata.namespace),
    el('td', {}, readyOf(o)),
    el('td', {}, age(o.metadata.creationTimestamp)));
}

function section(title, collection, render) {
  return [el('h2', {}, title), unavailable(collection) ?? render(collection)];
}

function compare(a, b) {
  return a < b ? -1 : (a > b ? 1 : 0);
}

function byName(a, b) {
  return compare(a.metadata.namespace ?? '', b.metadata.namespace ?? '')
    || compare(a.metadata.name, b.metadata.name);
}

function nsColumn(headings) {
  return state.namespace ? headings : [headings[0], 'Namespace', ...headings.slice(1)];
}

function workloadsView() {
  const replicaSets = watched('replicasets');
  const others = [
    ['ReplicaSets', 'replicasets', (r) => `${r.status?.readyReplicas ?? 0}/${r.spec?.replicas ?? 1}${revisionOf(r) ? `, revision ${revisionOf(r)}` : ''}`],
    ['StatefulSets', 'statefulsets', (s) => `${s.status?.readyReplicas ?? 0}/${s.spec?.replicas ?? 1}`],
    ['DaemonSets', 'daemonsets', (d) => `${d.status?.numberReady ?? 0}/${d.status?.desiredNumberScheduled ?? 0}`],
    ['Jobs', 'jobs', (j) => `${j.status?.succeeded ?? 0}/${j.spec?.completions ?? 1} succeeded`],
    ['CronJobs', 'cronjobs', (c) => `${c.spec?.schedule ?? ''}${c.spec?.suspend ? ' (suspended)' : ''}`],
  ];
  return [
    ...section('Deployments', watched('deployments'), (collection) => table(
      nsColumn(['Name', 'Ready', 'Rollout', 'Available', 'Revisions', '']),
      collection.sorted().map((d) => deploymentRow(d, replicaSets.all())),
      'No Deployments.')),
    ...section('Pods', watched('pods'), (collection) => longTable('pods',
      nsColumn(['Name', 'Phase', 'Ready', 'Restarts', 'Node', 'Age', '']),
      collection.sorted(), podRow, 'No pods.')),
    ...others.flatMap(([title, kind, readyOf]) => section(title, watched(kind), (collection) => longTable(kind,
      nsColumn(['Name', 'Status', 'Age']), collection.sorted(), (o) => workloadRow(kind, o, readyOf),
      `No ${title}.`))),
  ];
}

function clusterView() {
  const nodes = watched('nodes');
  const pods = watched('pods', '');
  // Each node's running pods, in one pass over all pods.
  const byNode = new Map();
  for (const pod of pods.error ? [] : pods.all()) {
    if (!pod.spec?.nodeName || ['Succeeded', 'Failed'].includes(pod.status?.phase)) continue;
    if (!byNode.has(pod.spec.nodeName)) byNode.set(pod.spec.nodeName, []);
    byNode.get(pod.spec.nodeName).push(pod);
  }
  return section('Nodes', nodes, (collection) => longTable('nodes',
    ['Name', 'Ready', 'Schedulable', 'CPU requested', 'Memory requested', 'Pods', 'Conditions', ''],
    collection.sorted(), (node) => {
      const name = node.metadata.name;
      const ready = (node.status?.conditions ?? []).find((c) => c.type === 'Ready');
      const here = byNode.get(name) ?? [];
      const allocatable = node.status?.allocatable ?? {};
      const cpu = here.reduce((sum, p) => sum + podRequests(p, 'cpu'), 0);
      const memory = here.reduce((sum, p) => sum + podRequests(p, 'memory'), 0);
      const cordoned = !!node.spec?.unschedulable;
      return el('tr', { 'data-kind': 'node', 'data-name': name },
        el('td', {}, name),
        el('td', { className: `ready-${ready?.status === 'True'}` }, ready?.status ?? 'Unknown'),
        el('td', {}, cordoned ? 'cordoned' : 'yes'),
        el('td', {}, bar(cpu, quantity(allocatable.cpu), `${cpu.toFixed(2)} / ${quantity(allocatable.cpu)} cores`)),
        el('td', {}, bar(memory, quantity(allocatable.memory), `${(memory / 1024 ** 2).toFixed(0)} / ${(quantity(allocatable.memory) / 1024 ** 2).toFixed(0)} MiB`)),
        el('td', {}, pods.error ? '?' : here.length),
        el('td', {}, (node.status?.conditions ?? []).filter((c) => c.status === 'True' && c.type !== 'Ready').map((c) => c.type).join(', ')),
        el('td', { className: 'actions' }, el('button', {
          type: 'button', 'data-action': cordoned ? 'uncordon' : 'cordon',
          onclick: () => act(`${cordoned ? 'Uncordoning' : 'Cordoning'} ${name}`, () => api('PATCH', `/api/v1/nodes/${encodeURIComponent(name)}`,
            { spec: { unschedulable: !cordoned } }, 'application/merge-patch+json')),
        }, cordoned ? 'Uncordon' : 'Cordon')));
    }, 'No nodes.'));
}

/// Requests and 5xx answers per second of each Service, sampled every 2 s from the proxies'
/// figures (the custom metrics API).
const rates = new Map();

async function metric(namespace, name, which) {
  try {
    const answer = await api('GET', `/apis/custom.metrics.k8s.io/v1beta1/namespaces/${namespace}/services/${name}/${which}`);
    return quantity(answer?.value);
  } catch {
    return null;
  }
}

async function sampleRates() {
  for (;;) {
    await sleep(2000);
    if (!state.token || currentRoute().view !== 'services') continue;
    const services = [...collections.values()].filter((c) => /\/services$/.test(c.path)).flatMap((c) => c.all());
    await Promise.all(services.map(async (service) => {
      const { namespace, name } = service.metadata;
      const key = `${namespace}/${name}`;
      const [requests, errors] = await Promise.all([
        metric(namespace, name, 'requests_per_second'),
        metric(namespace, name, 'errors_per_second'),
      ]);
      const history = rates.get(key) ?? [];
      history.push({ requests, errors });
      rates.set(key, history.slice(-30));
    }));
    changed();
  }
}

/// A small chart of requests per second, with the 5xx answers in red below.
function sparkline(history) {
  const top = Math.max(1, ...history.map((h) => h.requests ?? 0));
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('class', 'spark');
  svg.setAttribute('width', '120');
  svg.setAttribute('height', '20');
  for (const [field, className] of [['requests', 'requests'], ['errors', 'errors']]) {
    const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
    line.setAttribute('class', className);
    line.setAttribute('points', history.map((h, i) => `${i * 4},${20 - ((h[field] ?? 0) / top) * 18}`).join(' '));
    svg.append(line);
  }
  return svg;
}

function rateText(latest) {
  if (!latest || latest.requests === null) return '';
  const errors = latest.errors ?? 0;
  const share = latest.requests > 0 ? (100 * errors) / latest.requests : 0;
  return ` ${latest.requests.toFixed(1)}/s, errors ${errors.toFixed(1)}/s (${share.toFixed(0)}%)`;
}

function servicesView() {
  const slices = watched('endpointslices');
  return section('Services', watched('services'), (collection) => longTable('services',
    nsColumn(['Name', 'Type', 'Cluster IP', 'Ports', 'Ready endpoints', 'Requests (errors in red)']),
    collection.sorted(), (service) => {
      const { namespace, name } = service.metadata;
      const endpoints = slices.all()
        .filter((s) => s.metadata.namespace === namespace && s.metadata.labels?.['kubernetes.io/service-name'] === name)
        .flatMap((s) => s.endpoints ?? [])
        .filter((e) => e.conditions?.ready !== false);
      const history = rates.get(`${namespace}/${name}`) ?? [];
      const latest = history.at(-1);
      return el('tr', { 'data-kind': 'service', 'data-name': name },
        el('td', {}, name),
        state.namespace ? null : el('td', {}, namespace),
        el('td', {}, service.spec?.type ?? 'ClusterIP'),
        el('td', {}, service.spec?.clusterIP ?? ''),
        el('td', {}, (service.spec?.ports ?? []).map((p) => `${p.port}${p.nodePort ? `:${p.nodePort}` : ''}/${p.protocol ?? 'TCP'}`).join(', ')),
        el('td', {}, endpoints.length),
        el('td', { 'data-field': 'rates' }, sparkline(history), rateText(latest)));
    }, 'No Services.'));
}

function eventRows(events) {
  return events
    .sort((a, b) => Date.parse(b.lastTimestamp ?? b.eventTime ?? 0) - Date.parse(a.lastTimestamp ?? a.eventTime ?? 0))
    .slice(0, 200)
    .map((e) => el('tr', { 'data-kind': 'event' },
      el('td', { className: e.type === 'Warning' ? 'error' : '' }, e.type),
      el('td', {}, e.reason),
      el('td', {}, `${e.involvedObject?.kind ?? ''}/${e.involvedObject?.name ?? ''}`),
      el('td', {}, e.message),
      el('td', {}, e.count ?? 1),
      el('td', {}, age(e.lastTimestamp ?? e.eventTime))));
}

function eventsView() {
  return section('Events', watched('events'), (collection) => table(
    ['Type', 'Reason', 'Object', 'Message', 'Count', 'Last seen'], eventRows(collection.all()), 'No events.'));
}

/// Streaming logs, kept across re-renders (a re-render must not lose what was read).
const logs = new Map();

function logView(namespace, pod, container) {
  const key = `${namespace}/${pod}/${container}`;
  if (logs.has(key)) return logs.get(key).node;
  const node = el('pre', { className: 'log', 'data-log': container });
  const stream = { node, abort: new AbortController() };
  logs.set(key, stream);
  (async () => {
    const path = `${resourcePath('pods', namespace, pod)}/log?container=${encodeURIComponent(container)}&follow=true&tailLines=500`;
    while (!stream.abort.signal.aborted) {
      try {
        const response = await fetch(path, { headers: headers(), signal: stream.abort.signal });
        if (!response.ok) {
          const answer = await response.json().catch(() => ({}));
          node.textContent = `(no log: ${answer.message ?? response.statusText})`;
          await sleep(3000);
          continue;
        }
        node.textContent = '';
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          const atBottom = node.scrollTop + node.clientHeight >= node.scrollHeight - 4;
          node.append(document.createTextNode(value));
          if (atBottom) node.scrollTop = node.scrollHeight;
        }
      } catch {
        if (stream.abort.signal.aborted) return;
      }
      await sleep(1000);
    }
  })();
  return node;
}

function stopLogsExcept(keep) {
  for (const [key, stream] of logs) {
    if (!key.startsWith(keep)) {
      stream.abort.abort();
      logs.delete(key);
    }
  }
}

/// What a node has loaded of each module (`nodes/{name}/proxy/modules`), fetched at most every
/// 10 s; an error (say a user without `get nodes/proxy`) is shown in the modules' table.
const nodeModules = new Map();

function modulesOf(node) {
  if (!node) return { records: [] };
  const known = nodeModules.get(node);
  if (!known || (!known.pending && Date.now() - known.at > 10000)) {
    const entry = { ...(known ?? { records: [] }), pending: true, at: Date.now() };
    nodeModules.set(node, entry);
    api('GET', `/api/v1/nodes/${encodeURIComponent(node)}/proxy/modules`)
      .then((answer) => nodeModules.set(node, { records: answer.modules ?? [], at: Date.now() }))
      .catch((error) => nodeModules.set(node, { records: [], error, at: Date.now() }))
      .finally(changed);
  }
  return nodeModules.get(node);
}

function bytes(count) {
  if (count === null || count === undefined) return '';
  if (count < 1024 * 1024) return `${(count / 1024).toFixed(0)} KiB`;
  return `${(count / 1024 / 1024).toFixed(1)} MiB`;
}

function podView(namespace, name) {
  stopLogsExcept(`${namespace}/${name}/`);
  const pods = watched('pods', namespace, `fieldSelector=metadata.name%3D${encodeURIComponent(name)}`);
  const events = watched('events', namespace, `fieldSelector=involvedObject.name%3D${encodeURIComponent(name)}`);
  const missing = unavailable(pods);
  if (missing) return [el('h2', {}, `Pod ${namespace}/${name}`), missing];
  const pod = pods.all()[0];
  if (!pod) return [el('h2', {}, `Pod ${namespace}/${name}`), el('p', { className: 'empty' }, 'This pod does not exist (any more).')];
  const statuses = new Map((pod.status?.containerStatuses ?? []).map((s) => [s.name, s]));
  const modules = modulesOf(pod.spec?.nodeName);
  const recordOf = (container, status) => modules.records.find((m) => (m.images ?? []).includes(container.image)
    || (status.imageID && ((m.imageIds ?? []).includes(status.imageID) || m.digest === status.imageID)));
  return [
    el('h2', {}, `Pod ${namespace}/${name}`),
    el('p', {}, `Phase ${pod.status?.phase ?? 'Pending'} on node ${pod.spec?.nodeName ?? '(not placed)'}, IP ${pod.status?.podIP ?? '-'}`),
    el('h2', {}, 'Modules'),
    table(['Container', 'Image', 'Digest', 'Kind', 'Size', 'Compiled', 'State', 'Restarts', 'Loopback ports'],
      (pod.spec?.containers ?? []).map((c) => {
        const status = statuses.get(c.name) ?? {};
        const stateName = Object.keys(status.state ?? {})[0] ?? 'waiting';
        const record = recordOf(c, status);
        const compiled = record
          ? `${record.compileState} in ${record.compileMillis.toFixed(0)} ms${record.compiledBytes ? ` (${bytes(record.compiledBytes)} native)` : ''}`
          : (modules.error ? `(${modules.error.message})` : '');
        return el('tr', { 'data-kind': 'container', 'data-name': c.name },
          el('td', {}, c.name), el('td', {}, c.image), el('td', { 'data-field': 'digest' }, status.imageID ?? ''),
          el('td', { 'data-field': 'module-kind' }, record?.kind ?? ''),
          el('td', { 'data-field': 'size' }, bytes(record?.wasmBytes)),
          el('td', { 'data-field': 'compiled' }, compiled),
          el('td', {}, stateName), el('td', {}, status.restartCount ?? 0),
          el('td', {}, (c.ports ?? []).map((p) => p.containerPort).join(', ')));
      })),
    el('h2', {}, 'Volumes'),
    table(['Name', 'Source'], (pod.spec?.volumes ?? []).map((v) => el('tr', {},
      el('td', {}, v.name), el('td', {}, Object.keys(v).filter((k) => k !== 'name').join(', ')))), 'No volumes.'),
    el('h2', {}, 'Probes'),
    table(['Container', 'Probe', 'Path', 'Port'], (pod.spec?.containers ?? []).flatMap((c) =>
      ['startupProbe', 'readinessProbe', 'livenessProbe'].filter((p) => c[p]).map((p) => el('tr', {},
        el('td', {}, c.name), el('td', {}, p), el('td', {}, c[p].httpGet?.path ?? ''), el('td', {}, c[p].httpGet?.port ?? ''))))
    , 'No probes.'),
    el('h2', {}, 'Events'),
    unavailable(events) ?? table(['Type', 'Reason', 'Object', 'Message', 'Count', 'Last seen'], eventRows(events.all()), 'No events.'),
    ...(pod.spec?.containers ?? []).flatMap((c) => [el('h2', {}, `Log of ${c.name}`), logView(namespace, name, c.name)]),
  ];
}

// ---- apply ----------------------------------------------------------------------------------

/// The top-level fields of a manifest (JSON, or the block-style YAML manifests are written in).
function manifestHead(text) {
  if (text.trim().startsWith('{')) {
    const object = JSON.parse(text);
    return { apiVersion: object.apiVersion, kind: object.kind, name: object.metadata?.name, namespace: object.metadata?.namespace };
  }
  const head = {};
  let inMetadata = false;
  for (const line of text.split('\n')) {
    if (/^---/.test(line) && Object.keys(head).length) break;
    const top = line.match(/^([A-Za-z]+):\s*(.*?)\s*$/);
    if (top) {
      inMetadata = top[1] === 'metadata';
      if (top[1] === 'apiVersion' || top[1] === 'kind') head[top[1]] = top[2].replace(/^["']|["']$/g, '');
      continue;
    }
    const nested = line.match(/^\s+(name|namespace):\s*(.*?)\s*$/);
    if (inMetadata && nested && line.match(/^(\s+)/)[1].length <= 2) {
      head[nested[1]] = nested[2].replace(/^["']|["']$/g, '');
    }
  }
  return head;
}

async function apply(text) {
  const head = manifestHead(text);
  if (!head.apiVersion || !head.kind || !head.name) {
    throw new ApiError(400, 'the manifest needs apiVersion, kind and metadata.name');
  }
  const base = head.apiVersion.includes('/') ? `/apis/${head.apiVersion}` : `/api/${head.apiVersion}`;
  const discovery = await api('GET', base);
  const resource = discovery.resources.find((r) => r.kind === head.kind && !r.name.includes('/'));
  if (!resource) throw new ApiError(404, `${head.apiVersion} has no kind ${head.kind}`);
  const namespace = head.namespace || state.namespace || 'default';
  const scope = resource.namespaced ? `/namespaces/${encodeURIComponent(namespace)}` : '';
  return api('PATCH', `${base}${scope}/${resource.name}/${encodeURIComponent(head.name)}?fieldManager=shoal-dashboard`,
    text, 'application/apply-patch+yaml');
}

function applyView() {
  const key = 'apply/text';
  const errors = state.applyErrors ?? [];
  return [
    el('h2', {}, 'Apply a manifest (server-side apply)'),
    el('textarea', {
      'data-key': key, spellcheck: 'false',
      oninput: (e) => state.drafts.set(key, e.target.value),
    }, state.drafts.get(key) ?? ''),
    el('p', {}, el('button', {
      type: 'button', 'data-action': 'apply',
      onclick: async () => {
        state.applyErrors = [];
        try {
          const applied = await apply(state.drafts.get(key) ?? '');
          toast(`Applied ${applied.kind} ${applied.metadata.name}`);
        } catch (error) {
          const causes = error.body?.details?.causes ?? [];
          state.applyErrors = causes.length ? causes.map((c) => `${c.field}: ${c.message}`) : [error.message];
          toast(`Apply failed: ${error.message}`, true);
        }
        changed();
      },
    }, 'Apply')),
    errors.length ? el('ul', { className: 'error', 'data-field': 'apply-errors' }, errors.map((e) => el('li', {}, e))) : null,
  ];
}

// ---- page -----------------------------------------------------------------------------------

function currentRoute() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  return { view: parts[0] || 'workloads', params: parts.slice(1) };
}

const views = {
  workloads: workloadsView,
  cluster: clusterView,
  services: servicesView,
  events: eventsView,
  apply: applyView,
  pod: (namespace, name) => podView(namespace, name),
};

function render() {
  render.pending = false;
  const main = document.getElementById('main');
  if (!state.token) return;
  offerNamespaces();
  const { view, params } = currentRoute();
  for (const link of document.querySelectorAll('#nav a')) {
    link.classList.toggle('current', link.dataset.view === view);
  }
  if (view !== 'pod') stopLogsExcept('\u0000');
  // Keep the focused input (and what was typed in it) across the re-render.
  const focused = document.activeElement?.dataset?.key;
  const selection = focused ? [document.activeElement.selectionStart, document.activeElement.selectionEnd] : null;
  const started = performance.now();
  const content = (views[view] ?? workloadsView)(...params);
  main.replaceChildren(...[content].flat(Infinity).filter(Boolean));
  for (const scroller of main.querySelectorAll('[data-scroll]')) {
    scroller.scrollTop = state.scroll.get(scroller.dataset.scroll) ?? 0;
  }
  const took = performance.now() - started;
  Object.assign(state.stats, {
    renders: state.stats.renders + 1,
    totalMs: state.stats.totalMs + took,
    lastMs: took,
    maxMs: Math.max(state.stats.maxMs, took),
  });
  stopUnused();
  if (focused) {
    const again = main.querySelector(`[data-key="${CSS.escape(focused)}"]`);
    if (again) {
      again.focus();
      try { again.setSelectionRange(...selection); } catch { /* number inputs have none */ }
    }
  }
}

function changed() {
  if (render.pending) return;
  render.pending = true;
  setTimeout(render, 30);
}

function logout(message = '') {
  state.token = null;
  sessionStorage.removeItem('shoal-token');
  for (const collection of collections.values()) collection.stop();
  collections.clear();
  stopLogsExcept('\u0000');
  state.namespaces?.stop();
  state.namespaces = null;
  document.getElementById('main').replaceChildren();
  document.getElementById('login').hidden = false;
  document.getElementById('logout').hidden = true;
  document.getElementById('who').textContent = '';
  document.getElementById('login-error').textContent = message;
}

async function login(token) {
  for (const collection of collections.values()) collection.stop();
  collections.clear();
  state.token = token;
  try {
    const review = await api('POST', '/apis/authentication.k8s.io/v1/selfsubjectreviews',
      { apiVersion: 'authentication.k8s.io/v1', kind: 'SelfSubjectReview' });
    state.user = review.status.userInfo;
  } catch (error) {
    if (error.status !== 401) logout(`Logging in failed: ${error.message}`);
    return;
  }
  sessionStorage.setItem('shoal-token', token);
  document.getElementById('login').hidden = true;
  document.getElementById('logout').hidden = false;
  document.getElementById('who').textContent = state.user.username;
  watchNamespaces();
  changed();
}

/// The namespace choice: free text, offered the namespaces the user may list.
function watchNamespaces() {
  state.namespaces?.stop();
  state.namespaces = new Collection('/api/v1/namespaces');
  document.getElementById('namespace').value = state.namespace;
}

function offerNamespaces() {
  const list = document.getElementById('namespaces');
  const names = (state.namespaces?.all() ?? []).map((n) => n.metadata.name).sort();
  if (list.dataset.names !== names.join(',')) {
    list.dataset.names = names.join(',');
    list.replaceChildren(...names.map((n) => el('option', { value: n })));
  }
}

function chooseNamespace(namespace) {
  state.namespace = namespace.trim();
  document.getElementById('namespace').value = state.namespace;
  sessionStorage.setItem('shoal-namespace', namespace);
  changed();
}

/// `shoal dashboard` opens /ui/#token=…: the token is taken out of the address at once.
function tokenFromAddress() {
  const token = new URLSearchParams(location.hash.replace(/^#/, '')).get('token');
  if (token) history.replaceState(null, '', `${location.pathname}#/workloads`);
  return token;
}

window.addEventListener('hashchange', () => {
  const token = tokenFromAddress();
  if (token) login(token);
  else changed();
});
window.addEventListener('DOMContentLoaded', () => {
  document.getElementById('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    login(document.getElementById('token').value.trim());
  });
  document.getElementById('logout').addEventListener('click', () => logout());
  document.getElementById('namespace').addEventListener('change', (e) => chooseNamespace(e.target.value));
  const fromLink = tokenFromAddress();
  if (fromLink) {
    login(fromLink);
  } else if (state.token) {
    login(state.token);
  } else {
    logout();
  }
  sampleRates();
});

// Tests and the curious can reach the state and the namespace choice.
window.shoal = { state, chooseNamespace, collections };
