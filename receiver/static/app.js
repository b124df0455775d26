// The receiver dashboard: reads the /v1 API, follows the event stream, no framework, no build.
"use strict";

const meta = (name) => document.querySelector(`meta[name="${name}"]`)?.content ?? "";
const AUTH_REQUIRED = meta("receiver-auth") === "required";
const FEATURES = new Set(meta("receiver-features").split(/\s+/).filter(Boolean));
const KEY_SLOT = "receiver.apiKey";
const PAGE = 20;
const REFRESH_MS = 5000;
const FEED_MAX = 12;
// A list's page size: ?limit= in the view's URL (1-100, as the API takes), else PAGE.
const pageSize = (query) => Math.min(100, Math.max(1, parseInt(query.get("limit"), 10) || PAGE));

// ---------------------------------------------------------------------------------------------
// DOM helpers: every value goes in as text, never as markup.

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const TONES = {
  completed: "ok", delivered: "ok", applied: "ok", active: "ok", webhook: "ok",
  failed: "bad", dead: "bad", anomaly: "bad", disabled: "bad", deleted: "bad",
  in_progress: "info", pending: "info", queued: "idle", submitting: "idle", pending_confirm: "info",
  poll: "warn", deadline: "bad", paused: "warn", unmatched: "warn", stale: "idle",
  duplicate: "idle", unchanged: "idle", ignored: "idle", cancelled: "idle", retry: "warn",
  kept: "ok", capturing: "info", too_large: "bad", refused: "bad",
};
const pill = (value, tone) => h("span", { class: `pill ${tone || TONES[value] || "idle"}` }, value ?? "—");
const mono = (text) => h("code", {}, text);
const dash = (v) => (v === null || v === undefined || v === "" ? h("span", { class: "dim" }, "—") : v);

function ago(unix) {
  if (unix === null || unix === undefined) return dash(null);
  const when = new Date(unix * 1000);
  return h("time", { datetime: when.toISOString(), title: when.toISOString().replace(".000", "") }, relative(unix));
}

function relative(unix) {
  const s = Date.now() / 1000 - unix;
  return s >= 0 ? `${span(s)} ago` : `in ${span(-s)}`;
}

function span(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60 ? `${s % 60} s` : ""}`.trim();
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

const pct = (x) => (x === null || x === undefined ? "—" : `${(x * 100).toFixed(x === 1 ? 0 : 1)}%`);
const json = (value) => h("pre", {}, JSON.stringify(value, null, 2));
const link = (href, text) => h("a", { href }, text);
const videoLink = (id) => (id ? link(`#/tasks/${encodeURIComponent(id)}`, mono(id)) : dash(null));
const eventLink = (id) => (id ? link(`#/events/${encodeURIComponent(id)}`, mono(id)) : dash(null));
const deliveryLink = (id) => link(`#/deliveries/${encodeURIComponent(id)}`, mono(id));

function table(columns, rows, { caption, empty, label } = {}) {
  if (!rows.length) return h("p", { class: "empty" }, empty || "Nothing yet.");
  return h(
    "table",
    { "aria-label": label },
    caption ? h("caption", {}, caption) : null,
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.num ? "num" : null }, c.title)))),
    h(
      "tbody",
      {},
      rows.map((row) =>
        h(
          "tr",
          { "data-key": row.id ?? null },
          columns.map((c, i) =>
            h(i === 0 ? "th" : "td", { scope: i === 0 ? "row" : null, class: c.num ? "num" : c.cls || null }, dash(c.cell(row))),
          ),
        ),
      ),
    ),
  );
}

function kv(pairs) {
  return h(
    "table",
    { class: "kv" },
    h("tbody", {}, pairs.map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, dash(v))))),
  );
}

function panel(title, body, { hint, actions, id } = {}) {
  return h(
    "section",
    { class: "panel", "aria-labelledby": id ? `${id}-title` : null, id },
    h("header", {}, h("h2", { id: id ? `${id}-title` : null }, title), hint ? h("span", { class: "hint" }, hint) : null, actions),
    body,
  );
}

// ---------------------------------------------------------------------------------------------
// The API, with the key when the receiver wants one.

class ApiError extends Error {
  constructor(status, body) {
    const err = body && body.error;
    super(err ? `${err.message}${err.code ? ` (${err.code})` : ""}` : `HTTP ${status}`);
    this.status = status;
    this.code = err && err.code;
  }
}

let keyPrompt = null;

function askKey(message) {
  if (keyPrompt) return keyPrompt;
  const dialog = document.getElementById("key-dialog");
  const form = document.getElementById("key-form");
  const input = document.getElementById("key-input");
  document.getElementById("key-error").textContent = message || "";
  input.value = "";
  keyPrompt = new Promise((resolve) => {
    const done = (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY_SLOT, key);
      form.removeEventListener("submit", done);
      dialog.removeEventListener("cancel", stay);
      dialog.close();
      keyPrompt = null;
      showKeyButton();
      resolve(key);
    };
    // Nothing on this page works without a key: Escape does not dismiss the prompt.
    const stay = (event) => event.preventDefault();
    form.addEventListener("submit", done);
    dialog.addEventListener("cancel", stay);
  });
  dialog.showModal();
  input.focus();
  return keyPrompt;
}

function showKeyButton() {
  document.getElementById("forget-key").hidden = !(AUTH_REQUIRED && sessionStorage.getItem(KEY_SLOT));
}

async function authHeaders() {
  if (!AUTH_REQUIRED) return {};
  const key = sessionStorage.getItem(KEY_SLOT) || (await askKey());
  return { authorization: `Bearer ${key}` };
}

// A call refused with `used`: ask again, unless another key was entered meanwhile (then retry).
async function keyRefused(used) {
  const stored = sessionStorage.getItem(KEY_SLOT);
  if (stored && used !== `Bearer ${stored}`) return stored;
  sessionStorage.removeItem(KEY_SLOT);
  showKeyButton();
  return askKey("The receiver refused that key. Enter another.");
}

async function api(method, path, body) {
  for (;;) {
    const headers = { accept: "application/json", ...(await authHeaders()) };
    if (body !== undefined) headers["content-type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401 && AUTH_REQUIRED) {
      await keyRefused(headers.authorization);
      continue;
    }
    const data = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }
}

const get = (path, query) => api("GET", query ? `${path}?${new URLSearchParams(clean(query))}` : path);
const post = (path, body) => api("POST", path, body ?? {});
const clean = (query) => Object.fromEntries(Object.entries(query).filter(([, v]) => v !== null && v !== undefined && v !== ""));

// ---------------------------------------------------------------------------------------------
// The event stream: fetch() with the key (EventSource cannot send headers), resumed with
// Last-Event-ID after any drop.

const feed = [];
let lastEventId = null;

function setLive(state, text) {
  const el = document.getElementById("live");
  el.dataset.state = state;
  el.textContent = text || state;
}

async function follow() {
  let backoff = 1000;
  for (;;) {
    try {
      const headers = { accept: "text/event-stream", ...(await authHeaders()) };
      if (lastEventId) headers["last-event-id"] = lastEventId;
      const response = await fetch("/v1/events/stream", { headers, cache: "no-store" });
      if (response.status === 401 && AUTH_REQUIRED) {
        await keyRefused(headers.authorization);
        continue;
      }
      if (response.status === 400 && lastEventId) {
        lastEventId = null; // that event is gone: start from now
        continue;
      }
      if (!response.ok || !response.body) throw new Error(`stream answered ${response.status}`);
      setLive("live");
      backoff = 1000;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          frame(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (err) {
      // A dropped connection is expected (restarts, sleep); it is retried below.
    }
    setLive("reconnecting");
    await new Promise((resolve) => setTimeout(resolve, backoff * (0.8 + Math.random() * 0.4)));
    backoff = Math.min(backoff * 2, 30000);
  }
}

function frame(text) {
  let id = null;
  let type = "message";
  const data = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") id = value;
    else if (field === "event") type = value;
    else if (field === "data") data.push(value);
  }
  if (id) lastEventId = id;
  if (!data.length) return;
  let event;
  try {
    event = JSON.parse(data.join("\n"));
  } catch {
    return;
  }
  feed.unshift({ id: event.id || id, type: event.type || type, video: event.data?.id, status: event.data?.status, at: Date.now() / 1000 });
  feed.length = Math.min(feed.length, FEED_MAX);
  document.getElementById("live").title = `last event ${feed[0].id}`;
  onEvent(event);
}

// ---------------------------------------------------------------------------------------------
// Routing: #/view/id?query. A view is an async function that returns the page's content;
// re-rendering keeps open <details>, the focused control and results of earlier actions.

const results = new Map(); // key -> {text, tone}: outcomes of button presses, kept across renders
let current = { name: "overview", id: null, query: new URLSearchParams() };
let renderSeq = 0;
let refreshTimer = null;

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, qs] = raw.split("?");
  const [name, ...rest] = path.split("/").filter(Boolean);
  return { name: name || "overview", id: rest.length ? decodeURIComponent(rest.join("/")) : null, query: new URLSearchParams(qs || "") };
}

const VIEWS = {
  overview: () => overview(),
  tasks: (r) => (r.id ? taskView(r.id) : tasksList(r.query)),
  deliveries: (r) => (r.id ? deliveryView(r.id) : deliveriesList(r.query)),
  events: (r) => (r.id ? eventView(r.id) : eventsList(r.query)),
  subscriptions: (r) => subscriptionsView(r.query),
  "dead-letters": (r) => deadLettersView(r.query),
};

async function render({ fresh = false } = {}) {
  const seq = ++renderSeq;
  const route = current;
  const view = document.getElementById("view");
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === route.name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const open = new Set([...view.querySelectorAll("details[open][data-key]")].map((d) => d.dataset.key));
  const focused = document.activeElement?.dataset?.focus;
  const values = new Map([...view.querySelectorAll("select[data-focus]")].map((el) => [el.dataset.focus, el.value]));
  let content;
  try {
    content = await (VIEWS[route.name] || notFoundView)(route);
  } catch (err) {
    content = errorView(err);
  }
  if (seq !== renderSeq) return; // a newer render started meanwhile
  // A playing video (or any element marked data-keep) survives the refresh: the same element
  // moves into the new content, in the same task, so playback never stops.
  const kept = new Map([...view.querySelectorAll("[data-keep]")].map((el) => [el.dataset.keep, el]));
  for (const el of content.querySelectorAll("[data-keep]")) {
    const old = kept.get(el.dataset.keep);
    if (old) el.replaceWith(old);
  }
  for (const d of content.querySelectorAll("details[data-key]")) if (open.has(d.dataset.key)) d.open = true;
  for (const el of content.querySelectorAll("select[data-focus]")) {
    const kept = values.get(el.dataset.focus);
    if (kept !== undefined && [...el.options].some((o) => o.value === kept)) el.value = kept;
  }
  view.replaceChildren(content);
  view.setAttribute("aria-busy", "false");
  if (fresh) view.focus({ preventScroll: true });
  else if (focused) view.querySelector(`[data-focus="${CSS.escape(focused)}"]`)?.focus({ preventScroll: true });
}

function navigate() {
  current = parseHash();
  render({ fresh: true });
}

function scheduleRefresh(delay = 150) {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, delay);
}

function refresh() {
  clearTimeout(refreshTimer);
  const busy = document.activeElement && ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName);
  if (document.visibilityState === "visible" && !busy && !document.getElementById("key-dialog").open) render();
  refreshTimer = setTimeout(refresh, REFRESH_MS);
}

function onEvent(event) {
  // An event is a terminal result: every view may show it; the current one re-reads now.
  if (current.name === "tasks" && current.id && event.data?.id !== current.id) return;
  scheduleRefresh();
}

function errorView(err) {
  const text = err instanceof ApiError ? err.message : `The receiver could not be reached (${err.message}).`;
  return h("div", {}, h("p", { class: "notice bad", role: "alert" }, text));
}

function notFoundView() {
  return h("div", {}, h("h1", {}, "Not found"), h("p", { class: "subtitle" }, "No such page in this dashboard."));
}

function head(title, subtitle, ...extra) {
  return h("div", { class: "page-head" }, h("div", { class: "grow" }, h("h1", {}, title), subtitle ? h("p", { class: "subtitle" }, subtitle) : null), extra);
}

// A button that calls the API and shows what came back, kept across re-renders.
function actionButton(label, key, run, { cls, describe } = {}) {
  const out = h("div", { class: "result", role: "status", "data-result": key });
  const kept = results.get(key);
  if (kept) {
    out.textContent = kept.text;
    out.className = `result ${kept.tone}`;
  }
  const button = h("button", { type: "button", class: cls, "data-focus": key, "aria-describedby": null });
  button.textContent = label;
  button.addEventListener("click", async () => {
    button.disabled = true;
    out.className = "result";
    out.textContent = "Working…";
    let shown;
    try {
      shown = { text: await run(), tone: "ok" };
    } catch (err) {
      shown = { text: `Failed: ${err.message}`, tone: "bad" };
    }
    results.set(key, shown);
    out.textContent = shown.text;
    out.className = `result ${shown.tone}`;
    button.disabled = false;
    if (describe) scheduleRefresh(300);
  });
  return [button, out];
}

// Paging like the API: `after` is the last id seen. `trail` keeps the cursors of the pages
// walked before this one, so "Newer" can go back without the API paging backwards.
function pager(route, page, base) {
  const trail = (route.query.get("trail") || "").split(",").filter(Boolean);
  const after = route.query.get("after");
  const rest = Object.fromEntries([...route.query].filter(([k]) => k !== "after" && k !== "trail"));
  const make = (query) => `#/${base}?${new URLSearchParams(clean({ ...rest, ...query }))}`;
  const last = page.data.length ? page.data[page.data.length - 1].id : null;
  return h(
    "nav",
    { class: "pager", "aria-label": "Pages" },
    h("span", { class: "dim" }, `${page.data.length} shown${after ? ` after ${after}` : " from the newest"}`),
    after ? link(make({}), "Newest") : null,
    after ? link(make({ after: trail[trail.length - 1], trail: trail.slice(0, -1).join(",") }), "← Newer") : null,
    page.has_more && last ? link(make({ after: last, trail: (after ? [...trail, after] : trail).join(",") }), "Older →") : null,
  );
}

// ---------------------------------------------------------------------------------------------
// Overview

const TASK_COLUMNS = [
  { title: "Video", cell: (v) => videoLink(v.id) },
  { title: "Model", cell: (v) => v.model },
  { title: "Status", cell: (v) => pill(v.status) },
  { title: "Resolved by", cell: (v) => (v.receiver?.resolved_by ? pill(v.receiver.resolved_by) : null) },
  { title: "Deliveries", num: true, cell: (v) => v.receiver?.deliveries ?? 0 },
  { title: "Polls", num: true, cell: (v) => v.receiver?.polls ?? 0 },
  { title: "Submitted", cell: (v) => ago(v.receiver?.submitted_at ?? v.created_at) },
];

const DELIVERY_COLUMNS = [
  { title: "Delivery", cell: (d) => deliveryLink(d.id) },
  { title: "Video", cell: (d) => videoLink(d.video_id) },
  { title: "Type / status", cell: (d) => d.event_type || d.status },
  { title: "Verified by", cell: (d) => d.verified_by },
  { title: "Outcome", cell: (d) => pill(d.outcome) },
  { title: "Copies", num: true, cell: (d) => 1 + (d.repeats || 0) },
  { title: "Received", cell: (d) => ago(d.received_at) },
];

const HEALTH_COLUMNS = [
  { title: "Subscriber", cell: (s) => h("div", {}, mono(s.subscription_id), h("div", { class: "dim wrap" }, s.url)) },
  { title: "State", cell: (s) => pill(s.status) },
  { title: "Success", num: true, cell: (s) => h("span", { title: `${s.delivered} delivered of ${s.delivered + s.failed + s.dead} settled sends` }, pct(s.success_rate)) },
  { title: "In flight", num: true, cell: (s) => `${s.in_flight}${s.in_flight_more ? "+" : ""}${s.retrying ? ` (${s.retrying} retrying)` : ""}` },
  { title: "Dead letters", num: true, cell: (s) => deadCount(s) },
  { title: "Last success", cell: (s) => (s.last_success_at ? ago(s.last_success_at) : null) },
  {
    title: "Last error",
    cell: (s) => (s.last_error ? h("div", {}, s.last_error.error, " ", h("span", { class: "dim" }, "on "), eventLink(s.last_error.event_id), h("div", { class: "dim" }, relative(s.last_error.at))) : null),
  },
];

function deadCount(s) {
  if (!s || !s.dead_letters) return "0";
  const text = `${s.dead_letters}${s.dead_letters_more ? "+" : ""}`;
  return h("a", { href: `#/dead-letters?subscription_id=${encodeURIComponent(s.subscription_id)}`, "aria-label": `${text} dead letters` }, h("span", { class: "pill bad" }, text));
}

function card(label, value, note, tone) {
  return h("div", { class: `card ${tone || ""}` }, h("div", { class: "label" }, label), h("div", { class: "value" }, value), note ? h("div", { class: "note" }, note) : null);
}

function resolvedBar(by, total) {
  const colors = { webhook: "#2da44e", poll: "#d4a72c", deadline: "#cf222e" };
  return h(
    "div",
    { class: "bar", role: "img", "aria-label": Object.entries(by).map(([k, n]) => `${k} ${n}`).join(", ") || "none" },
    Object.entries(by).map(([k, n]) => h("span", { style: null, "data-w": n / Math.max(1, total), "data-c": colors[k] || "#8a939d" })),
  );
}

// Widths and colours are set from script (a CSP without 'unsafe-inline' blocks style="…").
function paintBars(root) {
  for (const s of root.querySelectorAll(".bar span")) {
    s.style.width = `${(Number(s.dataset.w) * 100).toFixed(2)}%`;
    s.style.background = s.dataset.c;
  }
}

async function overview() {
  const [stats, tasks, deliveries, health, models] = await Promise.all([
    get("/v1/stats"),
    get("/v1/videos", { limit: 10 }),
    get("/v1/deliveries", { limit: 10 }),
    get("/v1/health/subscribers", { limit: 20 }),
    FEATURES.has("health-deliveries") ? get("/v1/health/deliveries").catch((err) => ({ error: err })) : null,
  ]);
  const t = stats.tasks;
  const by = t.by_status;
  const sends = stats.sends.by_status;
  const terminal = (by.completed || 0) + (by.failed || 0);
  const resolved = t.by_resolved_by;
  const viaHook = terminal ? (resolved.webhook || 0) / terminal : null;
  const root = h(
    "div",
    { class: "stack" },
    head("Overview", "What the receiver holds right now; it follows the event stream and re-reads every few seconds."),
    h(
      "div",
      { class: "cards" },
      card("Tasks", t.total, `${t.open} open`),
      card("Completed", by.completed || 0, terminal ? `${pct((by.completed || 0) / terminal)} of finished` : null),
      card("Failed", by.failed || 0, null, by.failed ? "bad" : null),
      h(
        "div",
        { class: "card" },
        h("div", { class: "label" }, "Resolved by webhook"),
        h("div", { class: "value" }, pct(viaHook)),
        h("div", { class: "note" }, `webhook ${resolved.webhook || 0} · poll ${resolved.poll || 0} · deadline ${resolved.deadline || 0}`),
        resolvedBar(resolved, terminal),
      ),
      card("Oldest open task", t.oldest_open_age_seconds === null ? "—" : span(t.oldest_open_age_seconds), t.oldest_open_created_at ? `submitted ${relative(t.oldest_open_created_at)}` : "none open", t.oldest_open_age_seconds > 3600 ? "warn" : null),
      card("Sends pending", sends.pending || 0, `${sends.delivered || 0} delivered · ${sends.dead || 0} dead letters`, sends.dead ? "warn" : null),
    ),
    models ? panel("Delivery health per model", modelHealth(models), { id: "model-health", hint: "from /v1/health/deliveries" }) : null,
    h(
      "div",
      { class: "grid two" },
      panel("Recent tasks", h("div", {}, table(TASK_COLUMNS, tasks.data, { empty: "No tasks yet. Submit one with POST /v1/videos.", label: "Recent tasks" })), { hint: link("#/tasks", "All tasks →"), id: "recent-tasks" }),
      panel("Tasks by state", stateTable(t.by_state), { hint: "status × resolved_by", id: "by-state" }),
    ),
    h(
      "div",
      { class: "grid two" },
      panel("Recent deliveries", table(DELIVERY_COLUMNS, deliveries.data, { empty: "No deliveries yet.", label: "Recent deliveries" }), { hint: link("#/deliveries", "All deliveries →"), id: "recent-deliveries" }),
      panel("Live events", liveFeed(), { hint: "from /v1/events/stream", id: "live-events" }),
    ),
    panel("Fan-out health", table(HEALTH_COLUMNS, health.data.map((s) => ({ ...s, id: s.subscription_id })), { empty: "No subscriptions. Add one under Subscriptions.", label: "Fan-out health per subscriber", caption: `Over the sends of the newest ${health.data[0]?.window_events ?? 0} events; dead letters: all.` }), { hint: link("#/subscriptions", "Manage →"), id: "fanout-health" }),
    stats.retention ? panel("Retention", retentionView(stats.retention), { hint: "from /v1/stats", id: "retention" }) : null,
  );
  paintBars(root);
  return root;
}

// What is kept and for how long, and the last pruning pass in the fleet.
function retentionView(r) {
  const kept = (seconds) => (seconds ? span(seconds) : "forever");
  const last = r.last_prune;
  const pruned = Object.entries(last.pruned || {}).map(([table, rows]) => ({ id: table, table, rows }));
  return h(
    "div",
    { class: "grid two" },
    kv([
      ["Bodies, events, sends", `${kept(r.retention_seconds)} after a task ends`],
      ["Tasks and dedupe keys", `${kept(r.task_retention_seconds)} after a task ends`],
      ["Kept files", `${kept(r.media_retention_seconds)} after they were kept`],
      ["Last prune", last.last_run_at ? ago(last.last_run_at) : "not yet"],
      ["Took", last.last_duration_seconds === null ? null : `${last.last_duration_seconds} s`],
    ]),
    table(
      [
        { title: "Table", cell: (x) => mono(x.table) },
        { title: "Rows pruned", num: true, cell: (x) => x.rows },
      ],
      pruned,
      { empty: last.last_run_at ? "The last pass found nothing to prune." : `A pass runs every ${span(r.prune_interval_seconds)}.`, label: "Rows pruned by the last pass" },
    ),
  );
}

function stateTable(rows) {
  const statuses = ["queued", "in_progress", "completed", "failed"];
  for (const r of rows) if (!statuses.includes(r.status)) statuses.push(r.status);
  const kinds = ["webhook", "poll", "deadline", null];
  const count = (s, k) => rows.filter((r) => r.status === s && r.resolved_by === k).reduce((n, r) => n + r.count, 0);
  return h(
    "table",
    { "aria-label": "Tasks by status and resolved_by" },
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Status"), kinds.map((k) => h("th", { scope: "col", class: "num" }, k ?? "unresolved")), h("th", { scope: "col", class: "num" }, "All"))),
    h(
      "tbody",
      {},
      statuses.map((s) =>
        h("tr", {}, h("th", { scope: "row" }, pill(s)), kinds.map((k) => h("td", { class: "num" }, count(s, k) || h("span", { class: "dim" }, "0"))), h("td", { class: "num" }, rows.filter((r) => r.status === s).reduce((n, r) => n + r.count, 0))),
      ),
    ),
  );
}

function liveFeed() {
  if (!feed.length) return h("p", { class: "empty" }, "Waiting for the next terminal result…");
  return h(
    "ul",
    { class: "feed", "aria-label": "Events received on the stream" },
    feed.map((e) => h("li", {}, pill(e.type === "video.failed" ? "failed" : "completed"), eventLink(e.id), h("span", { class: "dim" }, "for"), videoLink(e.video), h("span", { class: "when" }, relative(e.at)))),
  );
}

// Issue 10's per-model delivery health: is the provider delivering, or stopped since when?
function modelHealth(answer) {
  if (answer.error) return h("p", { class: "empty" }, `Unavailable: ${answer.error.message}`);
  const rows = Array.isArray(answer.data) ? answer.data : [];
  if (!rows.length) return h("p", { class: "empty" }, "No model seen lately: one appears once its tasks are submitted or polled.");
  const num = (v, digits = 0) => (typeof v === "number" ? v.toFixed(digits) : null);
  const columns = [
    { title: "Model", cell: (m) => m.model },
    { title: "Deliveries", cell: (m) => pill(m.state, { arriving: "ok", stopped: "bad" }[m.state] || "idle") },
    { title: "Since", cell: (m) => (m.since ? ago(m.since) : null) },
    { title: "Arrived / missed", num: true, cell: (m) => (m.evidence ? `${m.evidence.delivered ?? 0} / ${m.evidence.missed ?? 0}` : null) },
    { title: "Overdue now", num: true, cell: (m) => num(m.evidence?.overdue, 1) },
    { title: "Expected since last", num: true, cell: (m) => num(m.evidence?.expected_since_last_delivery, 1) },
    { title: "Last delivery", cell: (m) => (m.evidence?.last_delivery_at ? ago(m.evidence.last_delivery_at) : null) },
    { title: "Checked", cell: (m) => (m.checked_at ? ago(m.checked_at) : null) },
  ];
  return table(columns, rows.map((m) => ({ ...m, id: m.model })), {
    label: "Delivery health per model",
    caption: "Arrived / missed: of each model's latest settled tasks, those whose delivery came and those a poll found finished without one.",
  });
}

// ---------------------------------------------------------------------------------------------
// Lists

async function tasksList(query) {
  const status = query.get("status") || "";
  const page = await get("/v1/videos", { status, limit: pageSize(query), after: query.get("after") });
  const select = h(
    "select",
    { id: "status-filter", "data-focus": "status-filter" },
    ["", "queued", "in_progress", "completed", "failed"].map((s) => h("option", { value: s, selected: s === status }, s || "any status")),
  );
  select.addEventListener("change", () => {
    location.hash = `#/tasks${select.value ? `?status=${select.value}` : ""}`;
  });
  return h(
    "div",
    { class: "stack" },
    head("Tasks", "Every task the receiver submitted, newest first.", h("div", { class: "row" }, h("label", { for: "status-filter" }, "Status"), select)),
    panel("Tasks", h("div", {}, table(TASK_COLUMNS, page.data, { empty: "No tasks match.", label: "Tasks" }), pager(current, page, "tasks")), { id: "tasks" }),
  );
}

async function deliveriesList(query) {
  const videoId = query.get("video_id") || "";
  const page = await get("/v1/deliveries", { video_id: videoId, limit: pageSize(query), after: query.get("after") });
  return h(
    "div",
    { class: "stack" },
    head("Deliveries", videoId ? `Inbound deliveries for ${videoId}.` : "Every inbound delivery the receiver stored, newest first."),
    panel("Deliveries", h("div", {}, table(DELIVERY_COLUMNS, page.data, { empty: "No deliveries.", label: "Deliveries" }), pager(current, page, "deliveries")), { id: "deliveries" }),
  );
}

async function eventsList(query) {
  const page = await get("/v1/events", { video_id: query.get("video_id"), type: query.get("type"), limit: pageSize(query), after: query.get("after") });
  const columns = [
    { title: "Event", cell: (e) => eventLink(e.id) },
    { title: "Type", cell: (e) => pill(e.type === "video.failed" ? "failed" : "completed") },
    { title: "Video", cell: (e) => videoLink(e.data?.id) },
    { title: "Created", cell: (e) => ago(e.created_at) },
  ];
  return h(
    "div",
    { class: "stack" },
    head("Events", "One event per terminal result, fanned out to subscribers."),
    panel("Events", h("div", {}, table(columns, page.data, { empty: "No events yet.", label: "Events" }), pager(current, page, "events")), { id: "events" }),
  );
}

// ---------------------------------------------------------------------------------------------
// One task: its video, files, deliveries, polls, event and every attempt per subscriber.

async function taskView(videoId) {
  const [video, deliveries, events] = await Promise.all([
    get(`/v1/videos/${encodeURIComponent(videoId)}`),
    get("/v1/deliveries", { video_id: videoId, limit: 100 }),
    get("/v1/events", { video_id: videoId, limit: 10 }),
  ]);
  const details = await Promise.all(events.data.map((e) => get(`/v1/events/${encodeURIComponent(e.id)}`)));
  const r = video.receiver || {};
  const root = h(
    "div",
    { class: "stack", "data-video": video.id },
    head(h("span", {}, "Task ", mono(video.id)), video.prompt ? `“${video.prompt}”` : null, h("div", { class: "row" }, pill(video.status), r.resolved_by ? pill(r.resolved_by) : null)),
    h(
      "div",
      { class: "grid two" },
      panel(
        "Receiver",
        kv([
          ["Status", pill(video.status)],
          ["Model", video.model],
          ["Resolved by", r.resolved_by],
          ["Deliveries", `${r.deliveries ?? 0} (${r.duplicates ?? 0} duplicates)`],
          ["Polls", r.polls ?? 0],
          ["Anomalies", r.anomalies ?? 0],
          ["Submitted", ago(r.submitted_at)],
          ["Terminal at", r.terminal_at ? ago(r.terminal_at) : null],
          ["Next poll", r.next_poll_at ? ago(r.next_poll_at) : null],
          ["Error", video.error ? `${video.error.code}: ${video.error.message}` : null],
        ]),
        { id: "task-receiver" },
      ),
      panel("Files", filesView(video), { id: "task-files" }),
    ),
    panel(`Deliveries (${deliveries.data.length}${deliveries.has_more ? "+" : ""})`, deliveries.data.length ? h("div", {}, deliveries.data.map((d) => deliveryDetails(d))) : h("p", { class: "empty" }, r.polls ? "No delivery arrived; the result came by polling." : "No delivery yet."), { id: "task-deliveries", hint: deliveries.has_more ? link(`#/deliveries?video_id=${encodeURIComponent(video.id)}`, "All deliveries →") : null }),
    details.length ? details.map((e) => eventPanel(e)) : panel("Event", h("p", { class: "empty" }, "No event yet: one is recorded when the task reaches its terminal result."), { id: "task-event" }),
    panel("Video object", h("div", { class: "body" }, json(video)), { id: "task-video" }),
  );
  return root;
}

// Issue 11's kept result files (receiver.files: variant, status, size, sha256, content_type,
// error, kept_at); without them, the provider's own links, which expire.
function filesView(video) {
  const files = video.receiver?.files;
  const content = video.content || {};
  const body = h("div", { class: "body" });
  const urls = Object.entries(content).filter(([, v]) => typeof v === "string");
  if (Array.isArray(files) && (files.length || FEATURES.has("video-content"))) {
    const contentUrl = (variant) => `/v1/videos/${encodeURIComponent(video.id)}/content?variant=${encodeURIComponent(variant)}`;
    const kept = (f) => f.status === "kept" && FEATURES.has("video-content");
    body.append(
      table(
        [
          { title: "File", cell: (f) => h("div", {}, f.variant, f.content_type ? h("div", { class: "dim" }, f.content_type) : null) },
          { title: "State", cell: (f) => h("div", {}, pill(f.status), f.error ? h("div", { class: "dim wrap" }, f.error) : null) },
          { title: "Size", num: true, cell: (f) => (typeof f.size === "number" ? h("span", { title: f.sha256 ? `SHA-256 ${f.sha256}` : null }, bytes(f.size)) : null) },
          { title: "Action", cell: (f) => (kept(f) ? downloadButton(contentUrl(f.variant), `${video.id}-${f.variant}`) : null) },
        ],
        files.map((f) => ({ ...f, id: f.variant })),
        { empty: video.status === "completed" ? "The result named no files." : "Files are kept when the task completes.", label: "Result files" },
      ),
    );
    const video_ = files.find((f) => f.variant === "video" && kept(f));
    if (video_ && /^video\//.test(video_.content_type || "video/")) body.append(player(contentUrl("video")));
    const frame = files.find((f) => f.variant === "last_frame" && kept(f));
    if (frame && !AUTH_REQUIRED && /^image\//.test(frame.content_type || "")) body.append(h("img", { src: contentUrl("last_frame"), alt: "The video's last frame", class: "frame", "data-keep": `img:${video.id}` }));
    return body;
  }
  body.append(
    urls.length
      ? kv(urls.map(([k, v]) => [k, h("a", { href: v, rel: "noreferrer noopener", target: "_blank", class: "wrap" }, v)]))
      : h("p", { class: "dim" }, "No result URLs yet."),
    h("p", { class: "dim" }, "This receiver does not keep result files: these are the provider's links, which expire."),
  );
  return body;
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}

// A kept file is fetched with the key (a <video src> cannot carry a header) unless the API is open.
async function fetchBlob(url) {
  const response = await fetch(url, { headers: await authHeaders(), cache: "no-store" });
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  return URL.createObjectURL(await response.blob());
}

const blobs = new Map(); // content URL -> object URL of a file fetched with the key

function player(url) {
  const wrap = h("div", { class: "result-video" });
  const video = (src) => h("video", { controls: true, preload: "metadata", src, "data-keep": `video:${url}` });
  if (!AUTH_REQUIRED) {
    wrap.append(video(url));
    return wrap;
  }
  if (blobs.has(url)) {
    wrap.append(video(blobs.get(url)));
    return wrap;
  }
  const [button, out] = actionButton("Load video", `play:${url}`, async () => {
    const src = await fetchBlob(url);
    blobs.set(url, src);
    wrap.replaceChildren(video(src));
    return "Loaded.";
  });
  wrap.append(button, out);
  return wrap;
}

function downloadButton(url, name) {
  if (!AUTH_REQUIRED) return h("a", { href: url, download: name, class: "button" }, "Download");
  const [button, out] = actionButton("Download", `dl:${url}`, async () => {
    const a = h("a", { href: await fetchBlob(url), download: name });
    a.click();
    return "Downloaded.";
  });
  return h("span", {}, button, out);
}

function deliveryDetails(d, { open = false } = {}) {
  const [replay, out] = actionButton(
    "Replay delivery",
    `replay:${d.id}`,
    async () => {
      const answer = await post(`/v1/deliveries/${encodeURIComponent(d.id)}/replay`);
      return `Replayed ${answer.id}: ${answer.replay_outcome} (outcome now ${answer.outcome}).`;
    },
    { describe: true },
  );
  const headers = Object.entries(d.headers || {});
  return h(
    "details",
    { class: "delivery", "data-key": `delivery:${d.id}`, open },
    h(
      "summary",
      {},
      mono(d.id),
      pill(d.outcome),
      h("span", {}, d.event_type || d.status || ""),
      h("span", { class: "dim" }, `verified by ${d.verified_by}`),
      d.repeats ? h("span", { class: "dim" }, `${d.repeats} repeat${d.repeats > 1 ? "s" : ""}`) : null,
      h("span", { class: "spacer" }),
      ago(d.received_at),
    ),
    h(
      "div",
      { class: "inner" },
      h(
        "div",
        {},
        kv([
          ["Video", videoLink(d.video_id)],
          ["Route", d.route === "task" ? "per-task URL" : "workspace URL"],
          ["Verified by", d.verified_by],
          ["Dedupe key", mono(d.dedupe_key)],
          ["Outcome", pill(d.outcome)],
          ["Received", ago(d.received_at)],
          ["Last copy", ago(d.last_seen_at)],
        ]),
        h("div", { class: "row", style: null }, d.body_encoding === "pruned" ? null : replay),
        out,
      ),
      h(
        "div",
        {},
        h("h3", {}, "Headers (credentials redacted)"),
        table([{ title: "Name", cell: (x) => mono(x[0]) }, { title: "Value", cls: "wrap", cell: (x) => mono(x[1]) }], headers.map((x) => Object.assign(x, { id: x[0] })), { empty: "No headers.", label: `Headers of ${d.id}` }),
        h("h3", {}, d.body_encoding === "base64" ? "Body (base64)" : "Body"),
        d.body_encoding === "pruned"
          ? h("p", { class: "dim" }, "Pruned: its retention ended. The delivery and its dedupe key are kept; a copy is still a duplicate.")
          : d.body_encoding === "base64"
            ? h("pre", {}, d.body)
            : json(d.body),
      ),
    ),
  );
}

function eventPanel(e, { title } = {}) {
  const columns = [
    { title: "Subscriber", cell: (s) => mono(s.subscription_id) },
    { title: "Send", cell: (s) => h("div", {}, pill(s.status), s.replay_id ? h("div", { class: "dim" }, `replay ${s.replay_id}`) : null) },
    { title: "Attempts", num: true, cell: (s) => s.attempts },
    { title: "Last answer", cell: (s) => s.last_error || (s.last_status ? `HTTP ${s.last_status}` : null) },
    { title: "Next attempt", cell: (s) => (s.next_attempt_at ? ago(s.next_attempt_at) : null) },
    {
      title: "Every attempt",
      cell: (s) =>
        s.attempt_log.length
          ? h(
              "table",
              { class: "attempts", "aria-label": `Attempts of ${s.id}` },
              h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "At"), h("th", { scope: "col" }, "HTTP"), h("th", { scope: "col", class: "num" }, "ms"), h("th", { scope: "col" }, "Error"))),
              h("tbody", {}, s.attempt_log.map((a) => h("tr", {}, h("td", {}, ago(a.at)), h("td", {}, a.status === null ? dash(null) : pill(String(a.status), a.status >= 200 && a.status < 300 ? "ok" : "bad")), h("td", { class: "num" }, a.latency_ms), h("td", {}, dash(a.error))))),
            )
          : null,
    },
  ];
  const subscribers = [...new Set(e.sends.map((s) => s.subscription_id))];
  const target = h(
    "select",
    { id: `replay-target-${e.id}`, "data-focus": `replay-target-${e.id}` },
    h("option", { value: "" }, "every matching subscriber"),
    subscribers.map((s) => h("option", { value: s }, s)),
  );
  const [replay, out] = actionButton(
    "Replay event",
    `replay-event:${e.id}`,
    async () => {
      const body = { event_ids: [e.id] };
      if (target.value) body.subscription_id = target.value;
      const answer = await post("/v1/events/replay", body);
      if (!answer.sends) return `Replay ${answer.id}: no subscriber matches this event now.`;
      const progress = await waitReplay(answer.id);
      return `Replay ${answer.id}: ${answer.sends} send${answer.sends > 1 ? "s" : ""} queued; ${Object.entries(progress.by_status).map(([k, n]) => `${n} ${k}`).join(", ")}${progress.done ? "" : " (still going)"}.`;
    },
    { describe: true },
  );
  return panel(
    title || h("span", {}, "Event ", mono(e.id), " ", pill(e.type === "video.failed" ? "failed" : "completed")),
    h(
      "div",
      {},
      h(
        "div",
        { class: "body" },
        h("div", { class: "row" }, h("label", { for: target.id }, "Replay to"), target, replay, h("span", { class: "dim" }, `created ${relative(e.created_at)}; sent under webhook-id ${e.id}`)),
        out,
      ),
      table(columns, e.sends, { empty: "No subscriber matched this event.", label: `Sends of ${e.id}` }),
    ),
    { id: `event-${e.id}` },
  );
}

// A replay's progress for a few seconds: its sends usually settle at once on a healthy subscriber.
async function waitReplay(id) {
  const deadline = Date.now() + 8000;
  let progress = await get(`/v1/replays/${encodeURIComponent(id)}`);
  while (!progress.done && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 400));
    progress = await get(`/v1/replays/${encodeURIComponent(id)}`);
  }
  return progress;
}

async function deliveryView(id) {
  const d = await get(`/v1/deliveries/${encodeURIComponent(id)}`);
  return h(
    "div",
    { class: "stack" },
    head(h("span", {}, "Delivery ", mono(d.id)), d.video_id ? h("span", {}, "For ", videoLink(d.video_id)) : "Not matched to a task."),
    panel("Delivery", deliveryDetails(d, { open: true }), { id: "delivery" }),
  );
}

async function eventView(id) {
  const e = await get(`/v1/events/${encodeURIComponent(id)}`);
  return h(
    "div",
    { class: "stack" },
    head(h("span", {}, "Event ", mono(e.id)), h("span", {}, `${e.type} for `, videoLink(e.data?.id))),
    eventPanel(e, { title: "Sends and attempts" }),
    panel("Event body", h("div", { class: "body" }, json({ id: e.id, object: e.object, type: e.type, created_at: e.created_at, data: e.data })), { id: "event-body" }),
  );
}

// Sends that exhausted every retry: each can be sent again, under its own event id.
async function deadLettersView(query) {
  const subscription = query.get("subscription_id") || "";
  const page = await get("/v1/dead-letters", { subscription_id: subscription, limit: pageSize(query), after: query.get("after") });
  const columns = [
    { title: "Send", cell: (s) => mono(s.id) },
    { title: "Event", cell: (s) => eventLink(s.event_id) },
    { title: "Video", cell: (s) => videoLink(s.video_id) },
    { title: "Subscriber", cell: (s) => mono(s.subscription_id) },
    { title: "Attempts", num: true, cell: (s) => s.attempts },
    { title: "Last answer", cell: (s) => s.last_error || (s.last_status ? `HTTP ${s.last_status}` : null) },
    { title: "Dead since", cell: (s) => ago(s.settled_at) },
    {
      title: "Action",
      cell: (s) => {
        const [button, out] = actionButton(
          "Send again",
          `resend:${s.id}`,
          async () => {
            const answer = await post("/v1/events/replay", { event_ids: [s.event_id], subscription_id: s.subscription_id });
            return `Replay ${answer.id}: ${answer.sends} send queued.`;
          },
          { describe: true },
        );
        return h("div", {}, button, out);
      },
    },
  ];
  return h(
    "div",
    { class: "stack" },
    head("Dead letters", subscription ? h("span", {}, "Sends to ", mono(subscription), " that exhausted every retry.") : "Sends that exhausted every retry, newest first."),
    panel("Dead letters", h("div", {}, table(columns, page.data, { empty: "No dead letters.", label: "Dead letters" }), pager(current, page, "dead-letters")), { id: "dead-letters" }),
  );
}

// ---------------------------------------------------------------------------------------------
// Subscriptions

async function subscriptionsView(query) {
  const [page, health] = await Promise.all([
    get("/v1/subscriptions", { limit: pageSize(query), after: query.get("after") }),
    get("/v1/health/subscribers", { limit: pageSize(query), after: query.get("after") }),
  ]);
  const stats = new Map(health.data.map((s) => [s.subscription_id, s]));
  const columns = [
    { title: "Subscription", cell: (s) => h("div", {}, mono(s.id), h("div", { class: "dim wrap" }, s.url)) },
    { title: "Events", cell: (s) => (s.events ? s.events.join(", ") : "all") },
    { title: "State", cell: (s) => h("div", {}, pill(s.status), s.disabled_reason ? h("div", { class: "dim" }, s.disabled_reason) : null) },
    { title: "Success", num: true, cell: (s) => pct(stats.get(s.id)?.success_rate) },
    { title: "In flight", num: true, cell: (s) => stats.get(s.id)?.in_flight ?? null },
    { title: "Dead letters", num: true, cell: (s) => deadCount(stats.get(s.id)) },
    { title: "Created", cell: (s) => ago(s.created_at) },
    { title: "Actions", cell: (s) => subscriptionActions(s) },
  ];
  const secret = results.get("new-secret");
  return h(
    "div",
    { class: "stack" },
    head("Subscriptions", "Downstream services that get every terminal result, signed with Standard Webhooks."),
    panel("New subscription", h("div", {}, createForm(), secret ? secretBox(secret) : null), { id: "new-subscription" }),
    panel("Subscriptions", h("div", {}, table(columns, page.data, { empty: "No subscriptions yet.", label: "Subscriptions" }), pager(current, page, "subscriptions")), { id: "subscriptions" }),
  );
}

function secretBox(secret) {
  const dismiss = h("button", { type: "button", "data-focus": "dismiss-secret" }, "I have stored it");
  dismiss.addEventListener("click", () => {
    results.delete("new-secret");
    render();
  });
  return h(
    "div",
    { class: "secret-box", role: "status", id: "new-secret" },
    h("strong", {}, `Signing secret of ${secret.id}`),
    " — shown once here; it signs every event sent to this subscriber.",
    h("code", {}, secret.secret),
    h("div", { class: "row" }, dismiss),
  );
}

function createForm() {
  const url = h("input", { id: "sub-url", name: "url", type: "url", required: true, placeholder: "https://hooks.example.com/videos", "data-focus": "sub-url" });
  const completed = h("input", { type: "checkbox", name: "completed", checked: true, id: "sub-completed" });
  const failed = h("input", { type: "checkbox", name: "failed", checked: true, id: "sub-failed" });
  const error = h("p", { class: "form-error", role: "alert" });
  const form = h(
    "form",
    { class: "inline", "aria-label": "Create a subscription" },
    h("div", { class: "field grow" }, h("label", { for: "sub-url" }, "Endpoint URL"), url),
    h("fieldset", {}, h("legend", {}, "Events"), h("label", {}, completed, "video.completed"), h("label", {}, failed, "video.failed")),
    h("button", { type: "submit", class: "primary" }, "Create subscription"),
    error,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const events = [completed.checked && "video.completed", failed.checked && "video.failed"].filter(Boolean);
    if (!events.length) {
      error.textContent = "Choose at least one event type.";
      return;
    }
    try {
      const created = await post("/v1/subscriptions", { url: url.value.trim(), events });
      results.set("new-secret", { id: created.id, secret: created.secret });
      url.blur();
      await render();
      document.querySelector("#new-secret button")?.focus();
    } catch (err) {
      error.textContent = err.message;
    }
  });
  return form;
}

function subscriptionActions(s) {
  const cell = h("div", { class: "row" });
  const act = (label, path, method, cls) => {
    const armKey = `armed:${s.id}`;
    const armed = cls === "danger" && results.has(armKey);
    const button = h("button", { type: "button", class: armed ? `${cls} armed` : cls, "data-focus": `${label}:${s.id}` }, armed ? "Confirm delete" : label);
    button.addEventListener("click", async () => {
      // Deleting takes a second press (kept across refreshes), not a dialog.
      if (cls === "danger" && !results.has(armKey)) {
        results.set(armKey, { text: "", tone: "" });
        button.classList.add("armed");
        button.textContent = "Confirm delete";
        return;
      }
      results.delete(armKey);
      button.disabled = true;
      try {
        await api(method, path);
        results.delete(`sub:${s.id}`);
      } catch (err) {
        results.set(`sub:${s.id}`, { text: err.message, tone: "bad" });
      }
      render();
    });
    return button;
  };
  const base = `/v1/subscriptions/${encodeURIComponent(s.id)}`;
  if (s.status === "active") cell.append(act("Pause", `${base}/pause`, "POST"));
  if (s.status === "paused" || s.status === "disabled") cell.append(act("Resume", `${base}/resume`, "POST"));
  cell.append(act("Delete", base, "DELETE", "danger"));
  const kept = results.get(`sub:${s.id}`);
  return h("div", {}, cell, kept ? h("div", { class: `result ${kept.tone}`, role: "status" }, kept.text) : null);
}

// ---------------------------------------------------------------------------------------------
// Search: the id's prefix says what it names; anything else is taken as a video id.

function search(event) {
  event.preventDefault();
  const input = document.getElementById("search-input");
  const id = input.value.trim();
  if (!id) return;
  const kind = id.startsWith("dlv_") ? "deliveries" : id.startsWith("evt_") ? "events" : "tasks";
  location.hash = `#/${kind}/${encodeURIComponent(id)}`;
  input.value = "";
}

// ---------------------------------------------------------------------------------------------

function start() {
  document.getElementById("search").addEventListener("submit", search);
  document.getElementById("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_SLOT);
    location.reload();
  });
  showKeyButton();
  window.addEventListener("hashchange", navigate);
  document.addEventListener("visibilitychange", () => document.visibilityState === "visible" && scheduleRefresh(0));
  navigate();
  refreshTimer = setTimeout(refresh, REFRESH_MS);
  follow();
}

start();
