// sluice status page: polls the admin JSON API (the one `sluice status` reads), keeps the last
// minutes of samples in memory, and draws tables and SVG charts from them. Every change is a POST
// with the token the user typed (kept in this tab's sessionStorage); without it the page only reads.
// After each render the document gets a "sluice:render" event (tests and extensions can await it).
"use strict";

(() => {
  const API = "/api/v1";
  const params = new URLSearchParams(location.search);
  const clamp = (x, lo, hi, dflt) => (Number.isFinite(x) ? Math.min(hi, Math.max(lo, x)) : dflt);
  const REFRESH_MS = clamp(Number(params.get("refresh")) * 1000 || NaN, 200, 60000, 1000);
  const WINDOW_S = clamp(Number(params.get("window")) || NaN, 30, 3600, 300);
  const MAX_SAMPLES = Math.ceil((WINDOW_S * 1000) / REFRESH_MS) + 2;
  const MAX_EVENTS = 200;
  const TOKEN_KEY = "sluice.token";
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"];
  const SVG_NS = "http://www.w3.org/2000/svg";
  const ACTION_TITLES = {
    drain: "drain: no new flows; established ones continue up to drain_timeout",
    undrain: "undrain: back to active",
    maintenance: "maintenance: no new flows; established ones end at drain_timeout",
    weight: "set the runtime weight (0..65535); a reload that changes it in the file wins",
  };

  /** @type {{t: number, vips: any[]}[]} oldest first, at most MAX_SAMPLES */
  const samples = [];
  const events = [];
  let token = sessionStorage.getItem(TOKEN_KEY) || "";

  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------ formatting (as `sluice status`)

  function humanBytes(n) {
    const units = ["B", "KiB", "MiB", "GiB"];
    for (const unit of units) {
      if (n < 1024) return unit === "B" ? `${n.toFixed(0)} ${unit}` : `${n.toFixed(1)} ${unit}`;
      n /= 1024;
    }
    return `${n.toFixed(1)} TiB`;
  }
  const rateText = (r) => (r === null ? "-" : r.toFixed(1));
  const bytesRateText = (r) => (r === null ? "-" : `${humanBytes(r)}/s`);
  const sum = (obj) => Object.values(obj || {}).reduce((a, b) => a + b, 0);

  function duration(s) {
    if (s < 60) return `${Math.floor(s)}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m${String(Math.floor(s % 60)).padStart(2, "0")}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
    return `${Math.floor(s / 86400)}d${Math.floor((s % 86400) / 3600)}h`;
  }
  const clock = (t) => new Date(t).toLocaleTimeString([], { hour12: false });

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const c of children) node.append(c);
    return node;
  }
  function svg(tag, attrs = {}) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    return node;
  }
  function setCell(cell, text, value) {
    if (cell.textContent !== text) cell.textContent = text;
    if (value !== undefined) cell.dataset.value = String(value);
  }

  // ------------------------------------------------------------ samples and rates

  const keyOf = (vip, b) => `${vip}\u0000${b}`;

  function indexSample(sample) {
    sample.vipByName = new Map(sample.vips.map((v) => [v.name, v]));
    sample.backendByKey = new Map();
    for (const v of sample.vips) for (const b of v.backends) sample.backendByKey.set(keyOf(v.name, b.address), b);
    return sample;
  }

  /** per-second increase of field between two objects, null without a previous one */
  function rate(now, before, field, dt) {
    if (!before || !(dt > 0)) return null;
    return Math.max(0, now[field] - before[field]) / dt;
  }

  /** [{t, v}] of the rate of `pick(sample)` over the kept samples (pick returns a number or undefined) */
  function series(pick) {
    const out = [];
    for (let i = 1; i < samples.length; i++) {
      const a = pick(samples[i - 1]);
      const b = pick(samples[i]);
      const dt = (samples[i].t - samples[i - 1].t) / 1000;
      if (a === undefined || b === undefined || !(dt > 0)) continue;
      out.push({ t: samples[i].t, v: Math.max(0, b - a) / dt });
    }
    return out;
  }

  function recordTransitions(now, before) {
    if (!before) return;
    for (const [key, b] of now.backendByKey) {
      const old = before.backendByKey.get(key);
      if (old && old.state !== b.state) {
        events.unshift({ t: now.t, vip: key.split("\u0000")[0], backend: b.address, from: old.state, to: b.state });
      }
    }
    events.length = Math.min(events.length, MAX_EVENTS);
  }

  // ------------------------------------------------------------ charts (inline SVG)

  const W = 600, H = 140, PAD_L = 58, PAD_R = 8, PAD_T = 8, PAD_B = 18;

  /** the charts' time span (ms): the kept samples, at least 30 s, at most the window */
  function span(now) {
    const first = samples.length ? samples[0].t : now;
    return Math.min(WINDOW_S * 1000, Math.max(30000, now - first));
  }

  function frame(chart, now, yMax, yLabel) {
    chart.replaceChildren();
    chart.setAttribute("viewBox", `0 0 ${W} ${H}`);
    chart.setAttribute("preserveAspectRatio", "none");
    chart.append(svg("line", { class: "axis", x1: PAD_L, y1: H - PAD_B, x2: W - PAD_R, y2: H - PAD_B }));
    chart.append(svg("line", { class: "axis", x1: PAD_L, y1: PAD_T, x2: PAD_L, y2: H - PAD_B }));
    const label = (x, y, text, anchor) => {
      const t = svg("text", { x, y, "text-anchor": anchor });
      t.textContent = text;
      chart.append(t);
    };
    if (yLabel !== null) {
      label(PAD_L - 4, PAD_T + 8, yLabel(yMax), "end");
      label(PAD_L - 4, H - PAD_B, "0", "end");
    }
    const ms = span(now);
    label(PAD_L, H - 4, `-${duration(ms / 1000)}`, "start");
    label(W - PAD_R, H - 4, "now", "end");
    const x = (t) => PAD_L + ((t - (now - ms)) / ms) * (W - PAD_L - PAD_R);
    const y = (v) => H - PAD_B - (yMax > 0 ? v / yMax : 0) * (H - PAD_T - PAD_B);
    return { x, y };
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  function lineChart(chart, legend, lines, now, format) {
    const yMax = niceMax(Math.max(0, ...lines.flatMap((l) => l.points.map((p) => p.v))));
    const { x, y } = frame(chart, now, yMax, format);
    for (const line of lines) {
      if (line.points.length === 0) continue;
      const pts = line.points.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" ");
      chart.append(svg("polyline", { points: pts, stroke: line.color, "data-series": line.name }));
    }
    legend.replaceChildren(
      ...lines.map((l) => {
        const sw = el("span", { class: "sw" });
        sw.style.background = l.color;
        const last = l.points.length ? format(l.points[l.points.length - 1].v) : "-";
        return el("span", {}, sw, `${l.name} ${last}`);
      }),
    );
  }

  function healthChart(chart, legend, vipName, addresses, now) {
    const { x } = frame(chart, now, 0, null);
    const rowH = Math.max(4, Math.min(18, (H - PAD_T - PAD_B) / Math.max(1, addresses.length)));
    addresses.forEach((address, row) => {
      const key = keyOf(vipName, address);
      for (let i = 0; i < samples.length; i++) {
        const b = samples[i].backendByKey.get(key);
        if (!b) continue;
        const t0 = samples[i].t;
        const t1 = i + 1 < samples.length ? samples[i + 1].t : now;
        const x0 = Math.max(PAD_L, x(t0));
        const width = Math.max(0.5, x(t1) - x0);
        chart.append(
          svg("rect", { class: `s-${b.state}`, x: x0.toFixed(1), y: PAD_T + row * rowH, width: width.toFixed(1), height: rowH - 1 }),
        );
      }
    });
    legend.replaceChildren(
      ...addresses.map((a, i) => el("span", {}, `row ${i + 1}: ${a}`)),
      el("span", { class: "muted" }, "green up · amber falling · cyan rising · red down/ejected · purple draining · blue maintenance"),
    );
  }

  // ------------------------------------------------------------ DOM: one section per VIP, one row per backend

  const COLUMNS = [
    ["address", "backend", "addr"],
    ["state", "state", "state"],
    ["admin", "admin", ""],
    ["weight", "weight", "num"],
    ["effective_weight", "eff.", "num"],
    ["active", "active", "num"],
    ["flows_total", "flows", "num"],
    ["flows_rate", "flows/s", "num"],
    ["connect_errors", "conn err", "num"],
    ["bytes_to_backend", "bytes in", "num"],
    ["bytes_from_backend", "bytes out", "num"],
    ["in_rate", "in/s", "num"],
    ["out_rate", "out/s", "num"],
    ["last_check", "last check", "check"],
    ["since_s", "since", "num"],
  ];

  const sections = new Map(); // vip name -> {section, rows: Map(address -> row parts), ...}

  /** the middle chart: what says most about a VIP of this protocol and mode */
  function secondChart(vip) {
    const count = (v) => v.toFixed(1);
    if (vip.mode === "proxy" && vip.protocol === "tcp") {
      const lines = [["connect attempts", "connect_attempts"], ["established", "connect_ok"]];
      return { title: "connects vs established /s", lines, format: count };
    }
    if (vip.mode === "proxy") {
      const lines = [["to backends", "datagrams_to_backend"], ["from backends", "datagrams_from_backend"]];
      return { title: "datagrams/s to and from backends", lines, format: count };
    }
    const lines = [["to backends", "bytes_to_backend"], ["from backends", "bytes_from_backend"]];
    return { title: "bytes/s to backends (DSR: replies bypass sluice)", lines, format: (v) => `${humanBytes(v)}/s` };
  }

  function vipSection(vip) {
    let s = sections.get(vip.name);
    if (s) return s;
    const head = el("div", { class: "vip-head" });
    const reasons = el("div", { class: "reasons" });
    const tbody = el("tbody");
    const headRow = el("tr", {}, ...COLUMNS.map(([, title, cls]) => el("th", { class: cls === "num" ? "num" : "" }, title)));
    headRow.append(el("th", {}, "actions"));
    const table = el("div", { class: "scroll" }, el("table", {}, el("thead", {}, headRow), tbody));
    const mkChart = (caption) => {
      const chart = svg("svg", { class: "chart", role: "img", "aria-label": caption });
      const legend = el("div", { class: "legend" });
      return { fig: el("figure", {}, el("figcaption", {}, caption), chart, legend), chart, legend };
    };
    const flows = mkChart("new flows/s per backend");
    const connects = mkChart(secondChart(vip).title);
    const health = mkChart("health per backend");
    const title = el("h2", {}, vip.name);
    const section = el(
      "section",
      { class: "vip", "data-vip": vip.name },
      title,
      head,
      reasons,
      table,
      el("div", { class: "charts" }, flows.fig, connects.fig, health.fig),
    );
    $("vips").append(section);
    s = { section, head, reasons, tbody, rows: new Map(), flows, connects, health };
    sections.set(vip.name, s);
    return s;
  }

  function backendRow(s, vip, b) {
    let r = s.rows.get(b.address);
    if (r) return r;
    const tr = el("tr", { "data-vip": vip.name, "data-backend": b.address });
    const cells = {};
    for (const [field, , cls] of COLUMNS) {
      cells[field] = el("td", { class: cls, "data-field": field });
      tr.append(cells[field]);
    }
    const button = (action, label) =>
      el("button", { type: "button", "data-action": action, title: ACTION_TITLES[action] }, label);
    const weightInput = el("input", { type: "number", min: 0, max: 65535, step: 1, "data-input": "weight" });
    weightInput.setAttribute("aria-label", `weight of ${b.address}`);
    const actions = el(
      "td",
      { class: "actions" },
      button("drain", "drain"),
      " ",
      button("undrain", "undrain"),
      " ",
      button("maintenance", "maint."),
      " ",
      weightInput,
      button("weight", "set"),
    );
    actions.addEventListener("click", (ev) => {
      const action = ev.target instanceof HTMLButtonElement ? ev.target.dataset.action : undefined;
      if (!action) return;
      const body = action === "weight" ? { weight: Number(weightInput.value) } : undefined;
      if (action === "weight" && !(Number.isInteger(body.weight) && weightInput.value !== "")) {
        showMessage(`weight of ${b.address}: type a whole number 0..65535`, "error");
        return;
      }
      change(vip.name, b.address, action, body);
    });
    tr.append(actions);
    r = { tr, cells, weightInput, buttons: actions.querySelectorAll("button") };
    s.tbody.append(tr);
    s.rows.set(b.address, r);
    return r;
  }

  function kv(label, value, field) {
    return el("span", { class: "kv" }, `${label} `, el("b", { "data-field": field }, String(value)));
  }

  function renderVip(vip, before, dt, now) {
    const s = vipSection(vip);
    const prevVip = before ? before.vipByName.get(vip.name) : undefined;
    const refused = sum(vip.refused);
    const flowsRate = rate(vip, prevVip, "flows_total", dt);
    const head = [
      el("span", { class: "kv" }, `${vip.protocol}/${vip.listen}`),
      kv("mode", vip.mode, "mode"),
      kv("scheduler", vip.scheduler, "scheduler"),
      kv("active", vip.active, "active"),
      kv("flows", vip.flows_total, "flows_total"),
      kv("flows/s", rateText(flowsRate), "flows_rate"),
      kv("refused", refused, "refused"),
    ];
    if (vip.protocol === "udp") head.push(kv("sessions", vip.sessions, "sessions"));
    if (vip.rebalanced) head.push(kv("rebalanced", vip.rebalanced, "rebalanced"));
    if (vip.announced !== null && vip.announced !== undefined) head.push(kv("announced", vip.announced ? "yes" : "no", "announced"));
    s.head.replaceChildren(...head);

    const chips = [];
    for (const [reason, n] of Object.entries(vip.refused).sort()) {
      const r = rate(vip.refused, prevVip && prevVip.refused, reason, dt);
      chips.push(el("span", { class: "chip bad", "data-refused": reason, "data-value": n }, `refused ${reason}: ${n} (${rateText(r)}/s)`));
    }
    for (const [reason, n] of Object.entries(vip.closed).sort()) {
      chips.push(el("span", { class: "chip", "data-closed": reason, "data-value": n }, `closed ${reason}: ${n}`));
    }
    s.reasons.replaceChildren(...chips);

    const seen = new Set();
    for (const b of vip.backends) {
      seen.add(b.address);
      const r = backendRow(s, vip, b);
      const prev = before ? before.backendByKey.get(keyOf(vip.name, b.address)) : undefined;
      r.tr.className = `state-${b.state}`;
      r.tr.dataset.state = b.state;
      const c = r.cells;
      setCell(c.address, b.address);
      setCell(c.state, b.state + (b.suspect ? " (suspect)" : ""), b.state);
      setCell(c.admin, b.admin, b.admin);
      setCell(c.weight, String(b.weight), b.weight);
      setCell(c.effective_weight, String(b.effective_weight), b.effective_weight);
      setCell(c.active, String(b.active), b.active);
      setCell(c.flows_total, String(b.flows_total), b.flows_total);
      const fr = rate(b, prev, "flows_total", dt);
      setCell(c.flows_rate, rateText(fr), fr === null ? "" : fr);
      const errors = sum(b.connect_errors);
      setCell(c.connect_errors, String(errors), errors);
      c.connect_errors.title = Object.entries(b.connect_errors).map(([k, v]) => `${k}: ${v}`).join("\n") || "none";
      setCell(c.bytes_to_backend, humanBytes(b.bytes_to_backend), b.bytes_to_backend);
      setCell(c.bytes_from_backend, humanBytes(b.bytes_from_backend), b.bytes_from_backend);
      c.bytes_to_backend.title = `${b.bytes_to_backend} bytes, ${b.datagrams_to_backend} datagrams`;
      c.bytes_from_backend.title = `${b.bytes_from_backend} bytes, ${b.datagrams_from_backend} datagrams`;
      const ri = rate(b, prev, "bytes_to_backend", dt);
      const ro = rate(b, prev, "bytes_from_backend", dt);
      setCell(c.in_rate, bytesRateText(ri), ri === null ? "" : ri);
      setCell(c.out_rate, bytesRateText(ro), ro === null ? "" : ro);
      const latency = b.last_check_latency_s === null ? "" : ` (${(b.last_check_latency_s * 1000).toFixed(1)} ms)`;
      setCell(c.last_check, (b.last_check || "-") + latency, b.last_check || "");
      setCell(c.since_s, duration(b.since_s), b.since_s);
      if (document.activeElement !== r.weightInput) r.weightInput.value = String(b.weight);
    }
    for (const [address, r] of s.rows) {
      if (!seen.has(address)) {
        r.tr.remove();
        s.rows.delete(address);
      }
    }
    setButtons();

    const addresses = vip.backends.map((b) => b.address);
    const color = (i) => PALETTE[i % PALETTE.length];
    const backendField = (address, field) => (smp) => {
      const b = smp.backendByKey.get(keyOf(vip.name, address));
      return b ? b[field] : undefined;
    };
    lineChart(
      s.flows.chart,
      s.flows.legend,
      addresses.map((a, i) => ({ name: a, color: color(i), points: series(backendField(a, "flows_total")) })),
      now,
      (v) => v.toFixed(1),
    );
    const vipTotal = (field) => (smp) => {
      const v = smp.vipByName.get(vip.name);
      return v ? v.backends.reduce((acc, b) => acc + b[field], 0) : undefined;
    };
    const second = secondChart(vip);
    const pair = second.lines.map(([name, field], i) => ({ name, color: PALETTE[i], points: series(vipTotal(field)) }));
    lineChart(s.connects.chart, s.connects.legend, pair, now, second.format);
    healthChart(s.health.chart, s.health.legend, vip.name, addresses, now);
  }

  function renderEvents() {
    const list = $("transitions");
    list.replaceChildren(
      ...events.map((e) =>
        el(
          "li",
          { class: `to-${e.to}`, "data-backend": e.backend, "data-from": e.from, "data-to": e.to },
          `${clock(e.t)} ${e.vip} ${e.backend}: ${e.from} → ${e.to}`,
        ),
      ),
    );
    $("no-transitions").hidden = events.length > 0;
  }

  function render() {
    const now = samples[samples.length - 1];
    const before = samples.length > 1 ? samples[samples.length - 2] : undefined;
    const dt = before ? (now.t - before.t) / 1000 : 0;
    const names = new Set(now.vips.map((v) => v.name));
    for (const [name, s] of sections) {
      if (!names.has(name)) {
        s.section.remove();
        sections.delete(name);
      }
    }
    for (const vip of now.vips) renderVip(vip, before, dt, now.t);
    renderEvents();
    $("updated").textContent = `updated ${clock(now.t)}`;
  }

  // ------------------------------------------------------------ polling

  function setLink(state, text) {
    const link = $("link");
    link.dataset.link = state;
    link.textContent = text;
  }

  async function getJson(path) {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), Math.max(2000, REFRESH_MS));
    try {
      const r = await fetch(path, { cache: "no-store", headers: { Accept: "application/json" }, signal: ctrl.signal });
      const body = await r.json().catch(() => ({}));
      if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
      return body;
    } finally {
      clearTimeout(timer);
    }
  }

  let pollTimer = 0;
  async function poll() {
    clearTimeout(pollTimer);
    try {
      const body = await getJson(`${API}/vips`);
      const sample = indexSample({ t: Date.now(), vips: body.vips });
      recordTransitions(sample, samples[samples.length - 1]);
      samples.push(sample);
      if (samples.length > MAX_SAMPLES) samples.splice(0, samples.length - MAX_SAMPLES);
      render();
      setLink("live", "live");
    } catch (err) {
      setLink("error", `API unreachable: ${err.message}`);
    }
    document.dispatchEvent(new CustomEvent("sluice:render", { detail: { samples: samples.length } }));
    pollTimer = setTimeout(poll, REFRESH_MS);
  }

  // ------------------------------------------------------------ changes (need the token)

  function showMessage(text, kind) {
    const m = $("message");
    m.textContent = text;
    m.dataset.kind = kind;
    m.hidden = false;
  }

  function setButtons() {
    for (const s of sections.values()) {
      for (const r of s.rows.values()) {
        for (const b of r.buttons) {
          b.disabled = !token;
          b.title = token ? ACTION_TITLES[b.dataset.action] : "type the admin token first";
        }
        r.weightInput.disabled = !token;
      }
    }
    const mode = $("mode");
    mode.dataset.mode = token ? "token" : "read-only";
    mode.textContent = token ? "changes enabled" : "read-only";
  }

  async function change(vipName, address, action, body) {
    if (!token) {
      showMessage("type the admin token to make changes", "error");
      return;
    }
    const path = `${API}/vips/${encodeURIComponent(vipName)}/backends/${encodeURIComponent(address).replace(/%3A/gi, ":")}/${action}`;
    const headers = { Accept: "application/json", Authorization: `Bearer ${token}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    try {
      const r = await fetch(path, { method: "POST", headers, body: body === undefined ? undefined : JSON.stringify(body) });
      const answer = await r.json().catch(() => ({}));
      if (!r.ok) {
        const hint = r.status === 401 ? " (the token was refused)" : "";
        showMessage(`${action} ${address}: ${r.status} ${answer.error || r.statusText}${hint}`, "error");
      } else {
        const detail = action === "weight" ? ` → weight ${answer.weight}` : ` → ${answer.state}`;
        showMessage(`${action} ${vipName} ${address}: done${detail}`, "ok");
      }
    } catch (err) {
      showMessage(`${action} ${address}: ${err.message}`, "error");
    }
    poll();
  }

  function setupToken() {
    $("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      token = $("token").value.trim();
      $("token").value = "";
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
      setButtons();
      showMessage(token ? "token kept for this tab; changes enabled" : "no token: read-only", "ok");
    });
    $("token-forget").addEventListener("click", () => {
      token = "";
      sessionStorage.removeItem(TOKEN_KEY);
      setButtons();
      showMessage("token forgotten: read-only", "ok");
    });
    setButtons();
  }

  async function start() {
    $("refresh").textContent = `${REFRESH_MS / 1000}s`;
    $("window").textContent = duration(WINDOW_S);
    setupToken();
    getJson("/healthz")
      .then((h) => ($("version").textContent = `version ${h.version}`))
      .catch(() => {});
    poll();
  }

  start();
})();
