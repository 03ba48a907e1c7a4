// The fleet overview: draws the data of #overview-data (json_script) with
// Chart.js, a table view per chart, links every bar to the runs list, and
// refreshes over the live channel at most every few seconds.
(function () {
  "use strict";

  const STATUS_COLORS = {
    COMPLETED: "#16a34a", FAILED: "#dc2626", RUNNING: "#2563eb", CANCELED: "#9ca3af",
    TERMINATED: "#ea580c", TIMED_OUT: "#9333ea", CONTINUED_AS_NEW: "#0d9488", UNKNOWN: "#cbd5e1",
  };
  const PALETTE = ["#4f46e5", "#0891b2", "#d97706", "#059669", "#db2777", "#7c3aed", "#65a30d", "#0284c7"];
  const FAILED_COLOR = "#dc2626";
  const REFRESH_MS = 3000;
  const charts = {};
  let data = JSON.parse(document.getElementById("overview-data").textContent);

  const fmtInt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
  const fmtUsd = (n) => (n === null || n === undefined ? "–" : "$" + Number(n).toFixed(n >= 100 ? 0 : n >= 1 ? 2 : 4));
  const fmtMs = (n) => (n === null || n === undefined ? "–" : n >= 1000 ? (n / 1000).toFixed(2) + " s" : n.toFixed(0) + " ms");
  const fmtPct = (n) => (n === null || n === undefined ? "–" : (n * 100).toFixed(1) + " %");
  const fmtDuration = (ms) => {
    if (ms < 1000) return ms + " ms";
    const s = ms / 1000;
    if (s < 60) return s.toFixed(1) + " s";
    const m = Math.floor(s / 60);
    return m < 60 ? m + "m " + String(Math.round(s % 60)).padStart(2, "0") + "s" : Math.floor(m / 60) + "h " + String(m % 60).padStart(2, "0") + "m";
  };

  function card(name) {
    return document.querySelector('[data-chart="' + name + '"]');
  }

  function go(url) {
    if (url) window.location.assign(url);
  }

  function baseOptions(extra) {
    return Object.assign({
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      interaction: { mode: "index", intersect: false },
      plugins: { legend: { position: "bottom", labels: { boxWidth: 12, font: { size: 12 } } } },
    }, extra || {});
  }

  function draw(name, config) {
    const box = card(name);
    const canvas = box.querySelector("canvas");
    if (charts[name]) {
      charts[name].data = config.data;
      charts[name].options = config.options;
      charts[name].update("none");
    } else {
      charts[name] = new Chart(canvas, config);
    }
    box.dataset.rendered = String(config.data.datasets.reduce((n, d) => n + d.data.filter((v) => v).length, 0));
  }

  function table(name, head, rows) {
    const box = card(name).querySelector(".chart-table");
    const t = document.createElement("table");
    t.className = "table table-compact";
    const tr = t.createTHead().insertRow();
    head.forEach((h) => { const th = document.createElement("th"); th.textContent = h; tr.appendChild(th); });
    const body = t.createTBody();
    rows.forEach((row) => {
      const r = body.insertRow();
      row.cells.forEach((value, i) => {
        const td = r.insertCell();
        if (i === 0 && row.link) {
          const a = document.createElement("a");
          a.href = row.link;
          a.textContent = value;
          td.appendChild(a);
        } else {
          td.textContent = value;
        }
        if (i > 0) td.className = "num";
      });
    });
    box.replaceChildren(t);
  }

  function clickTo(links) {
    return (event, elements, chart) => {
      const hit = chart.getElementsAtEventForMode(event, "nearest", { intersect: true }, false)[0] || elements[0];
      if (!hit) return;
      go(links(hit.datasetIndex, hit.index, chart));
    };
  }

  function runsChart() {
    const statuses = Object.keys(data.runs_by_status);
    const datasets = statuses.map((s) => ({
      label: s.replace(/_/g, " ").toLowerCase(), data: data.runs_by_status[s],
      backgroundColor: STATUS_COLORS[s] || "#64748b", stack: "runs", status: s,
    }));
    draw("runs", {
      type: "bar",
      data: { labels: data.labels, datasets },
      options: baseOptions({
        scales: { x: { stacked: true, ticks: { maxTicksLimit: 12 } }, y: { stacked: true, beginAtZero: true, title: { display: true, text: "runs started" } } },
        onClick: clickTo((d, i, chart) => data.status_links[chart.data.datasets[d].status][i]),
      }),
    });
    table("runs", ["Start (UTC)", ...statuses.map((s) => s.toLowerCase()), "total"], data.buckets.map((b, i) => ({
      link: data.links[i],
      cells: [b, ...statuses.map((s) => fmtInt(data.runs_by_status[s][i])), fmtInt(statuses.reduce((n, s) => n + data.runs_by_status[s][i], 0))],
    })));
  }

  function latencyChart() {
    const models = Object.keys(data.latency);
    const datasets = [];
    models.forEach((m, k) => {
      const color = PALETTE[k % PALETTE.length];
      datasets.push({ label: m + " p50", data: data.latency[m].p50, borderColor: color, backgroundColor: color, spanGaps: true, model: m, pointRadius: 2 });
      datasets.push({ label: m + " p95", data: data.latency[m].p95, borderColor: color, backgroundColor: color, borderDash: [6, 4], spanGaps: true, model: m, pointRadius: 2 });
    });
    draw("latency", {
      type: "line",
      data: { labels: data.labels, datasets },
      options: baseOptions({
        scales: { x: { ticks: { maxTicksLimit: 8 } }, y: { beginAtZero: true, title: { display: true, text: "ms" } } },
        plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } }, tooltip: { callbacks: { label: (c) => c.dataset.label + ": " + fmtMs(c.parsed.y) } } },
        onClick: clickTo((d, i, chart) => withParam(data.links[i], "model", chart.data.datasets[d].model)),
      }),
    });
    const head = ["Start (UTC)"];
    models.forEach((m) => head.push(m + " p50", m + " p95"));
    table("latency", head, data.buckets.map((b, i) => ({
      link: data.links[i], cells: [b, ...models.flatMap((m) => [fmtMs(data.latency[m].p50[i]), fmtMs(data.latency[m].p95[i])])],
    })));
  }

  function retriesChart() {
    const s = data.series;
    draw("retries", {
      type: "bar",
      data: {
        labels: data.labels,
        datasets: [
          { type: "line", label: "retry rate", data: data.retry_rate.map((r) => (r === null ? null : r * 100)), borderColor: FAILED_COLOR, backgroundColor: FAILED_COLOR, yAxisID: "rate", spanGaps: true, pointRadius: 2 },
          { label: "attempts", data: s.attempts, backgroundColor: "#c7d2fe", yAxisID: "count" },
          { label: "failed attempts", data: s.failed_attempts, backgroundColor: "#fca5a5", yAxisID: "count" },
        ],
      },
      options: baseOptions({
        scales: {
          x: { ticks: { maxTicksLimit: 8 } },
          count: { position: "left", beginAtZero: true, title: { display: true, text: "attempts" } },
          rate: { position: "right", beginAtZero: true, suggestedMax: 10, grid: { drawOnChartArea: false }, title: { display: true, text: "% failed" } },
        },
        plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } }, tooltip: { callbacks: { label: (c) => c.dataset.yAxisID === "rate" ? "retry rate: " + c.parsed.y.toFixed(1) + " %" : c.dataset.label + ": " + fmtInt(c.parsed.y) } } },
        onClick: clickTo((d, i) => data.links[i]),
      }),
    });
    table("retries", ["Start (UTC)", "attempts", "failed", "retry rate"], data.buckets.map((b, i) => ({
      link: data.links[i], cells: [b, fmtInt(s.attempts[i]), fmtInt(s.failed_attempts[i]), fmtPct(data.retry_rate[i])],
    })));
  }

  function tokensChart() {
    const s = data.series;
    draw("tokens", {
      type: "bar",
      data: {
        labels: data.labels,
        datasets: [
          { type: "line", label: "cost (USD)", data: data.cost, borderColor: "#0f766e", backgroundColor: "#0f766e", yAxisID: "usd", pointRadius: 2 },
          { label: "tokens in", data: s.tokens_in, backgroundColor: "#818cf8", stack: "t", yAxisID: "tokens" },
          { label: "tokens out", data: s.tokens_out, backgroundColor: "#f59e0b", stack: "t", yAxisID: "tokens" },
        ],
      },
      options: baseOptions({
        scales: {
          x: { stacked: true, ticks: { maxTicksLimit: 8 } },
          tokens: { position: "left", stacked: true, beginAtZero: true, title: { display: true, text: "tokens" } },
          usd: { position: "right", beginAtZero: true, grid: { drawOnChartArea: false }, title: { display: true, text: "USD" } },
        },
        plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } }, tooltip: { callbacks: { label: (c) => c.dataset.yAxisID === "usd" ? "cost: " + fmtUsd(c.parsed.y) : c.dataset.label + ": " + fmtInt(c.parsed.y) } } },
        onClick: clickTo((d, i) => data.links[i]),
      }),
    });
    table("tokens", ["Start (UTC)", "tokens in", "tokens out", "cost", "failed-attempt tokens", "failed-attempt cost"], data.buckets.map((b, i) => ({
      link: data.links[i],
      cells: [b, fmtInt(s.tokens_in[i]), fmtInt(s.tokens_out[i]), fmtUsd(data.cost[i]), fmtInt(s.failed_tokens_in[i] + s.failed_tokens_out[i]), fmtUsd(data.failed_cost[i])],
    })));
  }

  function failuresChart() {
    const rows = data.failures;
    draw("failures", {
      type: "bar",
      data: { labels: rows.map((f) => truncate(f.message, 48)), datasets: [{ label: "failed attempts", data: rows.map((f) => f.count), backgroundColor: "#f87171" }] },
      options: baseOptions({
        indexAxis: "y",
        interaction: { mode: "nearest", axis: "y", intersect: false },
        plugins: { legend: { display: false }, tooltip: { callbacks: { title: (items) => rows[items[0].dataIndex].message, label: (c) => fmtInt(c.parsed.x) + " failed attempts" } } },
        scales: { x: { beginAtZero: true, ticks: { precision: 0 } } },
        onClick: clickTo((d, i) => rows[i].link),
      }),
    });
    table("failures", ["Message", "failed attempts"], rows.map((f) => ({ link: f.link, cells: [f.message, fmtInt(f.count)] })));
  }

  function breakdownChart(name, rows) {
    const shown = rows.slice(0, 12);
    draw(name, {
      type: "bar",
      data: {
        labels: shown.map((r) => truncate(r.name || "(none)", 32)),
        datasets: [
          { label: "cost of succeeded attempts", data: shown.map((r) => Math.max(r.cost - r.failed_cost, 0)), backgroundColor: "#6366f1", stack: "c" },
          { label: "cost of failed attempts", data: shown.map((r) => r.failed_cost), backgroundColor: FAILED_COLOR, stack: "c" },
        ],
      },
      options: baseOptions({
        indexAxis: "y",
        interaction: { mode: "index", axis: "y", intersect: false },
        scales: { x: { stacked: true, beginAtZero: true, title: { display: true, text: "USD" } }, y: { stacked: true } },
        plugins: {
          legend: { position: "bottom", labels: { boxWidth: 12 } },
          tooltip: { callbacks: {
            title: (items) => shown[items[0].dataIndex].name || "(none)",
            label: (c) => c.dataset.label + ": " + fmtUsd(c.parsed.x),
            afterBody: (items) => {
              const r = shown[items[0].dataIndex];
              return ["tokens in / out: " + fmtInt(r.tokens_in) + " / " + fmtInt(r.tokens_out),
                "failed attempts: " + fmtInt(r.failed_attempts) + " of " + fmtInt(r.attempts) + ", " + fmtInt(r.failed_tokens_in + r.failed_tokens_out) + " tokens",
                r.unpriced ? "some tokens have no price" : ""];
            },
          } },
        },
        onClick: clickTo((d, i) => shown[i].link),
      }),
    });
    const extra = name === "by_model" ? ["p50", "p95"] : [];
    table(name, ["Name", "calls", "attempts", "failed", "tokens in", "tokens out", "failed tokens", "cost", "failed cost", ...extra], rows.map((r) => ({
      link: r.link,
      cells: [r.name || "(none)", fmtInt(r.calls), fmtInt(r.attempts), fmtInt(r.failed_attempts), fmtInt(r.tokens_in), fmtInt(r.tokens_out),
        fmtInt(r.failed_tokens_in + r.failed_tokens_out), r.unpriced ? fmtUsd(r.cost) + " + unpriced" : fmtUsd(r.cost), fmtUsd(r.failed_cost),
        ...(name === "by_model" ? [fmtMs(r.p50_ms), fmtMs(r.p95_ms)] : [])],
    })));
  }

  function runList(name, rows, value) {
    const box = document.querySelector('[data-list="' + name + '"] .run-list');
    if (!rows.length) {
      const p = document.createElement("p");
      p.className = "muted empty-small";
      p.textContent = "No runs in this range.";
      box.replaceChildren(p);
      return;
    }
    const t = document.createElement("table");
    t.className = "table table-compact";
    const head = t.createTHead().insertRow();
    ["Run", "Type", "Status", "Started (UTC)", name === "slowest" ? "Duration" : "Cost"].forEach((h) => {
      const th = document.createElement("th"); th.textContent = h; head.appendChild(th);
    });
    const body = t.createTBody();
    rows.forEach((r) => {
      const tr = body.insertRow();
      const a = document.createElement("a");
      a.href = r.url || "#";
      a.textContent = r.workflow_id;
      a.title = r.workflow_id + " / " + r.run_id;
      const cell = tr.insertCell();
      cell.className = "ellipsis";
      cell.appendChild(a);
      tr.insertCell().textContent = r.workflow_type;
      const status = tr.insertCell();
      const badge = document.createElement("span");
      badge.className = "status status-" + r.status.toLowerCase();
      badge.textContent = r.status.replace(/_/g, " ").toLowerCase();
      status.appendChild(badge);
      tr.insertCell().textContent = r.start.replace("T", " ");
      const v = tr.insertCell();
      v.className = "num";
      v.textContent = value(r);
    });
    box.replaceChildren(t);
  }

  function kpis() {
    const t = data.totals;
    const set = (key, text) => { document.querySelector('[data-kpi="' + key + '"] .kpi-value').textContent = text; };
    set("runs", fmtInt(t.runs));
    set("attempts", fmtInt(t.calls) + " · " + fmtInt(t.attempts));
    set("retry", fmtInt(t.failed_attempts) + " (" + fmtPct(t.retry_rate) + ")");
    set("latency", fmtMs(t.p50_ms) + " / " + fmtMs(t.p95_ms));
    set("tokens", fmtInt(t.tokens_in) + " / " + fmtInt(t.tokens_out));
    set("cost", fmtUsd(t.cost) + (t.unpriced_models.length ? " + unpriced" : ""));
    const burned = t.failed_tokens_in + t.failed_tokens_out;
    const all = t.tokens_in + t.tokens_out;
    set("failed", fmtInt(burned) + " tokens · " + fmtUsd(t.failed_cost) + (all ? " (" + fmtPct(burned / all) + " of tokens)" : ""));
    document.querySelector('[data-kpi="runs"]').href = data.runs_link;
  }

  function truncate(text, n) {
    return text.length > n ? text.slice(0, n - 1) + "…" : text;
  }

  function withParam(url, key, value) {
    if (!url) return url;
    const u = new URL(url, window.location.origin);
    u.searchParams.set(key, value);
    return u.pathname + "?" + u.searchParams.toString();
  }

  function render() {
    Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
    Chart.defaults.color = "#374151";
    kpis();
    runsChart();
    latencyChart();
    retriesChart();
    tokensChart();
    failuresChart();
    breakdownChart("by_model", data.by_model);
    breakdownChart("by_agent", data.by_agent);
    breakdownChart("by_type", data.by_type);
    runList("slowest", data.slowest, (r) => fmtDuration(r.duration_ms));
    runList("expensive", data.expensive, (r) => fmtUsd(r.cost));
    document.getElementById("ov-window").textContent = data.since + " – " + data.until + " UTC";
  }

  document.querySelectorAll("[data-toggle-table]").forEach((button) => {
    button.addEventListener("click", () => {
      const section = button.closest(".chart-card");
      const tableBox = section.querySelector(".chart-table");
      const chartBox = section.querySelector(".chart-box");
      const showTable = tableBox.hidden;
      tableBox.hidden = !showTable;
      chartBox.hidden = showTable;
      button.textContent = showTable ? "Chart" : "Table";
      button.setAttribute("aria-pressed", String(showTable));
    });
  });

  // Live: the runs group tells us when spans arrive; refetch at most every REFRESH_MS.
  const live = document.getElementById("overview-live");
  let pending = false;
  let last = 0;
  function refresh() {
    const wait = last + REFRESH_MS - Date.now();
    if (pending) return;
    pending = true;
    window.setTimeout(() => {
      fetch(live.dataset.dataUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then((r) => (r.ok ? r.json() : null))
        .then((fresh) => {
          if (fresh) { data = fresh; render(); live.dataset.refreshed = String(Date.now()); }
        })
        .catch(() => {})
        .finally(() => { pending = false; last = Date.now(); });
    }, Math.max(wait, 0));
  }
  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + window.location.host + live.dataset.liveUrl);
    socket.addEventListener("message", refresh);
    socket.addEventListener("close", () => window.setTimeout(connect, 5000));
  }

  render();
  connect();
})();
