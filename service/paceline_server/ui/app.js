/* Paceline dashboard: reads the /v1 API (GET only) and draws it with uPlot.
 *
 * Views: "./" lists the curricula, "c/<name>" shows one. The page polls while open and
 * redraws when a report arrives. With auth on, the read token comes from the URL
 * fragment (#token=...) or the form shown after a 401, and stays in sessionStorage. */
"use strict";

(function () {
  // ?refresh=<ms>: 0 stops polling; anything not a number is the default (NaN made
  // setTimeout fire at once: hundreds of requests a second), and at least 500 ms.
  const REFRESH_MS = (() => {
    const given = new URLSearchParams(location.search).get("refresh");
    const asked = Number(given);  // "" (?refresh=) would be 0: the default instead
    if (given === null || given.trim() === "" || !Number.isFinite(asked)) return 2000;
    return asked <= 0 ? 0 : Math.max(asked, 500);
  })();
  const PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777",
                   "#0891b2", "#65a30d", "#4b5563", "#ea580c", "#0d9488", "#9333ea"];
  const FLAGS = ["hopeless", "stalled", "saturated"];
  const app = document.getElementById("app");
  const crumbs = document.getElementById("crumbs");
  const statusLine = document.getElementById("status");
  const base = new URL(document.baseURI);            // .../ui/
  const apiRoot = new URL("../", base);              // the service root
  // What the tests (and the curious) can read: the charts and what they hold.
  const state = { charts: {}, seq: null, renders: 0, errors: [] };
  window.__paceline = state;
  let timer = null;
  // Charts need uPlot, loaded after this script so the data requests start first.
  const parsed = new Promise((resolve) => {
    if (document.readyState !== "loading") resolve();
    else document.addEventListener("DOMContentLoaded", resolve);
  });

  // ------------------------------------------------------------------ helpers
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const fmt = (v, digits = 3) => (v === null || v === undefined || Number.isNaN(v))
    ? "–" : Number(v).toFixed(digits);
  // An explanation's term: integers as they are (21124, not 2.11e+4), others to three
  // significant digits without an exponent for everyday magnitudes.
  function term(v) {
    if (v === null || v === undefined) return "–";
    const x = Number(v);
    if (Number.isInteger(x)) return String(x);
    const size = Math.abs(x);
    if (size !== 0 && (size < 1e-3 || size >= 1e6)) return x.toPrecision(3);
    return String(Number(x.toPrecision(3)));
  }
  const pct = (v) => (v === null || v === undefined) ? "–" : (100 * v).toFixed(1) + " %";
  function ago(iso) {
    if (!iso) return "never";
    const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 129600) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }
  function badges(flags) {
    return flags.length ? flags.map((f) => el("span", { class: "badge " + f, text: f }))
      : [el("span", { class: "badge healthy", text: "healthy" })];
  }

  // ------------------------------------------------------------------ API (GET only)
  class ApiError extends Error {
    constructor(status, code, message) {
      super(message); this.status = status; this.code = code;
    }
  }
  function token() {
    const match = location.hash.match(/token=([^&]+)/);
    if (match) {
      let given = match[1];
      try { given = decodeURIComponent(given); } catch (_) { /* a raw "%": as written */ }
      sessionStorage.setItem("paceline-token", given);
      history.replaceState(null, "", location.pathname + location.search);
    }
    return sessionStorage.getItem("paceline-token");
  }
  async function get(path) {
    const headers = { Accept: "application/json" };
    const t = token();
    if (t) headers.Authorization = "Bearer " + t;
    let response;
    try {
      response = await fetch(new URL(path, apiRoot), { method: "GET", headers, cache: "no-store" });
    } catch (err) {
      throw new ApiError(0, "UNREACHABLE", "the service did not answer (" + err.message + ")");
    }
    if (!response.ok) {
      let code = "HTTP_" + response.status, message = response.statusText;
      try {
        const body = await response.json();
        if (body && body.error) { code = body.error.code; message = body.error.message; }
      } catch (_) { /* not JSON: keep the status */ }
      throw new ApiError(response.status, code, message);
    }
    return response.json();
  }
  const curriculumPath = (name, rest) =>
    "v1/curricula/" + encodeURIComponent(name) + (rest ? "/" + rest : "");
  // The runs listing is paged (100 by default): the page shows the first 1000, oldest first.
  const RUNS = "runs?limit=1000";

  function showError(err, where) {
    const box = el("div", { class: "error", role: "alert", "data-error-code": err.code || "ERROR" },
      el("code", { text: err.code || "ERROR" }), ": ", err.message || String(err));
    if (err.status === 401 || err.status === 403) {
      const input = el("input", { type: "password", placeholder: "read token", "aria-label": "token" });
      const form = el("form", { class: "token" }, input,
        el("button", { type: "submit", text: "Use token" }));
      form.addEventListener("submit", (event) => {
        event.preventDefault();  // nothing is sent: the token is kept in this tab only
        sessionStorage.setItem("paceline-token", input.value.trim());
        route();
      });
      box.append(el("div", { text: "This service needs a token with read scope." }), form);
    }
    (where || app).replaceChildren(box);
    box.querySelector("input")?.focus();
    statusLine.textContent = "";
    markReady();
  }
  function markReady() {
    if (!document.body.dataset.ready) {
      // milliseconds from the start of navigation to the first complete render
      document.body.dataset.readyMs = String(Math.round(performance.now()));
    }
    document.body.dataset.ready = "1";
  }

  // ------------------------------------------------------------------ charts
  function chart(id, host, title, x, series, opts) {
    host.setAttribute("role", "img");  // a label screen readers announce
    host.setAttribute("aria-label", title);
    opts = opts || {};
    const width = Math.max(320, host.clientWidth - 8);
    const config = {
      width, height: opts.height || 240,
      scales: { x: { time: false }, y: opts.y || {} },
      axes: [{ label: "report (seq)" }, { label: opts.yLabel || "" }].concat(opts.axes || []),
      legend: { live: true },
      series: [{ label: "seq" }].concat(series.map((s, i) => Object.assign({
        stroke: PALETTE[i % PALETTE.length], width: 1.6, spanGaps: false,
        points: { show: x.length < 60 },
      }, s.config))),
    };
    if (opts.scales) Object.assign(config.scales, opts.scales);
    const data = [x].concat(series.map((s) => s.values));
    const old = state.charts[id];
    // the same series (by label) keep their chart; setData keeps the old series config
    const labels = config.series.map((s) => s.label).join("\n");
    if (old && old.series.map((s) => s.label).join("\n") === labels) {
      old.setData(data);
    } else {
      if (old) old.destroy();
      host.replaceChildren();
      state.charts[id] = new uPlot(config, data, host);
    }
    host.dataset.series = series.map((s) => s.config.label).join("|");
    host.dataset.points = String(x.length);
    return state.charts[id];
  }
  let shares = {};  // per_distribution of the history drawn last (the legend's shares)
  const nulls = (values) => values.map((v) => (v === null ? null : v));

  function drawHistory(history) {
    const x = history.seq;
    const names = history.distributions;
    const per = history.per_distribution;
    // Probabilities stacked: series i is drawn as the sum of the first i + 1 shares
    // (filled, top first), while its legend shows its own share.
    const stacked = [];
    const running = x.map(() => 0);
    names.forEach((name) => {
      per[name].probability.forEach((p, j) => { running[j] += p; });
      stacked.push(running.slice());
    });
    // The legend reads the shares drawn now: a chart kept across refreshes (setData)
    // keeps the formatter it was made with, so it must not hold this history's columns.
    shares = per;
    const probSeries = names.map((name, i) => ({
      values: stacked[i],
      config: { label: name, stroke: PALETTE[i % PALETTE.length],
                fill: PALETTE[i % PALETTE.length] + "55",
                value: (u, v, si, idx) => idx === null || idx === undefined ? "–"
                  : fmt(shares[name]?.probability[idx]) },
    })).reverse();
    probSeries.forEach((s) => { s.config.points = { show: false }; });
    chart("probability", document.getElementById("chart-probability"),
      "Sampling probability (stacked)", x, probSeries,
      { y: { range: [0, 1] }, yLabel: "P" });
    chart("success", document.getElementById("chart-success"), "Success per distribution", x,
      names.map((name) => ({ values: nulls(per[name].success), config: { label: name } })),
      { y: { range: [0, 1] }, yLabel: "success (window mean)" });
    chart("zero_variance", document.getElementById("chart-zero-variance"),
      "Zero-variance share", x,
      names.map((name) => ({ values: nulls(per[name].zero_variance_fraction),
                             config: { label: name } })),
      { y: { range: [0, 1] }, yLabel: "all-equal groups" });
    chart("advantage", document.getElementById("chart-advantage"), "Mean |advantage|", x,
      names.map((name) => ({ values: nulls(per[name].mean_abs_advantage),
                             config: { label: name } })), { yLabel: "|A|" });
    const weights = history.objectives.map((o) => ({
      values: history.reward_weights[o], config: { label: "w " + o } }));
    weights.push({ values: history.reward_scale,
                   config: { label: "reward scale", scale: "aux", dash: [6, 4] } });
    if (history.hypervolume.some((v) => v !== null)) {
      weights.push({ values: nulls(history.hypervolume),
                     config: { label: "hypervolume", scale: "aux", dash: [2, 3] } });
    }
    chart("weights", document.getElementById("chart-weights"),
      "Reward weights, scale and hypervolume", x, weights,
      { y: { range: [0, 1] }, yLabel: "weight",
        scales: { aux: { auto: true } },
        axes: [{ scale: "aux", side: 1, label: "scale · hypervolume", grid: { show: false } }] });
    const flagRows = names.map((name) => {
      const last = FLAGS.filter((f) => per[name][f][per[name][f].length - 1]);
      const raised = FLAGS.filter((f) => per[name][f].some(Boolean));
      return el("tr", {}, el("td", { text: name }), el("td", {}, badges(last)),
        el("td", { class: "muted", text: raised.length ? raised.join(", ") : "none" }));
    });
    document.getElementById("flag-history").replaceChildren(
      el("table", {}, el("thead", {}, el("tr", {}, el("th", { text: "distribution" }),
        el("th", { text: "flags now" }), el("th", { text: "raised in this range" }))),
      el("tbody", {}, flagRows)));
  }

  // ------------------------------------------------------------------ list view
  async function showList() {
    crumbs.replaceChildren(el("span", { text: "Curricula" }));
    const [data] = await Promise.all([get("ui/api/overview"), parsed]);
    const rows = data.curricula.map((c) => {
      const flagged = FLAGS.filter((f) => c.flagged[f].length);
      return el("tr", { "data-curriculum": c.name },
        el("td", {}, el("a", { href: "c/" + encodeURIComponent(c.name), text: c.name })),
        el("td", { text: c.sampler }), el("td", { text: c.weighting }),
        el("td", { class: "num", text: c.reports }),
        el("td", { class: "num", text: c.distributions }),
        el("td", {}, c.runs + " run" + (c.runs === 1 ? "" : "s") + " ",
          c.stale_runs ? el("span", { class: "badge stale", text: c.stale_runs + " stale" }) : null),
        el("td", { class: "muted", text: ago(c.last_heartbeat) }),
        el("td", {}, flagged.length ? flagged.map((f) => el("span", {
          class: "badge " + f, title: c.flagged[f].join(", "),
          text: f + ": " + c.flagged[f].join(", ") })) : badges([])));
    });
    const body = rows.length ? el("table", { id: "curricula" },
      el("thead", {}, el("tr", {}, ["curriculum", "sampler", "weighting", "reports",
        "distributions", "runs", "last heartbeat", "health"].map((h, i) =>
        el("th", { class: i === 3 || i === 4 ? "num" : null, text: h })))),
      el("tbody", {}, rows))
      : el("p", { class: "muted", text: "No curricula yet: create one with POST /v1/curricula." });
    app.replaceChildren(el("h1", { text: "Curricula" }), el("div", { class: "card" }, body));
    const count = data.truncated ? "the first " + data.curricula.length + " curricula by name"
      + " (more exist: GET /v1/curricula lists them all)" : data.curricula.length + " curricula";
    statusLine.textContent = count + " · updated " + new Date().toLocaleTimeString();
    markReady();
    state.renders += 1;
    schedule(showList);
  }

  // ------------------------------------------------------------------ curriculum view
  function layoutCurriculum(info) {
    crumbs.replaceChildren(el("a", { href: "./", text: "Curricula" }), " / ",
      el("span", { text: info.name }));
    document.title = info.name + " · Paceline";
    const card = (id, title) => el("div", { class: "card" }, el("h2", { text: title }),
      el("div", { id, class: "chart" }));
    app.replaceChildren(
      el("h1", { text: info.name }),
      el("div", { class: "meta", id: "meta" }),
      el("div", { class: "card" }, el("h2", { text: "Why each distribution gets its share" }),
        el("ul", { class: "explain", id: "explanations" })),
      el("div", { class: "grid" },
        card("chart-probability", "Probabilities over time"),
        card("chart-success", "Success"),
        card("chart-weights", "Reward weights and hypervolume"),
        card("chart-zero-variance", "Zero-variance share"),
        card("chart-advantage", "Mean |advantage|"),
        el("div", { class: "card" }, el("h2", { text: "Health flags" }),
          el("div", { id: "flag-history" }))),
      el("div", { class: "card", style: "margin-top:1rem" }, el("h2", { text: "Distributions now" }),
        el("div", { id: "distributions" })),
      el("div", { class: "card" }, el("h2", { text: "Runs" }), el("div", { id: "runs" })));
  }

  function drawState(info, view) {
    const spec = info.spec;
    document.getElementById("meta").replaceChildren(
      ...[["sampler", spec.sampler.kind], ["weighting", spec.weighting.kind],
          ["reports", view.seq], ["batch size", spec.batch_size],
          ["objectives", view.objectives.join(", ")],
          ["reward weights", Object.entries(view.reward_weights)
            .map(([o, w]) => o + " " + fmt(w)).join(" · ")],
          ["reward scale", fmt(view.reward_scale)]]
        .map(([k, v]) => el("div", {}, el("span", { text: k }), el("b", { text: String(v) }))));
    document.getElementById("explanations").replaceChildren(...view.explanations.map((e) =>
      el("li", { "data-distribution": e.name },
        el("div", {}, e.sentence, " ", e.flags.length ? badges(e.flags) : null),
        el("div", { class: "terms" }, Object.entries(e.terms).flatMap(([k, v]) =>
          [el("span", {}, k + " = " + term(v)), " "])))));
    const rows = view.distributions.map((d) => el("tr", {},
      el("td", { text: d.name }), el("td", { class: "num", text: d.size }),
      el("td", { class: "num", text: pct(d.probability) }),
      el("td", { class: "num", text: fmt(d.success) }),
      el("td", { class: "num", text: fmt(d.mean_abs_advantage) }),
      el("td", { class: "num", text: fmt(d.zero_variance_fraction) }),
      el("td", { class: "num", text: d.reports }), el("td", { class: "num", text: d.rollouts }),
      el("td", {}, badges(FLAGS.filter((f) => d.health[f])))));
    document.getElementById("distributions").replaceChildren(el("table", {},
      el("thead", {}, el("tr", {}, ["distribution", "size", "P", "success", "|A|", "zero-var",
        "reports", "rollouts", "health"].map((h, i) =>
        el("th", { class: i > 0 && i < 8 ? "num" : null, text: h })))),
      el("tbody", {}, rows)));
  }

  function drawRuns(runs) {
    const host = document.getElementById("runs");
    if (!runs.length) {
      host.replaceChildren(el("p", { class: "muted", text: "No runs attached." }));
      return;
    }
    host.replaceChildren(el("table", { id: "runs-table" },
      el("thead", {}, el("tr", {}, ["run", "attached", "last heartbeat", "status", "metadata"]
        .map((h) => el("th", { text: h })))),
      el("tbody", {}, runs.map((r) => el("tr", { "data-run": r.run_id },
        el("td", { text: r.run_id }), el("td", { class: "muted", text: ago(r.created_at) }),
        el("td", { text: ago(r.last_heartbeat), title: r.last_heartbeat }),
        el("td", {}, el("span", { class: "badge " + (r.stale ? "stale" : "live"),
                                  text: r.stale ? "stale" : "live" })),
        el("td", { class: "muted", text: JSON.stringify(r.metadata) }))))));
  }

  async function showCurriculum(name) {
    // Everything the first render needs, in parallel (one round trip of latency).
    const [info, view, runs, history] = await Promise.all([
      get(curriculumPath(name)), get(curriculumPath(name, "state")),
      get(curriculumPath(name, RUNS)), get(curriculumPath(name, "history")), parsed]);
    // when the data and uPlot were all there: readyMs minus this is the drawing
    if (!document.body.dataset.dataMs) {
      document.body.dataset.dataMs = String(Math.round(performance.now()));
    }
    Object.values(state.charts).forEach((u) => u.destroy());  // uPlot keeps them all
    layoutCurriculum(info);
    state.charts = {};
    window.__paceline.charts = state.charts;
    const draw = (view, runs, history) => {
      if (history) {
        drawState(info, view);
        drawHistory(history);
        state.seq = view.seq;
        state.complete = history.complete;
        document.body.dataset.seq = String(view.seq);
        document.body.dataset.replayed = String(history.replayed_seq);
        state.renders += 1;
      }
      drawRuns(runs.runs);
      statusLine.textContent = (state.complete ? "" : "replaying the log: " +
        document.body.dataset.replayed + " / " + view.seq + " reports · ") +
        "seq " + view.seq + " · updated " + new Date().toLocaleTimeString();
      markReady();
    };
    draw(view, runs, history);
    const refresh = async () => {
      const [now, view, runs] = await Promise.all([get(curriculumPath(name)),
        get(curriculumPath(name, "state")), get(curriculumPath(name, RUNS))]);
      // deleted and created again since the page was drawn: another spec, its own page
      if (now.created_at !== info.created_at) return route();
      // the history is fetched again only when a report arrived
      const changed = view.seq !== state.seq || !state.complete
        ? await get(curriculumPath(name, "history")) : null;
      draw(view, runs, changed);
      schedule(refresh);
    };
    schedule(refresh);
  }

  // ------------------------------------------------------------------ routing, polling
  function schedule(again) {
    clearTimeout(timer);
    if (REFRESH_MS <= 0) return;
    timer = setTimeout(async () => {
      try { await again(); } catch (err) { report(err); return; }
    }, REFRESH_MS);
  }
  function report(err) {
    state.errors.push(String(err && err.message || err));
    // Keep what is drawn; say that the last refresh failed and try again later.
    if (document.body.dataset.ready && app.querySelector(".chart, table")) {
      statusLine.textContent = "refresh failed: " + (err.code ? err.code + ": " : "") + err.message;
      if (err.status !== 401 && err.status !== 403 && err.status !== 404) {
        retry();
        return;
      }
    }
    showError(err);
    // A service down or overloaded (no answer, 5xx, 429) is asked again: the page
    // comes back by itself when it is, whether or not anything was drawn before.
    const status = err instanceof ApiError ? err.status : -1;
    if (status === 0 || status === 429 || status >= 500) retry();
  }
  function retry() {
    clearTimeout(timer);
    if (REFRESH_MS > 0) timer = setTimeout(route, REFRESH_MS * 2);
  }
  async function route() {
    clearTimeout(timer);
    const rest = location.pathname.slice(base.pathname.length);
    try {
      if (rest.startsWith("c/")) await showCurriculum(decodeURIComponent(rest.slice(2)));
      else if (rest === "" || rest === "index.html") await showList();
      else throw new ApiError(404, "NOT_FOUND", "no dashboard page " + rest);
    } catch (err) {
      report(err);
    }
  }
  window.addEventListener("error", (event) => showError(new ApiError(0, "SCRIPT_ERROR", event.message)));
  window.addEventListener("unhandledrejection", (event) => report(event.reason));
  route();
})();
